"""The code part of the ``hash`` and ``hybrid`` galleries: a binary index searched by probe messages.

The table keeps codes under store ids and never the transform key: a probe
arrives as its code and per-bit reliabilities, the index returns a Hamming
shortlist re-ranked by weighted distance, and a score is ``1 - 2 d``.

``index="ivf"`` needs training. Until the gallery holds ``ivf_train_at``
codes they are searched exactly (flat); then the lists are learnt from every
code held and the IVF index takes over. An index object may be passed
instead (empty, of the code width): an untrained IVF index given so learns its
lists from the first batch added, which must hold at least ``nlist`` codes.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from ..codes import weighted_pairs
from ..errors import InvalidInputError
from ..index import FlatIndex, HNSWIndex, Index, IVFIndex

INDEX_KINDS = ("flat", "ivf", "hnsw")
#: Codes held before an IVF index is trained (exact search until then).
IVF_TRAIN_AT = 10_000
#: Deepest Hamming shortlist re-ranked per probe.
MAX_SHORTLIST = 1 << 16


def check_shortlist(shortlist: object) -> None:
    """A shortlist depth: a positive integer, bounded so that it cannot allocate without limit."""
    if isinstance(shortlist, bool) or not isinstance(shortlist, int) or not 1 <= shortlist <= MAX_SHORTLIST:
        raise InvalidInputError(f"shortlist must be an integer in [1, {MAX_SHORTLIST}], got {shortlist!r}")


def weighted_score(distance: np.ndarray | float) -> np.ndarray:
    """Probe-weighted distance -> estimated cosine, 1 - 2 d."""
    return 1.0 - 2.0 * np.asarray(distance, dtype=np.float64)


class CodeTable:
    """Codes by store id in one index of the kind asked for."""

    def __init__(self, bits: int, kind: str | Index, shortlist: int, *, ivf_train_at: int = IVF_TRAIN_AT) -> None:
        given = kind if isinstance(kind, (FlatIndex, IVFIndex, HNSWIndex)) else None
        if given is not None:
            if given.bits != bits or len(given):
                raise InvalidInputError("a gallery needs an empty index of the scheme's code width")
        elif kind not in INDEX_KINDS:
            raise InvalidInputError(f"index must be one of {', '.join(INDEX_KINDS)} or an index object, got {kind!r}")
        check_shortlist(shortlist)
        self.bits = bits
        self.shortlist = shortlist  # Hamming neighbours re-ranked by weighted distance
        if isinstance(ivf_train_at, bool) or not isinstance(ivf_train_at, int) or ivf_train_at < 64:
            raise InvalidInputError(f"ivf_train_at must be an integer of at least 64, got {ivf_train_at!r}")
        self.ivf_train_at = ivf_train_at
        self.n_threads = 0  # search threads per probe (0: every core)
        self.kind: str
        self.index: Index
        if given is None:
            self.kind = str(kind)
            self.index = self._empty()
        else:
            self.hold(given)

    def _empty(self) -> Index:
        return HNSWIndex(self.bits) if self.kind == "hnsw" else FlatIndex(self.bits)

    def adopt(self, index: Index | None) -> bool:
        """Use a cached index if it is of this table's kind (True), else keep an empty one."""
        wanted = IVFIndex if self.kind == "ivf" else HNSWIndex if self.kind == "hnsw" else FlatIndex
        flat_before_training = self.kind == "ivf" and isinstance(index, FlatIndex)
        if index is None or index.bits != self.bits or not (isinstance(index, wanted) or flat_before_training):
            return False
        if flat_before_training and len(index) >= self.ivf_train_at:
            return False
        self.index = index
        return True

    def hold(self, index: Index) -> None:
        """Search ``index`` (codes already in it) from now on, whatever its kind."""
        if index.bits != self.bits:
            raise InvalidInputError(f"the index holds {index.bits}-bit codes, this table {self.bits}")
        self.kind = "ivf" if isinstance(index, IVFIndex) else "hnsw" if isinstance(index, HNSWIndex) else "flat"
        self.index = index

    def add(self, codes: np.ndarray, ids: np.ndarray) -> None:
        if isinstance(self.index, IVFIndex) and not self.index.is_trained:
            if len(codes) < self.index.nlist:
                raise InvalidInputError(
                    f"an IVF gallery learns its lists from the first enrolment: enrol at least "
                    f"{self.index.nlist} subjects at once, or pass a trained IVFIndex"
                )
            self.index.train(codes)
        elif self.kind == "ivf" and not isinstance(self.index, IVFIndex):
            held = self.index.ids()
            if len(held) + len(ids) >= self.ivf_train_at:
                all_ids = np.concatenate([held, ids])
                all_codes = np.concatenate([self.index.reconstruct(held), codes])
                self.index = _trained_ivf(self.bits, all_codes, self.shortlist)
                self.index.add(all_codes, all_ids)
                return
        self.index.add(codes, ids)

    def remove(self, ids: np.ndarray) -> None:
        self.index.remove(ids)

    def distance(self, id_: int, code: np.ndarray, reliability: np.ndarray) -> float:
        """Weighted distance between a probe and one stored code."""
        stored = self.index.reconstruct(np.array([id_], dtype=np.int64))
        first = np.zeros(1, dtype=np.int64)
        return float(weighted_pairs(code[None, :], reliability[None, :], first, stored, first)[0])

    def nearest(
        self, code: np.ndarray, reliability: np.ndarray, want: int, eligible: Callable[[int], bool]
    ) -> list[tuple[int, float]]:
        """Up to ``want`` eligible (id, weighted distance), nearest first.

        Searches deeper while ineligible codes fill the shortlist, so that
        eligibility never hides an eligible neighbour.
        """
        total = len(self.index)
        depth = min(total, max(want, 16))
        found: list[tuple[int, float]] = []
        while depth:
            result = self.index.search_weighted(
                code[None, :], reliability[None, :], depth, max(self.shortlist, depth), n_threads=self.n_threads
            )
            labels = result.labels[0].tolist()
            found = []
            for label, distance in zip(labels, result.distances[0].tolist()):
                if label >= 0 and eligible(label):
                    found.append((label, distance))
                    if len(found) == want:
                        return found
            if labels.count(-1) or depth >= total:  # nothing more to find
                break
            depth = min(total, depth * 4)
        return found

    def impostor_scores(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Code-to-code scores cos(pi h / bits) of distinct stored codes."""
        ids = self.index.ids()
        n = len(ids)
        if n < 2:
            return np.zeros(0)
        queries = rng.permutation(ids)[: max(1, min(n, math.ceil(count / (n - 1))))]
        found = self.index.range_search(self.index.reconstruct(queries), self.bits)
        self_match = np.repeat(queries, np.diff(found.lims))
        distances = found.distances[found.labels != self_match]
        return np.cos(np.pi * distances.astype(np.float64) / self.bits)

    def problems(self, expected: dict[int, bytes]) -> list[str]:
        """Where the index and ``expected`` (id -> code) disagree."""
        held = sorted(self.index.ids().tolist())
        if held != sorted(expected):
            return ["index ids differ from database ids"]
        if not held:
            return []
        ids = np.array(held, dtype=np.int64)
        stored = self.index.reconstruct(ids)
        bad = [id_ for id_, code in zip(held, stored) if code.tobytes() != expected[id_]]
        return [f"index codes differ from database codes for ids {bad[:5]}"] if bad else []

    def load(self, ids: Sequence[int], codes: Sequence[bytes]) -> None:
        """Rebuild the index from stored codes."""
        self.index = self._empty()
        if ids:
            array = np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(len(ids), -1)
            self.add(array, np.asarray(ids, dtype=np.int64))


def _trained_ivf(bits: int, codes: np.ndarray, shortlist: int) -> IVFIndex:
    # About 2 sqrt(n) lists, three quarters of them probed. Measured on 200,000 centred 512-D
    # codes (300 probes): the plain top-1 was among the 32 re-ranked neighbours for 0.98 of
    # probes with half the lists probed, 1.000 with three quarters, at 0.42 and 0.53 ms (flat: 1.01).
    nlist = int(min(2048, max(16, 2 * math.isqrt(len(codes)))))
    index = IVFIndex(bits, nlist=nlist, nprobe=max(1, 3 * nlist // 4), rerank=max(256, shortlist))
    index.train(codes)
    return index
