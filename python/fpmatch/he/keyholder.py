"""The key holder: the only party that holds the CKKS secret key.

It answers three questions about encrypted scores (see
:class:`~fpmatch.he.scores.EncryptedScores`):

* :meth:`KeyHolder.decide` - one accept/reject bit per score (small requests);
* :meth:`KeyHolder.best` - the positions of at most ``k`` scores that pass a
  threshold, best first (large requests: a whole 1:N search);
* :meth:`KeyHolder.coarse_scores` - scores with Gaussian noise flooding, on a
  coarse grid (a few per request);

and does one thing besides, nothing else: :meth:`KeyHolder.reclaim` returns fresh
ciphertexts that let the matching side reuse erased slots (see
:mod:`fpmatch.he.reclaim`); it decrypts nothing for the caller.

It never returns a raw decryption: a CKKS decryption carries the encryption
noise, and enough of them reveal the secret key (Li and Micciancio, 2021);
exact scores also let an attacker rebuild a template by hill climbing.

Residual risk, stated plainly: whoever may call the key holder can submit
ciphertexts it crafted, and every decision is one bit about the decryption
of a chosen ciphertext, so a malicious caller can learn key bits with
repeated requests (roughly N/3 returned positions recover a ternary key).
Every request is therefore counted per caller and rate limited, requests that
return one bit per score are capped, and ``best`` releases at most ``k``
positions. Only the matching service should be allowed to call; an
exhausted budget is an incident, and the cure for a suspected leak is a new
key (re-enrolment). These in-process counters reset with the process; the
key holder service (:mod:`fpmatch.he.server`) keeps its callers' rates and
daily budgets in its own ledger instead (:mod:`fpmatch.he.ledger`), and
THREAT_MODEL.md gives what each attack needs.

Attested mode (``edge_keys``, the capture edges' registered signing keys) removes
that residual risk for a caller without an edge's key: the three questions above
are refused, and :meth:`KeyHolder.decide_attested` and :meth:`KeyHolder.best_attested`
take a signed probe and signed template ciphertexts instead, check them
(:mod:`fpmatch.he.attestation_checks`) and compute the scores themselves
(:mod:`fpmatch.he.attested`), so nothing a caller crafted is ever decrypted.
"""

from __future__ import annotations

import collections
import json
import os
import random
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import tenseal as ts

from .._validate import read_regular_file
from ..attestation import EdgeKeys
from ..errors import AttestedModeError, InvalidInputError, KeyFileError
from ._encoding import check_threshold
from ._isolated import context_from
from ._ring import Ring, ZeroEncryptor, secret_ntt
from .attested import attested_scores, tag_label
from .attestation_checks import (
    DEFAULT_FRESHNESS, AdmitAll, MemoryNonces, NonceRegister, ShortlistBudget, check_attested,
)  # fmt: skip
from .context import frame, pack_public_context, unframe
from .errors import CiphertextIntegrityError, DecryptionRefusedError, RateLimitExceededError
from .params import DEFAULT_PARAMS, HEParams
from .reclaim import parse_request, reclaim_reply
from .scores import EncryptedScores

#: A decrypted score beyond +-(1 + this) cannot come from unit-norm templates.
SCORE_RANGE_TOLERANCE = 0.01
#: Rows with at most this many scores are decrypted coefficient by coefficient;
#: more, and one inverse NTT per row is cheaper.
_FEW_PER_ROW = 8
_KEY_MAGIC = b"FPHESEC1"


@runtime_checkable
class ScoreDecider(Protocol):
    """The narrow interface of a key holder, in-process or behind a socket."""

    def public_context(self) -> bytes: ...

    def decide(self, scores: bytes, threshold: float, *, caller: str, subject: str | None = None) -> list[bool]: ...

    def best(self, scores: bytes, threshold: float, k: int, *, caller: str) -> list[int]: ...

    def coarse_scores(self, scores: bytes, *, caller: str, noise_sigma: float | None = None) -> list[float]: ...

    def reclaim(self, request: bytes, *, caller: str) -> bytes: ...


