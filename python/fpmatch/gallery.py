"""Gallery: enrol, verify (1:1) and identify (1:N) subjects over protected codes.

Only hash codes are stored; templates and probes pass through ``protect`` and
are dropped. A probe is compared with stored codes by its weighted Hamming
distance d (each bit weighted by how reliable the probe's bit is, see
:mod:`fpmatch.hashing`); the score ``1 - 2 d`` estimates cosine similarity.
Identification takes a Hamming shortlist from the index and ranks it by that
score. Decisions use a score threshold calibrated for a target false-match rate
(FMR): from labelled embeddings passed to :meth:`Gallery.calibrate` (exact), or
else from impostor pairs among the enrolled subjects' codes. Stored codes have no
reliabilities, so the latter scores code against code, cos(pi * h / bits); that
estimate of the same cosine is noisier, so its threshold errs high (measured FMR
at or below the target: tests/test_gallery.py).
"""

from __future__ import annotations

import hmac
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ._validate import as_subject_list, as_template_rows, read_regular_file, require_array
from .codes import weighted_pairs
from .edge import EdgeProfile
from .errors import AuthenticationError, IdConflictError, InvalidInputError, KeyMismatchError, UnknownSubjectError
from .galleries.codes import check_shortlist, weighted_score
from .galleries.hashed import HashSchemeGallery
from .galleries.hashed import default_shortlist as hashed_default_shortlist
from .hashing import CancellableHash
from .index import FlatIndex, HNSWIndex, Index, IVFIndex, load_index
from .keys import HashKey, ensure_outside
from .thresholds import DEFAULT_TARGET_FMR, check_fmr, check_score, threshold_at_fmr

