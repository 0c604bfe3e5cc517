"""Protected binary indexes: Hamming search over hash codes in the native core.

``FlatIndex`` is exact. ``IVFIndex`` is approximate and scales to millions: it
scans code prefixes in the lists nearest the query and re-ranks by full codes.
``HNSWIndex`` is approximate too; removal there leaves a tombstone until
:meth:`HNSWIndex.compact`. All are safe for concurrent searches; a write waits
for running searches.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import numpy as np

from . import _core
from ._validate import require_array
from .errors import InvalidInputError


class SearchResult(NamedTuple):
    """k nearest per query, ascending distance. Missing slots: label -1, distance 2**31-1."""

    distances: np.ndarray  # (nq, k) int32 Hamming distances
    labels: np.ndarray  # (nq, k) int64 ids


class WeightedResult(NamedTuple):
    """k best per query by weighted Hamming distance, ascending. Missing slots: label -1, distance inf."""

    distances: np.ndarray  # (nq, k) float32 weighted distances in [0, 1]
    labels: np.ndarray  # (nq, k) int64 ids


class RangeResult(NamedTuple):
    """Query i's matches are ``labels[lims[i]:lims[i+1]]``."""

    lims: np.ndarray
    distances: np.ndarray
    labels: np.ndarray


class _IndexBase:
    _native: _core.ProtectedIndex

    @property
    def native(self) -> _core.ProtectedIndex:
        """The core's index object, for native calls that search it."""
        return self._native

    @property
    def bits(self) -> int:
        return self._native.bits

    @property
    def code_size(self) -> int:
        return self._native.code_size

    def __len__(self) -> int:
        return len(self._native)

    def __contains__(self, id_: int) -> bool:
        return int(id_) in self._native

    def ids(self) -> np.ndarray:
        """Live ids, int64."""
        return self._native.ids()

    def add(self, codes: np.ndarray, ids: np.ndarray, n_threads: int = 0) -> None:
        """Add (n, code_size) uint8 codes under distinct non-negative int64 ids (all or nothing)."""
        self._native.add(require_array(codes, "codes"), require_array(ids, "ids"), n_threads)

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids; returns how many were present. Removed codes are overwritten in memory."""
        return self._native.remove(require_array(ids, "ids"))

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored codes of ``ids`` (int64, each present), shape (n, code_size)."""
        return self._native.reconstruct(require_array(ids, "ids"))

    def search(self, queries: np.ndarray, k: int, n_threads: int = 0) -> SearchResult:
        """The k nearest codes per query row (k in [1, 2^20])."""
        _positive(k=k)
        distances, labels = self._native.search(require_array(queries, "queries"), k, n_threads)
        return SearchResult(distances, labels)

    def search_weighted(
        self, queries: np.ndarray, weights: np.ndarray, k: int, shortlist: int = 1024, n_threads: int = 0
    ) -> WeightedResult:
        """The k best of each query's Hamming shortlist (``max(k, shortlist)`` nearest),
        re-ranked by weighted distance: a mismatch in bit j costs ``weights[q, j]``.

        ``weights`` (nq, bits) float32 are the probes' bit reliabilities from
        :meth:`fpmatch.CancellableHash.protect_with_reliability`.
        """
        _positive(k=k)
        if isinstance(shortlist, bool) or not isinstance(shortlist, (int, np.integer)) or shortlist < 0:
            raise InvalidInputError(f"shortlist must be a non-negative integer, got {shortlist!r}")
        distances, labels = self._native.search_weighted(
            require_array(queries, "queries"), require_array(weights, "weights"), k, shortlist, n_threads
        )
        return WeightedResult(distances, labels)

    def range_search(self, queries: np.ndarray, radius: int, n_threads: int = 0) -> RangeResult:
        """Every code within Hamming distance ``radius`` (inclusive); exact on every index."""
        lims, distances, labels = self._native.range_search(require_array(queries, "queries"), radius, n_threads)
        return RangeResult(lims, distances, labels)

    def serialize(self, mac_key: bytes) -> bytes:
        """Bytes authenticated with HMAC-SHA256 under ``mac_key`` (at least 16 bytes)."""
        return self._native.serialize(mac_key)


class FlatIndex(_IndexBase):
    """Exact Hamming search over every stored code."""

    def __init__(self, bits: int) -> None:
        self._native = _core.FlatIndex(bits)


class HNSWIndex(_IndexBase):
    """Approximate Hamming search on an HNSW graph.

    ``m`` links per node, ``ef_construction`` build beam, ``ef_search`` search beam
    (raise it for recall, lower it for speed).
    """

    def __init__(self, bits: int, m: int = 32, ef_construction: int = 80, ef_search: int = 64) -> None:
        self._native = _core.HnswIndex(bits, m, ef_construction, ef_search)

    @property
    def ef_search(self) -> int:
        return self._native.ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._native.ef_search = value

    @property
    def tombstones(self) -> int:
        """Removed entries still present as graph nodes (their codes are zeroed)."""
        return self._native.tombstones

    def compact(self, n_threads: int = 0) -> None:
        """Rebuild the graph from live codes, dropping tombstones."""
        self._native.compact(n_threads)


class IVFIndex(_IndexBase):
    """Inverted-file search: k-means lists over codes, prefix scan, full-code re-rank.

    ``nlist`` lists; a query scans the ``nprobe`` nearest, comparing the first
    ``prefix_bits`` of each code, and orders the best ``rerank`` by full codes.
    Train on a representative sample (at least ``nlist`` codes) before adding.
    ``prefix_bits`` defaults to ``min(256, bits)``.
    """

    def __init__(
        self, bits: int, nlist: int = 1024, prefix_bits: int | None = None, nprobe: int = 512, rerank: int = 256
    ) -> None:
        prefix = min(256, bits) if prefix_bits is None else prefix_bits
        _positive(nlist=nlist, prefix_bits=prefix, nprobe=nprobe, rerank=rerank)
        self._native = _core.IvfIndex(bits, nlist, prefix, nprobe, rerank)

    def train(self, codes: np.ndarray, n_threads: int = 0) -> None:
        """Learn the lists from codes (only while the index is empty)."""
        self._native.train(require_array(codes, "codes"), n_threads)

    @property
    def is_trained(self) -> bool:
        return self._native.is_trained

    @property
    def nlist(self) -> int:
        return self._native.nlist

    @property
    def nprobe(self) -> int:
        return self._native.nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        _positive(nprobe=value)
        self._native.nprobe = value

    @property
    def rerank(self) -> int:
        return self._native.rerank

    @rerank.setter
    def rerank(self, value: int) -> None:
        _positive(rerank=value)
        self._native.rerank = value

    @property
    def prefix_bits(self) -> int:
        """Code bits compared while scanning lists."""
        return self._native.prefix_bits

    def list_sizes(self) -> np.ndarray:
        """Entries per list (a very uneven spread means the lists fit the data poorly)."""
        return self._native.list_sizes()


Index = Union[FlatIndex, IVFIndex, HNSWIndex]
_WRAPPERS = {"flat": FlatIndex, "ivf": IVFIndex, "hnsw": HNSWIndex}


def _positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")


def load_index(data: bytes, mac_key: bytes) -> Index:
    """Authenticate then load bytes from :meth:`serialize`.

    Raises :class:`~fpmatch.errors.AuthenticationError` for tampered, truncated or
    foreign bytes; nothing is parsed before the tag verifies.
    """
    native = _core.deserialize_index(data, mac_key)
    cls = _WRAPPERS[native.kind]
    wrapper: Index = cls.__new__(cls)
    wrapper._native = native
    return wrapper