@dataclass(frozen=True)
class RateLimit:
    """Per-caller limits of a key holder.

    Requests refill at ``requests_per_second`` up to ``burst``. A request to
    :meth:`KeyHolder.decide` may hold at most ``max_decisions`` scores (it
    returns a bit for each), :meth:`KeyHolder.best` at most ``max_scores``
    scores and ``max_k`` results, :meth:`KeyHolder.coarse_scores` at most
    ``max_coarse`` scores, :meth:`KeyHolder.reclaim` at most ``max_reclaim``
    ciphertexts, an attested request at most ``max_attested`` templates.
    """

    requests_per_second: float = 20.0
    burst: int = 100
    max_decisions: int = 64
    max_scores: int = 1 << 21
    max_k: int = 100
    max_coarse: int = 16
    max_reclaim: int = 64
    max_attested: int = 64

    def __post_init__(self) -> None:
        if not self.requests_per_second > 0 or self.burst < 1:
            raise InvalidInputError("a rate limit needs requests_per_second > 0 and burst >= 1")
        if min(self.max_decisions, self.max_scores, self.max_k, self.max_coarse, self.max_reclaim, self.max_attested) < 1:
            raise InvalidInputError("per-request limits must be at least 1")


@dataclass
class Usage:
    """What one caller has asked of the key holder so far."""

    requests: int = 0
    scores: int = 0
    refused: int = 0
    reclaimed: int = 0  # ciphertexts whose erased coefficients were reclaimed
    last_request: float | None = None


@dataclass
class _Bucket:
    tokens: float
    updated: float
    usage: Usage = field(default_factory=Usage)