__all__ = ["Gallery", "VerifyResult", "Match", "Candidate", "DEFAULT_TARGET_FMR", "check_fmr", "threshold_at_fmr"]
_MAGIC = b"FPMATCHG"
#: Most results one identification returns (a bound, so that k cannot allocate without limit).
MAX_RESULTS = 10_000


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a 1:1 comparison. ``verified`` is ``score >= threshold``."""

    subject: str
    verified: bool
    score: float  # estimated cosine similarity, 1 - 2 * distance
    threshold: float  # score threshold used, calibrated for a target FMR unless given
    distance: float  # weighted Hamming distance in [0, 1] between probe and stored code


@dataclass(frozen=True)
class Match:
    """One identification result decided without releasing a score, best first (rank 1)."""

    subject: str
    rank: int


@dataclass(frozen=True)
class Candidate:
    """One identification candidate, best first (rank 1)."""

    subject: str
    score: float
    distance: float
    rank: int


class Gallery(HashSchemeGallery):
    """Protected templates of enrolled subjects, searchable by Hamming distance.

    The ``hash`` scheme's gallery (:class:`~fpmatch.galleries.HashSchemeGallery`,
    which the matching service runs on codes alone) for a party that also holds
    the transform key: it takes float templates and probes, protects them at
    once, assigns ids, releases scores, and saves itself to one authenticated file.

    ``index="flat"`` searches exactly; ``"ivf"`` scales to millions approximately
    (it learns its lists from the first enrolment batch, which must hold at least
    ``nlist`` subjects, unless the index passed in is already trained); ``"hnsw"``
    is the graph alternative. ``shortlist`` Hamming neighbours per probe are
    re-ranked by weighted distance (more: closer to an exhaustive weighted scan,
    slower). By default 1024 when the scheme removes an offset (narrow-cone
    models, where Hamming ranks are noisy) and 128 otherwise (see README).
    Searches may run from several threads at once; writes wait for them.
    """

    def __init__(
        self,
        scheme: CancellableHash,
        index: str | Index = "flat",
        *,
        target_fmr: float = DEFAULT_TARGET_FMR,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        shortlist: int | None = None,
    ) -> None:
        check_fmr(target_fmr)
        chosen = code_index(scheme.bits, index, hnsw_m, ef_construction, ef_search)
        super().__init__(profile_of(scheme), chosen, shortlist=shortlist)
        self.scheme = scheme
        self.target_fmr = target_fmr
        self._next_id = 0
        self._threshold: float | None = None

    @property
    def shortlist(self) -> int:
        """Hamming neighbours re-ranked per probe."""
        return self.codes.shortlist

    @shortlist.setter
    def shortlist(self, value: int) -> None:
        check_shortlist(value)
        self.codes.shortlist = value

    def enrol(self, subjects: str | Sequence[str], templates: np.ndarray) -> None:
        """Protect and store one template per subject. All or nothing: on any error nothing is stored."""
        rows = as_template_rows(templates, self.scheme.dim)
        names = as_subject_list(subjects, len(rows))
        taken = [name for name in names if name in self._ids]
        if taken:
            raise IdConflictError(f"already enrolled: {', '.join(taken[:5])}")
        codes = self.scheme.protect(rows)
        self.add_codes(names, codes, np.arange(self._next_id, self._next_id + len(names), dtype=np.int64))

    def remove(self, subject: str) -> None:
        """Delete the subject's code from the index; afterwards they match nothing."""
        self.codes.remove(np.array([self.id_of(subject)], dtype=np.int64))
        self._unbind([subject])

    # -- decisions ------------------------------------------------------------

    @property
    def threshold(self) -> float | None:
        """The score threshold (accept when score >= it), calibrated unless set; None before."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        if value is not None:
            check_score(value)
        self._threshold = None if value is None else float(value)

    def verify(self, subject: str, probe: np.ndarray, threshold: float | None = None) -> VerifyResult:
        """1:1: does ``probe`` belong to ``subject``? The probe is not stored."""
        limit = self._threshold_for(threshold)
        code, reliability = self.scheme.protect_with_reliability(as_template_rows(probe, self.scheme.dim, "probe"))
        if len(code) != 1:
            raise InvalidInputError("verify takes one probe")
        try:
            distance = self.codes.distance(self.id_of(subject), code[0], reliability[0])
        except IdConflictError:  # removed by another thread since the lookup
            raise UnknownSubjectError(f"subject {subject!r} is not enrolled") from None
        score = float(weighted_score(distance))
        return VerifyResult(subject=subject, verified=score >= limit, score=score, threshold=limit, distance=distance)

    def identify(self, probe: np.ndarray, k: int = 5, threshold: float | None = None) -> list[Candidate]:
        """1:N: up to ``k`` subjects whose score reaches the threshold, best first. Empty: no match."""
        rows = as_template_rows(probe, self.scheme.dim, "probe")
        if len(rows) != 1:
            raise InvalidInputError(f"identify takes one probe, got {len(rows)}; use identify_many for a batch")
        return self.identify_many(rows, k, threshold)[0]

    def identify_many(
        self, probes: np.ndarray, k: int = 5, threshold: float | None = None
    ) -> list[list[Candidate]]:
        """:meth:`identify` for a batch of probes (n, dim)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_RESULTS:
            raise InvalidInputError(f"k must be an integer in [1, {MAX_RESULTS}], got {k!r}")
        limit = self._threshold_for(threshold)
        codes, reliability = self.scheme.protect_with_reliability(
            as_template_rows(probes, self.scheme.dim, "probes")
        )
        result = self.codes.index.search_weighted(codes, reliability, k, self.shortlist)
        out: list[list[Candidate]] = []
        for distances, labels in zip(result.distances.tolist(), result.labels.tolist()):
            # A subject removed by another thread during the search is passed over.
            named = [(self._names.get(label), d) for d, label in zip(distances, labels) if label >= 0]
            scored = [(name, float(weighted_score(d)), d) for name, d in named if name is not None]
            matches = [(name, score, d) for name, score, d in scored if score >= limit]
            out.append([Candidate(name, s, d, rank) for rank, (name, s, d) in enumerate(matches, start=1)])
        return out

    def calibrate(
        self,
        target_fmr: float | None = None,
        templates: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        *,
        max_pairs: int = 2_000_000,
        seed: int = 0,
    ) -> float:
        """Set the threshold so that the false-match rate is at most ``target_fmr``.

        With ``templates`` and ``labels`` (labelled embeddings from the same model,
        not necessarily enrolled), impostor pairs are drawn from them; otherwise
        from pairs of distinct enrolled subjects, using stored codes only. Returns
        the score threshold.
        """
        fmr = self.target_fmr if target_fmr is None else target_fmr
        check_fmr(fmr)
        needed = math.ceil(10 / fmr)
        rng = np.random.default_rng(seed)
        if templates is not None or labels is not None:
            scores = self._labelled_impostors(templates, labels, max(needed, max_pairs), rng)
        else:
            scores = self.codes.impostor_scores(max(needed, max_pairs), rng)
        threshold = threshold_at_fmr(scores, fmr)
        self._threshold = threshold
        self.target_fmr = fmr
        return threshold

    # -- persistence ----------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the gallery (codes, subject names, threshold) authenticated under the key."""
        target = Path(path)
        ensure_outside(self.scheme.key, target.parent)
        meta = {
            "format": 1,
            "scheme": self.scheme.scheme,
            "key_id": self.scheme.key.key_id,
            "dim": self.scheme.dim,
            "bits": self.scheme.bits,
            "offset": None if self.scheme.offset is None else np.asarray(self.scheme.offset).tolist(),
            "offset_removal": self.scheme.offset_removal,
            "target_fmr": self.target_fmr,
            "threshold": self._threshold,
            "shortlist": self.shortlist,
            "next_id": self._next_id,
            "subjects": self._ids,
        }
        meta_bytes = json.dumps(meta).encode()
        index_bytes = self.codes.index.serialize(self.scheme.key.subkey("index-mac"))
        body = _MAGIC + struct.pack("<Q", len(meta_bytes)) + meta_bytes + index_bytes
        tag = hmac.new(self.scheme.key.subkey("gallery-mac"), body, "sha256").digest()
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(body + tag)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    @classmethod
    def load(cls, path: str | os.PathLike[str], key: HashKey, n_threads: int = 0) -> "Gallery":
        """Authenticate and load a gallery written by :meth:`save`."""
        source = Path(path)
        ensure_outside(key, source.parent)
        data = read_regular_file(source, "an fpmatch gallery file")
        if len(data) < len(_MAGIC) + 8 + 32 or not data.startswith(_MAGIC):
            raise AuthenticationError(f"{source} is not an fpmatch gallery file (or is truncated)")
        body, tag = data[:-32], data[-32:]
        if not hmac.compare_digest(hmac.new(key.subkey("gallery-mac"), body, "sha256").digest(), tag):
            raise AuthenticationError(
                f"{source} failed authentication: modified, truncated, or saved under another key"
            )
        (meta_len,) = struct.unpack_from("<Q", body, len(_MAGIC))
        start = len(_MAGIC) + 8
        meta = json.loads(body[start : start + meta_len])
        if meta["key_id"] != key.key_id:
            raise KeyMismatchError("the gallery was saved under a different key")
        offset = None if meta["offset"] is None else np.asarray(meta["offset"], dtype=np.float32)
        scheme = CancellableHash(
            key, meta["dim"], meta["bits"], offset, n_threads, meta["offset_removal"], meta["scheme"]
        )
        if "threshold" in meta:
            threshold = meta["threshold"]
        elif meta.get("threshold_distance") is not None:  # files that held a Hamming limit
            threshold = float(scheme.score(int(meta["threshold_distance"])))
        else:
            threshold = None
        subjects = {str(k): int(v) for k, v in meta["subjects"].items()}
        index = load_index(body[start + meta_len :], key.subkey("index-mac"))
        try:
            gallery = cls.from_index(
                scheme, index, subjects, target_fmr=meta["target_fmr"], threshold=threshold, shortlist=meta.get("shortlist")
            )
        except InvalidInputError:
            raise AuthenticationError(f"{source}: subject table and index disagree") from None
        gallery._next_id = max(gallery._next_id, int(meta["next_id"]))
        return gallery

    # -- for stores that keep codes and ids themselves -------------------------

    def add_codes(self, subjects: str | Sequence[str], codes: np.ndarray, ids: np.ndarray) -> None:
        """Add codes already made by ``scheme.protect`` under the given distinct ids. All or nothing."""
        codes = require_array(codes, "codes")
        ids = require_array(ids, "ids")
        names = as_subject_list(subjects, len(codes))
        taken = [name for name in names if name in self._ids]
        if taken:
            raise IdConflictError(f"already enrolled: {', '.join(taken[:5])}")
        if ids.shape != (len(names),):
            raise InvalidInputError(f"need one id per code, got ids of shape {ids.shape}")
        # Names first, index second (and the reverse on removal): a concurrent
        # search never returns an id whose name is unknown.
        self._bind(names, ids.tolist())
        try:
            self.codes.add(codes, ids)
        except Exception:
            self._unbind(names)
            raise
        self._next_id = max([self._next_id, *(id_ + 1 for id_ in ids.tolist())])

    @classmethod
    def from_index(
        cls,
        scheme: CancellableHash,
        index: Index,
        subjects: Mapping[str, int],
        *,
        target_fmr: float = DEFAULT_TARGET_FMR,
        threshold: float | None = None,
        shortlist: int | None = None,
    ) -> "Gallery":
        """A gallery over an existing index whose ids are exactly the values of ``subjects``."""
        if index.bits != scheme.bits:
            raise KeyMismatchError(f"the index holds {index.bits}-bit codes, the scheme makes {scheme.bits}")
        ids = sorted(int(id_) for id_ in subjects.values())
        if ids != sorted(index.ids().tolist()) or len(set(ids)) != len(ids):
            raise InvalidInputError("the subject table and the index hold different ids")
        gallery = cls(scheme, target_fmr=target_fmr, shortlist=shortlist)
        gallery.codes.hold(index)
        gallery._bind([str(name) for name in subjects], [int(id_) for id_ in subjects.values()])
        gallery._next_id = ids[-1] + 1 if ids else 0
        gallery.threshold = threshold
        return gallery

    # -- internals ------------------------------------------------------------

    def _threshold_for(self, threshold: float | None) -> float:
        if threshold is not None:
            check_score(threshold)
            return float(threshold)
        if self._threshold is None:
            self.calibrate()
        assert self._threshold is not None
        return self._threshold

    def _labelled_impostors(
        self, templates: np.ndarray | None, labels: np.ndarray | None, max_pairs: int, rng: np.random.Generator
    ) -> np.ndarray:
        if templates is None or labels is None:
            raise InvalidInputError("calibrate needs both templates and labels, or neither")
        codes, reliability = self.scheme.protect_with_reliability(templates)
        labels = np.asarray(labels)
        if labels.shape != (len(codes),):
            raise InvalidInputError("labels must be 1-D with one label per template")
        a = rng.integers(0, len(codes), max_pairs)
        b = rng.integers(0, len(codes), max_pairs)
        keep = labels[a] != labels[b]
        a, b = a[keep], b[keep]
        return np.asarray(weighted_score(weighted_pairs(codes, reliability, a, codes, b)))


def code_index(bits: int, index: str | Index, hnsw_m: int, ef_construction: int, ef_search: int) -> str | Index:
    """The index a single-party gallery asked for ``index`` searches: "flat", or an index object."""
    if isinstance(index, (FlatIndex, IVFIndex, HNSWIndex)) or index == "flat":
        return index
    if index == "ivf":
        return IVFIndex(bits)  # trained on the first enrolment
    if index == "hnsw":
        return HNSWIndex(bits, hnsw_m, ef_construction, ef_search)
    raise InvalidInputError(f"index must be 'flat', 'ivf', 'hnsw' or an index object, got {index!r}")


def profile_of(scheme: CancellableHash) -> EdgeProfile:
    """The public facts of the ``hash`` scheme that ``scheme`` protects under."""
    return EdgeProfile(
        scheme="hash",
        dim=scheme.dim,
        edge_key_id=scheme.key.key_id,
        bits=scheme.bits,
        hash_scheme=scheme.scheme,
        narrow_cone=scheme.offset is not None,
    )


def default_shortlist(scheme: CancellableHash) -> int:
    """Hamming neighbours re-ranked per probe unless a gallery is told otherwise."""
    return hashed_default_shortlist(profile_of(scheme))
