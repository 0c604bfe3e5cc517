"""Matching through a key holder in attested mode: signed probes paired with signed templates.

When the service's key holder runs in attested mode (registered capture-edge
keys), it decides only over scores it computes itself. The service then sends
it the signed probe as the edge made it and the signed template ciphertexts
the edges made at enrolment (kept in the store's ``attested`` table): one for
a 1:1 verification (``he`` and ``hybrid``), the code shortlist for a ``hybrid``
identification (at most :data:`MAX_ATTESTED_CANDIDATES`). A pure ``he``
identification would need every template of the gallery in one request, so it
is refused. The service also checks what it can itself: that the probe is
signed, for the request's kind and purpose.
"""

from __future__ import annotations

from typing import Callable

from ..attestation import ProbeAttestation, SignedTemplate, subject_tag
from ..edge import EnrolmentRecord, ProbeMessage
from ..errors import AttestationError, AttestedModeError, MessageFormatError
from .state import ServiceState

#: The most shortlisted candidates one attested identification sends (the key holder's default cap).
MAX_ATTESTED_CANDIDATES = 64


class AttestedOps(ServiceState):
    def _attested(self) -> bool:
        """Whether the key holder runs in attested mode (a remote one is asked once)."""
        from ..he.errors import KeyHolderUnavailable

        try:
            # ``is True``: a decider of the plain ScoreDecider protocol may answer any attribute
            return getattr(self._gallery.decider, "attested_mode", False) is True
        except KeyHolderUnavailable:
            return False  # nothing can be decided now either way: the decision request raises it again

    def _check_signed_records(self, names: list[str], records: list[EnrolmentRecord]) -> None:
        """Every signed template parses and was signed for this profile and its subject; in attested mode every
        record carries one (an unsigned record could never be scored)."""
        attested = self._attested()
        for name, record in zip(names, records):
            if record.attestation is None:
                if attested:
                    raise AttestationError(
                        "the key holder runs in attested mode and this enrolment record carries no signed template: "
                        "enrol from a capture edge with a signing key (CaptureEdge(..., signing_key=...))"
                    )
                continue
            if not self.profile.encrypted:
                raise MessageFormatError(f"the {self.scheme} scheme takes no signed template in an EnrolmentRecord")
            signed = SignedTemplate.from_bytes(record.attestation)
            if signed.profile_id != self.profile.profile_id:
                raise AttestationError("this record's signed template was made for another profile")
            if signed.subject_tag != subject_tag(self.profile.profile_id, name):
                raise AttestationError(f"this record's signed template was signed for another subject than {name!r}")

    def _signed_probe(self, probe: ProbeMessage, kind: str, purpose: str) -> bytes:
        """The probe's bytes once it is signed for ``kind`` and ``purpose`` (the key holder checks the rest)."""
        if probe.attestation is None:
            raise AttestationError("the key holder runs in attested mode: this probe is not signed by a capture edge")
        attestation = ProbeAttestation.from_bytes(probe.attestation)
        if attestation.kind != kind or attestation.purpose != purpose:
            raise AttestationError(
                f"this probe was signed for {attestation.kind} for purpose {attestation.purpose!r}, "
                f"not {kind} for {purpose!r}"
            )
        return probe.to_bytes()

    def _decide_attested(self, subject: str, probe: ProbeMessage, purpose: str, threshold: float, label: str) -> bool:
        from ..he.attested import AttestedRequest

        signed = self._signed_probe(probe, "verify", purpose)
        id_ = self._gallery.id_of(subject)
        template = self._store.attested([id_]).get(id_)
        if template is None:
            raise AttestationError(
                "this subject was enrolled without a signed template, which an attested key holder never scores: "
                "re-enrol them from a signing capture edge"
            )
        request = AttestedRequest(signed, [template]).to_bytes()
        (verified,) = self._gallery.decider.decide_attested(request, threshold, caller=self._gallery.caller, subject=label)
        return bool(verified)

    def _search_attested(
        self, probe: ProbeMessage, purpose: str, k: int, threshold: float, eligible: Callable[[str], bool]
    ) -> list[str]:
        from ..he.attested import AttestedRequest

        if self.scheme != "hybrid":
            raise AttestedModeError(
                f"an attested key holder scores a shortlist of signed templates; the {self.scheme} scheme has no "
                "shortlist (1:N would send the whole gallery): identify with the hybrid scheme"
            )
        gallery = self._gallery
        signed = self._signed_probe(probe, "identify", purpose)
        want = min(max(k, gallery.candidates), MAX_ATTESTED_CANDIDATES)
        ids = gallery.shortlist_ids(probe, want, eligible)
        templates = self._store.attested(ids)
        ids = [id_ for id_ in ids if id_ in templates]  # subjects enrolled unsigned cannot be scored (README)
        if not ids:
            return []
        request = AttestedRequest(signed, [templates[id_] for id_ in ids]).to_bytes()
        positions = gallery.decider.best_attested(request, threshold, min(k, len(ids)), caller=gallery.caller)
        return [gallery.subject_of(ids[p]) for p in positions]


__all__ = ["AttestedOps", "MAX_ATTESTED_CANDIDATES"]