class KeyHolder:
    """Owns the secret TenSEAL context; decides on encrypted scores.

    ``decision_noise`` is the standard deviation of Gaussian noise added to
    each score before it is compared with a threshold (so a decision is exact
    except within a few times this of the threshold). ``coarse_noise`` is the
    default flooding noise of :meth:`coarse_scores`, ``min_coarse_noise`` the
    least a caller may ask for, and ``coarse_step`` the grid scores are
    rounded to; all are in cosine units.
    """

    def __init__(
        self,
        params: HEParams = DEFAULT_PARAMS,
        *,
        limits: RateLimit = RateLimit(),
        decision_noise: float = 1e-5,
        coarse_noise: float = 0.02,
        min_coarse_noise: float = 0.005,
        coarse_step: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
        edge_keys: EdgeKeys | None = None,
        freshness: float = DEFAULT_FRESHNESS,
        wall_clock: Callable[[], float] = time.time,
        _context: ts.Context | None = None,
    ) -> None:
        if not 0 <= decision_noise < 0.01:
            raise InvalidInputError(f"decision_noise must lie in [0, 0.01), got {decision_noise}")
        if not 0 < min_coarse_noise <= coarse_noise or not 0 < coarse_step <= 0.5:
            raise InvalidInputError("need 0 < min_coarse_noise <= coarse_noise and 0 < coarse_step <= 0.5")
        if _context is None:
            _context = ts.context(
                ts.SCHEME_TYPE.CKKS,
                poly_modulus_degree=params.poly_modulus_degree,
                coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            )
        self._context = _context
        self._ring = Ring(_context)
        if tuple(self._ring.prime_bits) != params.coeff_mod_bit_sizes:
            raise InvalidInputError(f"context primes {self._ring.prime_bits} do not match {params}")
        self.params = params
        public_key, self.key_id = self._ring.public_key(_context)
        self._s_hat = secret_ntt(_context, self._ring)
        self._zero = ZeroEncryptor(self._ring, public_key)
        self._public = pack_public_context(_context, params, self.key_id)
        self.limits = limits
        self.decision_noise = float(decision_noise)
        self.coarse_noise = float(coarse_noise)
        self.min_coarse_noise = float(min_coarse_noise)
        self.coarse_step = float(coarse_step)
        self._clock = clock
        if edge_keys is not None and not isinstance(edge_keys, EdgeKeys):
            raise InvalidInputError(f"edge_keys must be EdgeKeys, got {type(edge_keys).__name__}")
        if not 0 < freshness <= 86400:
            raise InvalidInputError(f"freshness must lie in (0, 86400] seconds, got {freshness}")
        #: Registered capture edges: set, the key holder runs in attested mode (see :meth:`decide_attested`).
        self.edge_keys = edge_keys
        self.freshness = float(freshness)
        self._wall_clock = wall_clock
        #: Nonces of attested probes seen within their freshness window (the service keeps them in its ledger).
        self.nonces: NonceRegister = MemoryNonces()
        #: Per-subject daily budget of attested identifications a subject is scored in (the service's ledger).
        self.shortlists: ShortlistBudget = AdmitAll()
        self._lock = threading.Lock()
        self._callers: dict[str, _Bucket] = {}
        self._extractors: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

    def __reduce__(self) -> tuple:
        raise TypeError("a KeyHolder holds a secret key and cannot be pickled; use save()")

    def __repr__(self) -> str:
        return f"KeyHolder(key_id={self.key_id!r}, params={self.params!r})"

    # -- keys ------------------------------------------------------------------------

    def public_context(self) -> bytes:
        """The public context for the matching side (TenSEAL, saved with save_secret_key=False)."""
        return self._public

    def to_bytes(self) -> bytes:
        """The secret context as bytes (what :meth:`save` writes; seal it before it leaves memory)."""
        meta = json.dumps(
            {
                "key_id": self.key_id,
                "template_scale_bits": self.params.template_scale_bits,
                "probe_scale_bits": self.params.probe_scale_bits,
            }
        ).encode()
        secret = self._context.serialize(save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
        return frame(_KEY_MAGIC, meta, secret)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the secret context to a new file readable by its owner only (0600)."""
        target = Path(path)
        data = self.to_bytes()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], **options: object) -> "KeyHolder":
        """Read a secret context written by :meth:`save`; ``options`` as for the constructor."""
        source = Path(path)
        try:
            data = read_regular_file(source, "an fpmatch HE key file")
        except (OSError, InvalidInputError) as exc:
            raise KeyFileError(f"cannot read HE key file {source}: {exc}") from exc
        return cls.from_bytes(data, what=str(source), **options)

    @classmethod
    def from_bytes(cls, data: bytes, *, what: str = "the key", **options: object) -> "KeyHolder":
        """A key holder from :meth:`to_bytes` output; ``options`` as for the constructor.

        The SEAL context is read by a separate process first (see ``_isolated``): a damaged key
        file is refused with :class:`KeyFileError` and cannot end this process.
        """
        return cls._parse(data, what, authenticated=False, options=options)

    @classmethod
    def _parse(cls, data: bytes, what: str, *, authenticated: bool, options: dict) -> "KeyHolder":
        """``authenticated``: the bytes passed an integrity check (a sealed file) and are read here only."""
        read = ts.context_from if authenticated else context_from
        try:
            if not data.startswith(_KEY_MAGIC):
                raise KeyFileError(f"{what} is not an fpmatch HE key file")
            header, serialised = unframe(data, _KEY_MAGIC)
            meta = json.loads(header)
            scales = {name: meta[name] for name in ("template_scale_bits", "probe_scale_bits")}
            key_id = meta["key_id"]
            context = read(serialised)
        except KeyFileError:
            raise
        except Exception as exc:  # TenSEAL and json report damage with assorted types
            raise KeyFileError(f"cannot read HE key file {what}: {exc!r}") from exc
        if not context.has_secret_key():
            raise KeyFileError(f"{what} holds no secret key")
        if not context.has_public_key():  # found by fuzzing: TenSEAL then raises TypeError on use
            raise KeyFileError(f"{what} holds no public key")
        parms = context.seal_context().data.key_context_data().parms()
        try:
            params = HEParams(
                int(parms.poly_modulus_degree()), tuple(m.bit_count() for m in parms.coeff_modulus()), **scales
            )
        except InvalidInputError as exc:
            raise KeyFileError(f"{what} is damaged: {exc}") from None
        holder = cls(params, _context=context, **options)  # type: ignore[arg-type]
        if holder.key_id != key_id:
            raise KeyFileError(f"{what} is damaged: its key does not match its key_id")
        return holder

    # -- the interface -------------------------------------------------------------------

    def decide(self, scores: bytes, threshold: float, *, caller: str, subject: str | None = None) -> list[bool]:
        """``score >= threshold`` for each encrypted score, in order (at most ``limits.max_decisions``).

        ``subject`` (a pseudonym the caller chooses) is the label the key holder
        service counts per-subject budgets under; in process it is not counted.
        """
        self._unattested(caller, "decide")
        threshold = check_threshold(threshold)
        request = self._admit(scores, caller, self.limits.max_decisions, "decide")
        values = self._flooded(self._decrypt(request), self.decision_noise)
        return (values >= threshold).tolist()

    def best(self, scores: bytes, threshold: float, k: int, *, caller: str) -> list[int]:
        """Positions of up to ``k`` scores ``>= threshold``, highest first."""
        self._unattested(caller, "best")
        threshold = check_threshold(threshold)
        self._check_k(k)
        request = self._admit(scores, caller, self.limits.max_scores, "best")
        return _best(self._flooded(self._decrypt(request), self.decision_noise), threshold, k)

    def coarse_scores(self, scores: bytes, *, caller: str, noise_sigma: float | None = None) -> list[float]:
        """Scores plus N(0, noise_sigma^2) noise, rounded to ``coarse_step`` and clipped to [-1, 1].

        ``noise_sigma`` defaults to ``coarse_noise``; less than ``min_coarse_noise``
        is refused, because near-exact scores are what template rebuilding needs.
        """
        self._unattested(caller, "coarse_scores")
        sigma = self.coarse_noise if noise_sigma is None else float(noise_sigma)
        if not sigma >= self.min_coarse_noise:
            self._refuse(
                caller,
                f"noise_sigma {sigma} is below this key holder's floor of {self.min_coarse_noise}; "
                "exact or near-exact scores are never released",
            )
        request = self._admit(scores, caller, self.limits.max_coarse, "coarse_scores")
        exact = self._decrypt(request)
        rng = random.SystemRandom()
        step = self.coarse_step
        noisy = [round((v + rng.gauss(0.0, sigma)) / step) * step for v in exact]
        return [round(min(1.0, max(-1.0, v)), 9) for v in noisy]

    # -- attested mode ---------------------------------------------------------------

    @property
    def attested_mode(self) -> bool:
        """Whether this key holder decides only over scores it computes from signed probes and templates."""
        return self.edge_keys is not None

    def decide_attested(self, request: bytes, threshold: float, *, caller: str, subject: str | None = None) -> list[bool]:
        """``score >= threshold`` for the one template of an attested verification
        (:class:`~fpmatch.he.attested.AttestedRequest`); ``subject`` as for :meth:`decide`."""
        threshold = check_threshold(threshold)
        values = self._attested(request, caller, "verify", threshold)
        return (self._flooded(values, self.decision_noise) >= threshold).tolist()

    def best_attested(self, request: bytes, threshold: float, k: int, *, caller: str) -> list[int]:
        """Positions of up to ``k`` templates of an attested identification scoring ``>= threshold``, best first."""
        threshold = check_threshold(threshold)
        self._check_k(k)
        return _best(self._flooded(self._attested(request, caller, "identify", threshold), self.decision_noise), threshold, k)

    def _attested(self, data: bytes, caller: str, kind: str, threshold: float) -> np.ndarray:
        """Scores this key holder computes itself from a signed probe and signed templates, after every check
        (-inf for a template of an identification whose subject is over its budget: never a match)."""
        if self.edge_keys is None:
            self._refuse(caller, "this key holder is not in attested mode: it has no registered capture edges",
                         AttestedModeError)  # fmt: skip
        bucket = self._charge(caller)
        checked = check_attested(
            data, self.edge_keys, kind=kind, threshold=threshold, now=self._wall_clock(), freshness=self.freshness,
            nonces=self.nonces, params=self.params, n=self._ring.n, max_templates=self.limits.max_attested,
        )  # fmt: skip
        templates = checked.templates
        scored = np.ones(len(templates), dtype=bool)
        if kind == "identify":  # the signed subjects, each within its own daily budget
            scored[:] = self.shortlists.admit([tag_label(t.subject_tag) for t in templates])
        values = np.full(len(templates), -np.inf)
        if scored.any():
            scale_bits = self.params.template_scale_bits + checked.probe_scale_bits
            kept = [t for t, keep in zip(templates, scored) if keep]
            scores = attested_scores(self._ring, self.key_id, scale_bits, checked.weights, kept)
            with self._lock:
                bucket.usage.scores += len(scores)
            values[scored] = self._decrypt(scores)
        return values

    def _unattested(self, caller: str, what: str) -> None:
        if self.edge_keys is not None:
            self._refuse(
                caller,
                f"this key holder runs in attested mode: it refuses {what} on scores the caller computed and "
                "decides only over signed probes and templates (decide_attested, best_attested)",
                AttestedModeError,
            )

    def _check_k(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.limits.max_k:
            raise InvalidInputError(f"k must be an integer in [1, {self.limits.max_k}], got {k!r}")

    def reclaim(self, request: bytes, *, caller: str) -> bytes:
        """Fresh encryptions that make erased coefficients encrypt zero again (see :mod:`fpmatch.he.reclaim`).

        The reply is ciphertexts only; nothing decrypted leaves the key holder.
        """
        self._charge(caller)
        ring = self._ring
        c1, mask = parse_request(
            request, key_id=self.key_id, n=ring.n, q=ring.q, max_rows=self.limits.max_reclaim
        )
        secret_products = np.stack([ring.intt(row) for row in ring.mulmod(c1, self._s_hat[None, :])])
        fresh_c0, fresh_c1 = self._zero.encrypt(len(c1))
        fresh_c0 = ring.centre(fresh_c0 - np.where(mask, secret_products, 0))
        with self._lock:
            self._callers[caller].usage.reclaimed += len(c1)
        return reclaim_reply(self.key_id, ring.q, fresh_c0, fresh_c1)

    def usage(self, caller: str) -> Usage:
        """A copy of the caller's counters."""
        with self._lock:
            bucket = self._callers.get(caller)
            return replace(bucket.usage) if bucket else Usage()

    # -- internals ---------------------------------------------------------------------

    def _bucket(self, caller: str, now: float) -> _Bucket:
        if not isinstance(caller, str) or not caller:
            raise InvalidInputError("caller must be a non-empty string naming who asks")
        bucket = self._callers.get(caller)
        if bucket is None:
            bucket = self._callers[caller] = _Bucket(float(self.limits.burst), now)
        return bucket

    def _refuse(self, caller: str, reason: str, error: type[Exception] = DecryptionRefusedError) -> None:
        """Count a request refused before it was parsed, then raise."""
        with self._lock:
            now = self._clock()
            usage = self._bucket(caller, now).usage
            usage.requests += 1
            usage.refused += 1
            usage.last_request = now
        raise error(reason)

    def _admit(self, data: bytes, caller: str, max_scores: int, what: str) -> EncryptedScores:
        """Count the request, enforce the caller's budget, then parse it."""
        bucket = self._charge(caller)
        request = EncryptedScores.from_bytes(data, key_id=self.key_id, n=self._ring.n, q=self._ring.q)
        with self._lock:
            if len(request) > max_scores:
                bucket.usage.refused += 1
                raise DecryptionRefusedError(
                    f"{what} takes at most {max_scores} scores per request, got {len(request)}"
                )
            bucket.usage.scores += len(request)
        return request

    def _charge(self, caller: str) -> _Bucket:
        """Count one request against the caller's rate; raises when over it."""
        with self._lock:
            now = self._clock()
            bucket = self._bucket(caller, now)
            rate = self.limits.requests_per_second
            bucket.tokens = min(float(self.limits.burst), bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            bucket.usage.requests += 1
            bucket.usage.last_request = now
            if bucket.tokens < 1.0:
                bucket.usage.refused += 1
                wait = (1.0 - bucket.tokens) / rate
                raise RateLimitExceededError(f"caller {caller!r} is over its request budget; retry in {wait:.2f} s")
            bucket.tokens -= 1.0
        return bucket

    def _decrypt(self, request: EncryptedScores) -> np.ndarray:
        """Scores in cosine units; raises if any cannot be an honest score."""
        if not self.params.template_scale_bits + 8 <= request.scale_bits <= self.params.scale_bits:
            raise CiphertextIntegrityError(f"scale 2**{request.scale_bits} is not one this key holder issues")
        ring = self._ring
        per_row = np.bincount(request.row, minlength=request.a.shape[0])
        values = np.empty(len(request), dtype=np.int64)
        many = per_row[request.row] > _FEW_PER_ROW
        order = np.argsort(request.row, kind="stable")
        ends = np.cumsum(per_row)
        for r in np.flatnonzero(per_row > _FEW_PER_ROW).tolist():
            at = order[ends[r] - per_row[r] : ends[r]]
            coeff = ring.intt(ring.mulmod(request.a[r], self._s_hat))
            values[at] = coeff[request.index[at]]
        few = np.flatnonzero(~many)
        if few.size:
            extract = np.stack([self._extractor(int(t)) for t in request.index[few].tolist()])
            products = ring.mulmod(request.a[request.row[few]], extract)
            values[few] = np.mod(products.sum(axis=1), ring.q)
        plain = ring.centre(values + request.b)
        scores = plain.astype(np.float64) * 2.0**-request.scale_bits
        if not (np.abs(scores) <= 1.0 + SCORE_RANGE_TOLERANCE).all():
            raise CiphertextIntegrityError(
                "these ciphertexts do not decrypt to scores under this key: tampered, made under "
                "another key, or not scores of unit-norm templates"
            )
        return scores

    def _extractor(self, t: int) -> np.ndarray:
        """Vector E_t with (a*s)[t] = sum(a_hat * E_t) mod q, for NTT values a_hat.

        Coefficient t of a polynomial is coefficient 0 of it times X^-t, and
        coefficient 0 is N^-1 times the sum of the NTT values.
        """
        with self._lock:
            cached = self._extractors.get(t)
            if cached is not None:
                self._extractors.move_to_end(t)
                return cached
        ring = self._ring
        scaled = ring.mulmod(ring.monomial_ntt(-t), np.full(ring.n, ring.n_inverse, dtype=np.int64))
        vector = ring.mulmod(scaled, self._s_hat)
        with self._lock:
            self._extractors[t] = vector
            while len(self._extractors) > 256:
                self._extractors.popitem(last=False)
        return vector

    def _flooded(self, scores: np.ndarray, sigma: float) -> np.ndarray:
        if sigma == 0:
            return scores
        rng = np.random.default_rng(secrets.randbits(128))
        return scores + rng.normal(0.0, sigma, scores.shape)


def _best(values: np.ndarray, threshold: float, k: int) -> list[int]:
    """Positions of up to ``k`` values ``>= threshold``, highest first."""
    passing = np.flatnonzero(values >= threshold)
    if passing.size > k:
        passing = passing[np.argpartition(-values[passing], k - 1)[:k]]
    return passing[np.argsort(-values[passing], kind="stable")].tolist()
