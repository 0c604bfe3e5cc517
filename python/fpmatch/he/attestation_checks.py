"""What an attested key holder checks before it computes a score, and the nonces it remembers.

In order, each failure a typed error (:class:`~fpmatch.errors.AttestationError`
unless the bytes are malformed): the request parses; the probe carries a
signature of a registered edge, for the profile it names and the kind of
request asked (verify or identify); it was issued within the freshness window
(and not in the future beyond a small clock skew); it has the dimension and
value range of a unit probe; its nonce was never seen (it is then spent, so
one signed probe buys one request); each template is signed by a registered
edge for the probe's profile and, when the probe names a subject, for that
subject. Only then is anything computed, and nothing crafted is ever decrypted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..attestation import NO_SUBJECT, EdgeKeys, ProbeAttestation, SignedTemplate
from ..edge import ProbeMessage
from ..errors import AttestationError, MessageFormatError
from .attested import AttestedRequest
from .params import HEParams

#: Seconds a signed probe stays usable after it was issued.
DEFAULT_FRESHNESS = 120.0
#: Seconds a probe's issue time may lie ahead of the key holder's clock.
MAX_CLOCK_SKEW = 5.0


class NonceRegister(Protocol):
    def remember(self, nonce: bytes, expires: float, now: float) -> bool:
        """Record ``nonce`` until ``expires``; False if it is already recorded (a replay)."""


class ShortlistBudget(Protocol):
    def admit(self, labels: list[str]) -> list[bool]:
        """Count one scoring of each subject in an identification's shortlist; False where a
        subject is over its daily budget (its template is then not scored)."""


class AdmitAll:
    """No per-subject budget (an in-process key holder; the service counts in its ledger)."""

    def admit(self, labels: list[str]) -> list[bool]:
        return [True] * len(labels)


class MemoryNonces:
    """Nonces in memory (an in-process key holder; the service keeps them in its ledger instead)."""

    def __init__(self) -> None:
        self._seen: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def remember(self, nonce: bytes, expires: float, now: float) -> bool:
        with self._lock:
            if len(self._seen) > 4096:
                self._seen = {n: t for n, t in self._seen.items() if t >= now}
            if self._seen.get(nonce, -1.0) >= now:
                return False
            self._seen[nonce] = expires
            return True


@dataclass(frozen=True)
class CheckedRequest:
    weights: np.ndarray  # (d,) int64: the probe at its scale
    probe_scale_bits: int
    templates: list[SignedTemplate]


def check_attested(
    data: bytes, keys: EdgeKeys, *, kind: str, threshold: float, now: float, freshness: float,
    nonces: NonceRegister, params: HEParams, n: int, max_templates: int,
) -> CheckedRequest:  # fmt: skip
    request = AttestedRequest.from_bytes(data, max_templates=max_templates)
    probe = ProbeMessage.from_bytes(request.probe)
    if probe.attestation is None:
        raise AttestationError("the probe is not signed: an attested key holder scores only probes a registered edge signed")
    attestation = ProbeAttestation.from_bytes(probe.attestation)
    keys.check(attestation.key_id, probe.profile_id, attestation.statement(probe.profile_id, probe.unsigned()),
               attestation.signature, "the probe")  # fmt: skip
    floor = keys.min_threshold(attestation.key_id)
    if floor is not None and threshold < floor:
        raise AttestationError(
            f"threshold {threshold} is below the least this edge's probes are decided at ({floor}, its calibrated threshold)"
        )
    if attestation.kind != kind:
        raise AttestationError(f"the probe was signed for a {attestation.kind} request, not a {kind} request")
    age = now - attestation.issued
    if not -MAX_CLOCK_SKEW <= age <= freshness:
        raise AttestationError(f"the probe was issued {age:.0f} s ago; this key holder takes probes up to {freshness:.0f} s old")
    weights = probe.values
    if weights is None or not 2 <= len(weights) <= n:
        raise MessageFormatError("the probe carries no encrypted-scheme values of a usable dimension")
    probe_bits = params.probe_scale_bits_for(len(weights))
    if np.abs(weights).max() > (1 << probe_bits) + 1:
        raise MessageFormatError("the probe's values exceed the unit-norm range")
    if kind == "verify" and len(request.templates) != 1:
        raise MessageFormatError(f"a verification pairs the probe with one template, got {len(request.templates)}")
    if not nonces.remember(attestation.nonce, attestation.issued + freshness, now):
        raise AttestationError("this probe was used before (its nonce is spent): a replay")
    templates = [SignedTemplate.from_bytes(t) for t in request.templates]
    for template in templates:
        if template.profile_id != probe.profile_id:
            raise AttestationError(f"a template of profile {template.profile_id} cannot be scored with a probe of {probe.profile_id}")
        template.verify(keys)
        if attestation.subject_tag != NO_SUBJECT and template.subject_tag != attestation.subject_tag:
            raise AttestationError("the probe was signed for another subject than this template's")
    return CheckedRequest(weights, probe_bits, templates)


__all__ = ["CheckedRequest", "DEFAULT_FRESHNESS", "MAX_CLOCK_SKEW", "MemoryNonces", "NonceRegister", "check_attested"]
