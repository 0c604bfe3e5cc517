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

from ._validate import as_subject_list, as_template_rows, require_array
from .codes import weighted_pairs
from .errors import (
    AuthenticationError,
    IdConflictError,
    InvalidInputError,
    KeyMismatchError,
    NotCalibratedError,
    UnknownSubjectError,
)
from .hashing import CancellableHash
from .index import FlatIndex, HNSWIndex, Index, IVFIndex, load_index
from .keys import HashKey, ensure_outside

DEFAULT_TARGET_FMR = 1e-4
_MAGIC = b"FPMATCHG"


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


class Gallery:
    """Protected templates of enrolled subjects, searchable by Hamming distance.

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
        if shortlist is None:
            shortlist = default_shortlist(scheme)
        if shortlist < 1:
            raise InvalidInputError("shortlist must be at least 1")
        self.scheme = scheme
        self.target_fmr = target_fmr
        self.shortlist = shortlist
        self._index: Index
        if isinstance(index, (FlatIndex, IVFIndex, HNSWIndex)):
            if index.bits != scheme.bits or len(index):
                raise InvalidInputError("a gallery needs an empty index of the scheme's code width")
            self._index = index
        elif index == "flat":
            self._index = FlatIndex(scheme.bits)
        elif index == "ivf":
            self._index = IVFIndex(scheme.bits)
        elif index == "hnsw":
            self._index = HNSWIndex(scheme.bits, hnsw_m, ef_construction, ef_search)
        else:
            raise InvalidInputError(f"index must be 'flat', 'ivf', 'hnsw' or an index object, got {index!r}")
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._next_id = 0
        self._threshold: float | None = None

    # -- membership -----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, subject: object) -> bool:
        return subject in self._ids

    def subjects(self) -> list[str]:
        return list(self._ids)

    @property
    def index(self) -> Index:
        return self._index

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
        id_ = self._id_of(subject)
        self._index.remove(np.array([id_], dtype=np.int64))
        del self._ids[subject]
        del self._names[id_]

    # -- decisions ------------------------------------------------------------

    @property
    def threshold(self) -> float | None:
        """The score threshold (accept when score >= it), calibrated unless set; None before."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        if value is not None:
            _check_score(value)
        self._threshold = None if value is None else float(value)

    def verify(self, subject: str, probe: np.ndarray, threshold: float | None = None) -> VerifyResult:
        """1:1: does ``probe`` belong to ``subject``? The probe is not stored."""
        limit = self._threshold_for(threshold)
        code, reliability = self.scheme.protect_with_reliability(as_template_rows(probe, self.scheme.dim, "probe"))
        if len(code) != 1:
            raise InvalidInputError("verify takes one probe")
        try:
            stored = self._index.reconstruct(np.array([self._id_of(subject)], dtype=np.int64))
        except IdConflictError:  # removed by another thread since the lookup
            raise UnknownSubjectError(f"subject {subject!r} is not enrolled") from None
        first = np.zeros(1, dtype=np.int64)
        distance = float(weighted_pairs(code, reliability, first, stored, first)[0])
        score = float(self.scheme.weighted_score(distance))
        return VerifyResult(subject=subject, verified=score >= limit, score=score, threshold=limit, distance=distance)

    def identify(self, probe: np.ndarray, k: int = 5, threshold: float | None = None) -> list[Candidate]:
        """1:N: up to ``k`` subjects whose score reaches the threshold, best first. Empty: no match."""
        return self.identify_many(as_template_rows(probe, self.scheme.dim, "probe")[:1], k, threshold)[0]

    def identify_many(
        self, probes: np.ndarray, k: int = 5, threshold: float | None = None
    ) -> list[list[Candidate]]:
        """:meth:`identify` for a batch of probes (n, dim)."""
        if k < 1:
            raise InvalidInputError("k must be at least 1")
        limit = self._threshold_for(threshold)
        codes, reliability = self.scheme.protect_with_reliability(
            as_template_rows(probes, self.scheme.dim, "probes")
        )
        result = self._index.search_weighted(codes, reliability, k, self.shortlist)
        out: list[list[Candidate]] = []
        for distances, labels in zip(result.distances.tolist(), result.labels.tolist()):
            scored = [(self.scheme.weighted_score(d), d, l) for d, l in zip(distances, labels) if l >= 0]
            matches = [(score, d, l) for score, d, l in scored if score >= limit]
            out.append([Candidate(self._names[l], s, d, rank) for rank, (s, d, l) in enumerate(matches, start=1)])
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
            scores = self._gallery_impostors(max(needed, max_pairs), rng)
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
        index_bytes = self._index.serialize(self.scheme.key.subkey("index-mac"))
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
        data = source.read_bytes()
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
        gallery = cls(scheme, target_fmr=meta["target_fmr"], shortlist=meta.get("shortlist"))
        gallery._index = load_index(body[start + meta_len :], key.subkey("index-mac"))
        gallery._ids = {str(k): int(v) for k, v in meta["subjects"].items()}
        gallery._names = {v: k for k, v in gallery._ids.items()}
        gallery._next_id = int(meta["next_id"])
        if "threshold" in meta:
            gallery.threshold = meta["threshold"]
        elif meta.get("threshold_distance") is not None:  # files that held a Hamming limit
            gallery.threshold = float(scheme.score(int(meta["threshold_distance"])))
        if sorted(gallery._names) != sorted(gallery._index.ids().tolist()):
            raise AuthenticationError(f"{source}: subject table and index disagree")
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
        if isinstance(self._index, IVFIndex) and not self._index.is_trained:
            if len(codes) < self._index.nlist:
                raise InvalidInputError(
                    f"an IVF gallery learns its lists from the first enrolment: enrol at least "
                    f"{self._index.nlist} subjects at once, or pass a trained IVFIndex"
                )
            self._index.train(codes)
        # Names first, index second (and the reverse on removal): a concurrent
        # search never returns an id whose name is unknown.
        for name, id_ in zip(names, ids.tolist()):
            self._names[id_] = name
        try:
            self._index.add(codes, ids)
        except Exception:
            for id_ in ids.tolist():
                del self._names[id_]
            raise
        self._next_id = max([self._next_id, *(id_ + 1 for id_ in ids.tolist())])
        for name, id_ in zip(names, ids.tolist()):
            self._ids[name] = id_

    def id_of(self, subject: str) -> int:
        """The index id of an enrolled subject."""
        return self._id_of(subject)

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
        gallery._index = index
        gallery._ids = {str(name): int(id_) for name, id_ in subjects.items()}
        gallery._names = {id_: name for name, id_ in gallery._ids.items()}
        gallery._next_id = ids[-1] + 1 if ids else 0
        gallery.threshold = threshold
        return gallery

    # -- internals ------------------------------------------------------------

    def _id_of(self, subject: str) -> int:
        try:
            return self._ids[subject]
        except (KeyError, TypeError):
            raise UnknownSubjectError(f"subject {subject!r} is not enrolled") from None

    def _threshold_for(self, threshold: float | None) -> float:
        if threshold is not None:
            _check_score(threshold)
            return float(threshold)
        if self._threshold is None:
            self.calibrate()
        assert self._threshold is not None
        return self._threshold

    def _gallery_impostors(self, max_pairs: int, rng: np.random.Generator) -> np.ndarray:
        ids = self._index.ids()
        n = len(ids)
        if n < 2:
            return np.zeros(0, dtype=np.int64)
        queries = rng.permutation(ids)[: max(1, min(n, math.ceil(max_pairs / (n - 1))))]
        found = self._index.range_search(self._index.reconstruct(queries), self.scheme.bits)
        self_match = np.repeat(queries, np.diff(found.lims))
        return np.asarray(self.scheme.score(found.distances[found.labels != self_match]))

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
        return np.asarray(self.scheme.weighted_score(weighted_pairs(codes, reliability, a, codes, b)))


def threshold_at_fmr(scores: np.ndarray, fmr: float) -> float:
    """The lowest score threshold that at most ``floor(fmr * n)`` of ``n`` impostor scores reach.

    Needs at least ``10 / fmr`` scores (NotCalibratedError otherwise).
    """
    check_fmr(fmr)
    needed = math.ceil(10 / fmr)
    if len(scores) < needed:
        raise NotCalibratedError(
            f"{len(scores)} impostor pairs cannot estimate FMR {fmr:g} (need {needed}); "
            "enrol more subjects or calibrate with labelled templates"
        )
    allowed = int(math.floor(fmr * len(scores)))
    highest = np.partition(scores, len(scores) - 1 - allowed)[len(scores) - 1 - allowed]
    threshold = float(np.nextafter(highest, np.inf))
    if threshold > 1.0:
        raise NotCalibratedError(f"even identical templates exceed FMR {fmr:g} on this data")
    return threshold


def default_shortlist(scheme: CancellableHash) -> int:
    """Hamming neighbours re-ranked per probe unless a gallery is told otherwise."""
    return 1024 if scheme.offset is not None else 128


def check_fmr(fmr: float) -> None:
    """A target false-match rate in (0, 1)."""
    if not 0.0 < fmr < 1.0:
        raise InvalidInputError(f"target FMR must lie in (0, 1), got {fmr}")


def _check_score(score: float) -> None:
    if not -1.0 <= float(score) <= 1.0:
        raise InvalidInputError(f"a score threshold must lie in [-1, 1], got {score}")
