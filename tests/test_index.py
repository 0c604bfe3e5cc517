"""FlatIndex, HNSWIndex and IVFIndex: exactness against brute force and FAISS, input
checks, removal, serialisation and concurrent use."""

from __future__ import annotations

import threading
import time

import faiss
import numpy as np
import pytest

import fpmatch
from fpmatch import (
    AuthenticationError,
    CancellableHash,
    DtypeError,
    FlatIndex,
    HashKey,
    HNSWIndex,
    IdConflictError,
    InvalidInputError,
    IVFIndex,
    load_index,
)

INT32_MAX = 2147483647
MAC_KEY = bytes(range(64, 96))
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)



# --------------------------------------------------------------------------- helpers


def hamming_matrix(queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(nq, n) Hamming distances, brute force."""
    out = np.empty((len(queries), len(codes)), dtype=np.int32)
    for i, q in enumerate(queries):
        out[i] = POPCOUNT[np.bitwise_xor(codes, q)].sum(axis=1)
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def structured_templates(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two noisy samples of n identities on the unit sphere: (enrolment, probes)."""
    rng = np.random.default_rng(seed)
    z = unit(rng.standard_normal((n, dim)))
    first = unit(0.8 * z + 0.6 * unit(rng.standard_normal((n, dim))))
    second = unit(0.8 * z + 0.6 * unit(rng.standard_normal((n, dim))))
    return first.astype(np.float32), second.astype(np.float32)


HNSW_PARAMS = {"m", "ef_construction", "ef_search"}
IVF_PARAMS = {"nlist", "prefix_bits", "nprobe", "rerank"}
# Matrix tests use a small IVF that probes a quarter of its lists, so that they
# exercise the approximate path; tests that need every list pass nprobe=IVF_NLIST.
IVF_NLIST = 32
IVF_NPROBE = 8


def make_index(kind: str, bits: int, train: np.ndarray | None = None, **kw):
    """An empty index of a kind. Keyword arguments meant for another kind are ignored;
    an IVF index is trained on ``train`` when given (other kinds ignore it)."""
    if kind == "flat":
        return FlatIndex(bits)
    if kind == "hnsw":
        return HNSWIndex(bits, **{k: v for k, v in kw.items() if k in HNSW_PARAMS})
    assert kind == "ivf", kind
    params = {"nlist": IVF_NLIST, "nprobe": IVF_NPROBE, **{k: v for k, v in kw.items() if k in IVF_PARAMS}}
    index = IVFIndex(bits, **params)
    if train is not None:
        index.train(train)
    return index


class Data:
    """Stored codes under scattered ids, and queries (exact copies, near copies, strangers)."""

    def __init__(self, codes: np.ndarray, queries: np.ndarray, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.codes = codes
        self.queries = queries
        self.bits = codes.shape[1] * 8
        self.ids = rng.permutation(np.arange(len(codes), dtype=np.int64) * 7 + 1000)
        self.pos = {int(i): p for p, i in enumerate(self.ids)}
        self.dist = hamming_matrix(queries, codes)

    def true_distance(self, q: int, label: int) -> int:
        return int(self.dist[q, self.pos[int(label)]])


def random_data(bits: int, seed: int) -> Data:
    rng = np.random.default_rng(seed)
    cs = bits // 8
    codes = rng.integers(0, 256, (3000, cs), dtype=np.uint8)
    codes[2000:2010] = codes[0]  # exact duplicates: ties at every distance from their neighbours
    near = codes[rng.choice(3000, 20, replace=False)].copy()
    flips = rng.integers(0, cs, (20, 3))
    for r in range(20):
        near[r, flips[r]] ^= np.uint8(1) << rng.integers(0, 8, 3).astype(np.uint8)
    queries = np.vstack([codes[:10], near, rng.integers(0, 256, (10, cs), dtype=np.uint8)])
    return Data(codes, queries, seed)


def hashed_data(n: int, bits: int, seed: int) -> Data:
    enrol, probes = structured_templates(n, 512, seed)
    scheme = CancellableHash(HashKey(bytes(range(32))), 512, bits)
    codes = scheme.protect(enrol)
    return Data(codes, np.vstack([codes[:10], scheme.protect(probes[10:60])]), seed)


@pytest.fixture(scope="module", params=["random256", "random1024", "hashed256"])
def data(request) -> Data:
    if request.param == "random256":
        return random_data(256, 1)
    if request.param == "random1024":
        return random_data(1024, 2)
    return hashed_data(3000, 256, 3)


@pytest.fixture(scope="module")
def hashed() -> Data:
    return hashed_data(2000, 256, 4)


def filled(kind: str, d: Data, **kw):
    index = make_index(kind, d.bits, train=d.codes, **kw)
    index.add(d.codes, d.ids)
    return index


KINDS = ["flat", "hnsw", "ivf"]


def ivf_layout(index: IVFIndex) -> tuple[list[int], dict[int, int]]:
    """(parameters, id -> list) of an IVF index, read from its serialised form:
    the kind-specific section holds nlist, prefix_bits, nprobe, rerank, trained,
    the centroids, then one list number per stored position."""
    blob = index.serialize(MAC_KEY)
    faiss_len = int.from_bytes(blob[24:32], "little")
    labels_start = 32 + faiss_len + 8
    count = int.from_bytes(blob[labels_start - 8 : labels_start], "little")
    labels = np.frombuffer(blob, "<i8", count, labels_start)
    extra_start = labels_start + 8 * count + 8
    params = np.frombuffer(blob, "<u8", 5, extra_start).tolist()
    nlist, trained = int(params[0]), bool(params[4])
    lists_start = extra_start + 40 + (nlist * index.code_size if trained else 0)
    lists = np.frombuffer(blob, "<u8", count, lists_start)
    assert lists_start + 8 * count == len(blob) - 32
    return params, dict(zip(labels.tolist(), lists.tolist()))


# --------------------------------------------------------------------------- exact search


@pytest.mark.parametrize("k", [1, 10, 64])
def test_flat_search_equals_brute_force(data: Data, k: int) -> None:
    index = filled("flat", data)
    distances, labels = index.search(data.queries, k)
    assert distances.shape == labels.shape == (len(data.queries), k)
    assert distances.dtype == np.int32 and labels.dtype == np.int64
    np.testing.assert_array_equal(distances, np.sort(data.dist, axis=1)[:, :k])
    for q in range(len(data.queries)):
        assert len(set(labels[q].tolist())) == k
        assert [data.true_distance(q, l) for l in labels[q]] == distances[q].tolist()


def test_flat_search_equals_faiss(data: Data) -> None:
    index = filled("flat", data)
    reference = faiss.IndexBinaryFlat(data.bits)
    reference.add(data.codes)
    for k in (1, 5, 50):
        ref_d, ref_i = reference.search(data.queries, k)
        distances, labels = index.search(data.queries, k)
        np.testing.assert_array_equal(distances, ref_d)
        # Same multiset of stored codes at each distance: compare through positions.
        ours = np.vectorize(data.pos.get)(labels)
        np.testing.assert_array_equal(np.take_along_axis(data.dist, ours, 1), ref_d)
        np.testing.assert_array_equal(np.take_along_axis(data.dist, ref_i, 1), ref_d)


@pytest.mark.parametrize("k", [1, 10, 64])
def test_ivf_probing_every_list_equals_brute_force(data: Data, k: int) -> None:
    # Every list probed and every candidate re-ranked by its full code: the lists,
    # the prefix scan and the re-rank may then lose nothing, on any of the data sets
    # (random1024 has prefixes of a quarter of the code).
    index = filled("ivf", data, nprobe=IVF_NLIST, rerank=len(data.codes))
    assert index.nlist == IVF_NLIST and index.nprobe == IVF_NLIST
    distances, labels = index.search(data.queries, k)
    assert distances.shape == labels.shape == (len(data.queries), k)
    assert distances.dtype == np.int32 and labels.dtype == np.int64
    np.testing.assert_array_equal(distances, np.sort(data.dist, axis=1)[:, :k])
    for q in range(len(data.queries)):
        assert len(set(labels[q].tolist())) == k
        assert [data.true_distance(q, l) for l in labels[q]] == distances[q].tolist()
    # More probes than lists means every list, the same as nprobe = nlist.
    index.nprobe = 10 * IVF_NLIST
    again = index.search(data.queries, k)
    np.testing.assert_array_equal(again.distances, distances)
    np.testing.assert_array_equal(again.labels, labels)


@pytest.mark.parametrize("k", [1, 10, 64])
def test_ivf_whole_code_prefix_needs_no_wider_rerank(data: Data, k: int) -> None:
    # With the prefix as wide as the code the scan ranks by true distance, so a
    # shortlist of only k (rerank=1 < k) over every list is already exact.
    index = filled("ivf", data, prefix_bits=data.bits, nprobe=IVF_NLIST, rerank=1)
    distances, labels = index.search(data.queries, k)
    np.testing.assert_array_equal(distances, np.sort(data.dist, axis=1)[:, :k])
    for q in range(len(data.queries)):
        assert len(set(labels[q].tolist())) == k
        assert [data.true_distance(q, l) for l in labels[q]] == distances[q].tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_search_labels_have_their_distances(kind: str, data: Data) -> None:
    index = filled(kind, data, ef_search=128)
    distances, labels = index.search(data.queries, 10)
    for q in range(len(data.queries)):
        assert -1 not in labels[q]
        assert len(set(labels[q].tolist())) == 10
        assert [data.true_distance(q, l) for l in labels[q]] == distances[q].tolist()
    # Exact copies of stored codes are found at distance 0 on both kinds.
    for q in range(10):
        assert 0 in distances[q].tolist()
        assert int(data.ids[q]) in labels[q].tolist() or data.dist[q].tolist().count(0) > 10


def test_hnsw_results_in_ascending_distance(hashed: Data) -> None:
    index = filled("hnsw", hashed)
    distances, _ = index.search(hashed.queries, 10)
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_flat_results_in_ascending_distance(hashed: Data) -> None:
    distances, _ = filled("flat", hashed).search(hashed.queries, 10)
    assert np.all(np.diff(distances, axis=1) >= 0)


@pytest.mark.parametrize("nprobe, rerank", [(1, 1), (1, 256), (8, 10), (IVF_NLIST, 256)])
def test_ivf_results_in_ascending_distance(hashed: Data, nprobe: int, rerank: int) -> None:
    index = filled("ivf", hashed, nprobe=nprobe, rerank=rerank, prefix_bits=64)
    distances, labels = index.search(hashed.queries, 10)
    assert np.all(np.diff(distances, axis=1) >= 0)
    for q in range(len(hashed.queries)):
        live = labels[q] >= 0
        # Padding only ever follows real results.
        assert not np.any(live[1:] & ~live[:-1])
        assert (distances[q][~live] == INT32_MAX).all()
        assert len(set(labels[q][live].tolist())) == int(live.sum())
        assert [hashed.true_distance(q, l) for l in labels[q][live]] == distances[q][live].tolist()
    # A code is stored in the list nearest to it, which a query equal to it probes
    # first: with one probe it is still found, at distance 0.
    own = index.search(hashed.codes[:200], 1)
    np.testing.assert_array_equal(own.distances[:, 0], 0)
    np.testing.assert_array_equal(own.labels[:, 0], hashed.ids[:200])


@pytest.mark.parametrize("kind", KINDS)
def test_hnsw_and_flat_find_same_neighbour_sets(kind: str, hashed: Data) -> None:
    # Beyond the mate, a probe's five nearest are strangers near bits/2, spread over
    # all IVF lists: IVF probes every list here (partial probing is measured by
    # test_ivf_recall_at_1_on_hashed_faces); its 256-bit prefix is the whole code.
    index = filled(kind, hashed, ef_search=200, nprobe=IVF_NLIST)
    distances, labels = index.search(hashed.queries, 5)
    truth = np.sort(hashed.dist, axis=1)[:, :5]
    agree = np.mean([sorted(d.tolist()) == t.tolist() for d, t in zip(distances, truth)])
    assert agree >= 0.95


# --------------------------------------------------------------------------- empty and padding


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bits", [256, 1024])
def test_empty_index(kind: str, bits: int) -> None:
    index = make_index(kind, bits)
    assert len(index) == 0 and index.ids().tolist() == []
    assert index.bits == bits and index.code_size == bits // 8
    queries = np.random.default_rng(0).integers(0, 256, (3, bits // 8), dtype=np.uint8)
    distances, labels = index.search(queries, 5)
    assert distances.shape == (3, 5)
    assert (labels == -1).all() and (distances == INT32_MAX).all()
    found = index.range_search(queries, bits)
    assert found.lims.tolist() == [0, 0, 0, 0]
    assert len(found.labels) == 0 and len(found.distances) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_k_larger_than_ntotal_pads(kind: str, hashed: Data) -> None:
    index = make_index(kind, hashed.bits, train=hashed.codes, nprobe=IVF_NLIST)
    index.add(hashed.codes[:3], hashed.ids[:3])
    distances, labels = index.search(hashed.queries[:5], 8)
    assert (labels[:, 3:] == -1).all() and (distances[:, 3:] == INT32_MAX).all()
    for q in range(5):
        assert sorted(labels[q, :3].tolist()) == sorted(hashed.ids[:3].tolist())
        assert sorted(distances[q, :3].tolist()) == sorted(hashed.dist[q, :3].tolist())


@pytest.mark.parametrize("kind", KINDS)
def test_k_zero_and_bad_radius_rejected(kind: str, hashed: Data) -> None:
    index = filled(kind, hashed)
    with pytest.raises(InvalidInputError):
        index.search(hashed.queries, 0)
    with pytest.raises(InvalidInputError):
        index.range_search(hashed.queries, -1)


# --------------------------------------------------------------------------- batching and threads


@pytest.mark.parametrize("kind", KINDS)
def test_batch_equals_one_at_a_time_and_threads_agree(kind: str, data: Data) -> None:
    index = filled(kind, data)
    batch = index.search(data.queries, 7)
    for q in range(len(data.queries)):
        single = index.search(data.queries[q : q + 1], 7)
        np.testing.assert_array_equal(single.distances[0], batch.distances[q])
        np.testing.assert_array_equal(single.labels[0], batch.labels[q])
    for n_threads in (1, 2, 3):
        again = index.search(data.queries, 7, n_threads=n_threads)
        np.testing.assert_array_equal(again.distances, batch.distances)
        np.testing.assert_array_equal(again.labels, batch.labels)
    ranged = [index.range_search(data.queries, data.bits // 2 - 10, n_threads=t) for t in (1, 2)]
    for a, b in zip(ranged[0], ranged[1]):
        np.testing.assert_array_equal(a, b)


def test_hnsw_built_single_threaded_finds_same_neighbours(hashed: Data) -> None:
    one = HNSWIndex(hashed.bits)
    one.add(hashed.codes, hashed.ids, n_threads=1)
    two = filled("hnsw", hashed)
    d1, _ = one.search(hashed.queries, 1)
    d2, _ = two.search(hashed.queries, 1)
    assert np.mean(d1[:, 0] == d2[:, 0]) >= 0.95


def test_flat_single_query_on_large_index_equals_brute_force() -> None:
    rng = np.random.default_rng(21)
    n, cs = 20000, 128
    codes = rng.integers(0, 256, (n, cs), dtype=np.uint8)
    queries = rng.integers(0, 256, (6, cs), dtype=np.uint8)
    # Plant exact and near copies of query 0 in every part of a split scan, so that the
    # partial top-k lists must be merged correctly, ties included.
    planted = [5, 4999, 5001, 9999, 10001, 14999, 15001, 19999]
    for j, p in enumerate(planted):
        codes[p] = queries[0]
        if j % 2:
            codes[p, j] ^= 0x01
    ids = np.arange(n, dtype=np.int64)[::-1].copy()  # labels differ from positions
    index = FlatIndex(cs * 8)
    index.add(codes, ids)
    dist = hamming_matrix(queries, codes)
    for n_threads in (0, 1, 2, 3, 4):
        for q in range(len(queries)):
            for k in (1, 10, 25):
                d, l = index.search(queries[q : q + 1], k, n_threads=n_threads)
                np.testing.assert_array_equal(d[0], np.sort(dist[q])[:k])
                np.testing.assert_array_equal(dist[q, n - 1 - l[0]], d[0])
        d, l = index.search(queries[:1], 8, n_threads=n_threads)
        assert sorted(l[0].tolist()) == sorted(n - 1 - p for p in planted)
        assert d[0].tolist() == [0] * 4 + [1] * 4


# --------------------------------------------------------------------------- input layout and types


@pytest.mark.parametrize("kind", KINDS)
def test_row_strided_views_accepted(kind: str, hashed: Data) -> None:
    cs = hashed.codes.shape[1]
    wide = np.full((len(hashed.codes), cs + 9), 0xAB, dtype=np.uint8)
    wide[:, 1 : 1 + cs] = hashed.codes
    view = wide[:, 1 : 1 + cs]
    assert not view.flags.c_contiguous
    index = make_index(kind, hashed.bits, train=view)  # IVF trains on the strided view too
    index.add(view, hashed.ids)
    if kind == "ivf":
        trained_on_copy = make_index(kind, hashed.bits, train=hashed.codes.copy())
        trained_on_copy.add(hashed.codes, hashed.ids)
        assert trained_on_copy.serialize(MAC_KEY) == index.serialize(MAC_KEY)
    np.testing.assert_array_equal(index.reconstruct(hashed.ids), hashed.codes)
    reference = filled("flat", hashed)
    qwide = np.zeros((len(hashed.queries), cs + 3), dtype=np.uint8)
    qwide[:, 2 : 2 + cs] = hashed.queries
    qview = qwide[:, 2 : 2 + cs]
    got = index.search(qview, 5)
    want = index.search(np.ascontiguousarray(qview), 5)
    np.testing.assert_array_equal(got.distances, want.distances)
    np.testing.assert_array_equal(got.labels, want.labels)
    if kind == "flat":
        exact = reference.search(hashed.queries, 5)
        np.testing.assert_array_equal(got.distances, exact.distances)
    ranged = index.range_search(qview, 100)
    exact_range = reference.range_search(hashed.queries, 100)
    np.testing.assert_array_equal(ranged.lims, exact_range.lims)
    # Every other row (row stride of two codes).
    every_other = index.search(hashed.queries[::2], 3)
    copied = index.search(hashed.queries[::2].copy(), 3)
    np.testing.assert_array_equal(every_other.distances, copied.distances)
    np.testing.assert_array_equal(every_other.labels, copied.labels)


@pytest.mark.parametrize("kind", KINDS)
def test_inner_strided_and_fortran_inputs_rejected(kind: str, hashed: Data) -> None:
    index = make_index(kind, hashed.bits, train=hashed.codes)
    cs = hashed.codes.shape[1]
    doubled = np.repeat(hashed.codes[:50], 2, axis=1)
    fortran = np.asfortranarray(hashed.codes[:50])
    for bad in (doubled[:, ::2], fortran, hashed.codes[:50][::-1], hashed.codes[:50, ::-1]):
        assert bad.shape == (50, cs)
        with pytest.raises(InvalidInputError):
            index.add(bad, hashed.ids[:50])
        assert len(index) == 0
        if kind == "ivf":
            with pytest.raises(InvalidInputError):
                make_index(kind, hashed.bits, nlist=16).train(bad)
    index.add(hashed.codes[:50], hashed.ids[:50])
    for bad in (doubled[:, ::2], fortran):
        with pytest.raises(InvalidInputError):
            index.search(bad, 3)
        with pytest.raises(InvalidInputError):
            index.range_search(bad, 10)
    with pytest.raises(InvalidInputError):
        index.add(hashed.codes[50:52], np.array([1, 2, 3, 4], dtype=np.int64)[::2])


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_dtypes_rejected(kind: str, hashed: Data) -> None:
    index = make_index(kind, hashed.bits, train=hashed.codes)
    codes, ids = hashed.codes[:20], hashed.ids[:20]
    for bad in (codes.astype(np.int8), codes.astype(np.float32), codes.astype(np.uint16), codes.astype(bool)):
        with pytest.raises(DtypeError) as info:
            index.add(bad, ids)
        assert isinstance(info.value, TypeError)
        if kind == "ivf":
            with pytest.raises(DtypeError):
                make_index(kind, hashed.bits, nlist=16).train(bad)
    if kind == "ivf":
        with pytest.raises(TypeError):
            make_index(kind, hashed.bits, nlist=16).train(codes.tolist())
    for bad_ids in (ids.astype(np.int32), ids.astype(np.float64), ids.astype(np.uint64)):
        with pytest.raises(DtypeError):
            index.add(codes, bad_ids)
    with pytest.raises(TypeError):  # not an array at all: rejected, never converted
        index.add(codes.tolist(), ids)
    assert len(index) == 0
    index.add(codes, ids)
    with pytest.raises(DtypeError):
        index.search(codes.astype(np.int8), 3)
    with pytest.raises(DtypeError):
        index.range_search(codes.astype(np.float32), 3)
    with pytest.raises(DtypeError):
        index.remove(ids.astype(np.int32))
    with pytest.raises(DtypeError):
        index.reconstruct(ids.astype(np.int32))
    assert len(index) == 20


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_shapes_rejected(kind: str, hashed: Data) -> None:
    index = make_index(kind, hashed.bits, train=hashed.codes)
    codes, ids = hashed.codes[:20], hashed.ids[:20]
    cases = [
        (codes[:, :-1], ids),  # too narrow
        (np.hstack([codes, codes[:, :1]]), ids),  # too wide
        (codes[0], ids[:1]),  # 1-D
        (codes[None], ids),  # 3-D
        (codes, ids[:19]),  # too few ids
        (codes, ids.reshape(4, 5)),  # 2-D ids
    ]
    for bad_codes, bad_ids in cases:
        with pytest.raises(InvalidInputError):
            index.add(bad_codes, bad_ids)
    assert len(index) == 0
    index.add(codes, ids)
    for bad in (codes[:, :-1], codes[0], codes[None]):
        with pytest.raises(InvalidInputError):
            index.search(bad, 2)
    with pytest.raises(InvalidInputError):
        index.remove(ids.reshape(4, 5))
    if kind == "ivf":
        fresh = make_index(kind, hashed.bits, nlist=16)
        for bad in (codes[:, :-1], np.hstack([codes, codes[:, :1]]), codes[0], codes[None]):
            with pytest.raises(InvalidInputError):
                fresh.train(bad)
        assert not fresh.is_trained


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "new_ids",
    [[900001, 900002, -1], [900001, 900001], [900001, "existing"], [-5]],
    ids=["negative", "duplicate-in-batch", "already-present", "only-negative"],
)
def test_id_conflicts_are_all_or_nothing(kind: str, new_ids: list, hashed: Data) -> None:
    index = make_index(kind, hashed.bits, train=hashed.codes)
    index.add(hashed.codes[:100], hashed.ids[:100])
    before_bytes = index.serialize(MAC_KEY)
    before = index.search(hashed.queries, 5)
    ids = np.array([int(hashed.ids[50]) if i == "existing" else i for i in new_ids], dtype=np.int64)
    with pytest.raises(IdConflictError) as info:
        index.add(hashed.codes[100 : 100 + len(ids)], ids)
    assert isinstance(info.value, ValueError)
    assert len(index) == 100
    assert 900001 not in index and 900002 not in index
    assert sorted(index.ids().tolist()) == sorted(hashed.ids[:100].tolist())
    assert index.serialize(MAC_KEY) == before_bytes  # nothing was stored, not even graph nodes
    after = index.search(hashed.queries, 5)
    np.testing.assert_array_equal(after.labels, before.labels)
    np.testing.assert_array_equal(after.distances, before.distances)


@pytest.mark.parametrize("kind", KINDS)
def test_reconstruct(kind: str, hashed: Data) -> None:
    index = filled(kind, hashed)
    pick = hashed.ids[[5, 0, 1999, 5]]
    np.testing.assert_array_equal(index.reconstruct(pick), hashed.codes[[5, 0, 1999, 5]])
    with pytest.raises(IdConflictError):
        index.reconstruct(np.array([5], dtype=np.int64))  # never stored (ids are 1000 + 7i)
    assert index.reconstruct(np.array([], dtype=np.int64)).shape == (0, hashed.codes.shape[1])


@pytest.mark.parametrize("kind", KINDS)
def test_empty_query_batch(kind: str, hashed: Data) -> None:
    index = filled(kind, hashed)
    empty = np.empty((0, hashed.codes.shape[1]), dtype=np.uint8)
    distances, labels = index.search(empty, 3)
    assert distances.shape == labels.shape == (0, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_sliced_empty_batches(kind: str, hashed: Data) -> None:
    index = filled(kind, hashed)
    distances, labels = index.search(hashed.queries[:0], 3)
    assert distances.shape == labels.shape == (0, 3)
    index.add(hashed.codes[:0], hashed.ids[:0])
    assert len(index) == len(hashed.codes)
    assert index.range_search(hashed.queries[:0], 5).lims.tolist() == [0]


# --------------------------------------------------------------------------- range search


def _range_sets(found, nq: int) -> list[set]:
    out = []
    for q in range(nq):
        lo, hi = int(found.lims[q]), int(found.lims[q + 1])
        pairs = set(zip(found.labels[lo:hi].tolist(), found.distances[lo:hi].tolist()))
        assert len(pairs) == hi - lo  # no label twice
        out.append(pairs)
    return out


def _brute_range(d: Data, radius: int, live: np.ndarray | None = None) -> list[set]:
    out = []
    for q in range(len(d.queries)):
        hit = np.flatnonzero(d.dist[q] <= radius)
        pairs = {(int(d.ids[p]), int(d.dist[q, p])) for p in hit}
        if live is not None:
            pairs = {pr for pr in pairs if pr[0] in live}
        out.append(pairs)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_range_search_equals_brute_force(kind: str, data: Data) -> None:
    index = filled(kind, data)
    half = data.bits // 2
    for radius in (0, 3, half // 2, half - 20, half - 8, half, data.bits):
        found = index.range_search(data.queries, radius)
        assert found.lims.dtype == np.int64 and found.lims[0] == 0
        assert len(found.lims) == len(data.queries) + 1
        assert np.all(found.distances <= radius)
        assert _range_sets(found, len(data.queries)) == _brute_range(data, radius)
    assert int(index.range_search(data.queries, data.bits).lims[-1]) == len(data.queries) * len(data.codes)


# --------------------------------------------------------------------------- removal


@pytest.mark.parametrize("kind", KINDS)
def test_removal(kind: str, hashed: Data) -> None:
    index = filled(kind, hashed)
    removed = hashed.ids[::3].copy()
    assert index.remove(removed) == len(removed)
    live = set(hashed.ids.tolist()) - set(removed.tolist())
    assert len(index) == len(live)
    assert set(index.ids().tolist()) == live
    for r in removed[:20]:
        assert int(r) not in index
    assert int(hashed.ids[1]) in index
    if kind == "hnsw":
        assert index.tombstones == len(removed)

    # Query with the removed codes themselves: they must not come back.
    queries = np.vstack([hashed.codes[::3][:40], hashed.queries])
    distances, labels = index.search(queries, 10)
    assert not set(labels.ravel().tolist()) & set(removed.tolist())
    assert (labels >= 0).all(), "k live results exist, so no slot may be empty"
    for q in range(len(queries)):
        codes = index.reconstruct(labels[q])
        np.testing.assert_array_equal(hamming_matrix(queries[q : q + 1], codes)[0], distances[q])
    found = index.range_search(queries, hashed.bits)
    for q in range(len(queries)):
        assert set(found.labels[found.lims[q] : found.lims[q + 1]].tolist()) == live
    assert _range_sets(index.range_search(hashed.queries, 90), len(hashed.queries)) == _brute_range(
        hashed, 90, live
    )

    # Removing absent ids counts nothing and changes nothing.
    assert index.remove(removed[:5]) == 0
    assert index.remove(np.array([123456789], dtype=np.int64)) == 0
    assert index.remove(np.array([], dtype=np.int64)) == 0
    assert index.remove(np.array([int(hashed.ids[1]), 123456789, int(hashed.ids[1])], dtype=np.int64)) == 1
    assert len(index) == len(live) - 1

    # Re-adding a removed id works and stores the new code.
    new_code = hashed.codes[2:3] ^ np.uint8(0xFF)
    index.add(new_code, removed[:1])
    assert int(removed[0]) in index
    np.testing.assert_array_equal(index.reconstruct(removed[:1]), new_code)
    hit = index.range_search(new_code, 0)
    assert hit.labels.tolist() == [int(removed[0])] and hit.distances.tolist() == [0]
    if kind in ("flat", "ivf"):  # IVF stores it in the list that its own query probes first
        d, l = index.search(new_code, 1)
        assert l[0, 0] == removed[0] and d[0, 0] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_remove_everything(kind: str, hashed: Data) -> None:
    index = filled(kind, hashed, nprobe=IVF_NLIST)
    assert index.remove(hashed.ids) == len(hashed.ids)
    assert len(index) == 0 and index.ids().tolist() == []
    distances, labels = index.search(hashed.queries[:4], 3)
    assert (labels == -1).all() and (distances == INT32_MAX).all()
    assert index.range_search(hashed.queries[:4], hashed.bits).lims.tolist() == [0] * 5
    index.add(hashed.codes[:10], hashed.ids[:10])
    assert sorted(index.search(hashed.codes[:1], 10).labels[0].tolist()) == sorted(hashed.ids[:10].tolist())


def test_hnsw_many_tombstones_still_give_k_live_results(hashed: Data) -> None:
    index = filled("hnsw", hashed)
    keep = hashed.ids[::10]
    gone = np.setdiff1d(hashed.ids, keep)
    index.remove(gone)
    assert index.tombstones == len(gone) and len(index) == len(keep)
    distances, labels = index.search(hashed.queries, 10)
    assert (labels >= 0).all()
    assert set(labels.ravel().tolist()) <= set(keep.tolist())
    for q in range(len(hashed.queries)):
        assert len(set(labels[q].tolist())) == 10
        assert [hashed.true_distance(q, l) for l in labels[q]] == distances[q].tolist()


def test_hnsw_one_tombstone_does_not_displace_the_nearest(hashed: Data) -> None:
    index = filled("hnsw", hashed)
    index.remove(hashed.ids[-1:])  # one unrelated removal
    distances, labels = index.search(hashed.codes[:50], 1)
    assert np.mean(labels[:, 0] == hashed.ids[:50]) >= 0.98
    assert np.mean(distances[:, 0] == 0) >= 0.98


def test_hnsw_compact(hashed: Data) -> None:
    index = filled("hnsw", hashed)
    removed = hashed.ids[1::2].copy()
    index.remove(removed)
    live_ids = sorted(index.ids().tolist())
    ranged_before = _range_sets(index.range_search(hashed.queries, 95), len(hashed.queries))
    index.compact()
    assert index.tombstones == 0
    assert sorted(index.ids().tolist()) == live_ids and len(index) == len(live_ids)
    for r in removed[:10]:
        assert int(r) not in index
    assert _range_sets(index.range_search(hashed.queries, 95), len(hashed.queries)) == ranged_before
    np.testing.assert_array_equal(index.reconstruct(hashed.ids[::2].copy()), hashed.codes[::2])
    # Without tombstones k = 1 needs no widening: every live code finds itself.
    distances, labels = index.search(hashed.codes[::2][:200], 1)
    assert np.mean(labels[:, 0] == hashed.ids[::2][:200]) >= 0.99
    assert not set(labels.ravel().tolist()) & set(removed.tolist())
    # Compacting an index without tombstones is a no-op; the index stays usable.
    blob = index.serialize(MAC_KEY)
    index.compact()
    assert index.serialize(MAC_KEY) == blob
    index.add(hashed.codes[1:2], removed[:1])
    assert int(removed[0]) in index


def test_hnsw_recall_at_1_on_hashed_faces() -> None:
    enrol, probes = structured_templates(5000, 512, seed=31)
    scheme = CancellableHash(HashKey(bytes(range(32))), 512, 256)
    gallery, queries = scheme.protect(enrol), scheme.protect(probes)
    ids = np.arange(5000, dtype=np.int64)
    flat, hnsw = FlatIndex(256), HNSWIndex(256)
    flat.add(gallery, ids)
    hnsw.add(gallery, ids)
    fd, fl = flat.search(queries, 1)
    hd, hl = hnsw.search(queries, 1)
    assert np.mean(fl[:, 0] == ids) >= 0.99  # the data is identifiable at all
    recall = np.mean(hd[:, 0] == fd[:, 0])
    assert recall >= 0.95
    assert np.mean(hl[:, 0] == ids) >= 0.95
    assert hnsw.ef_search == 64
    hnsw.ef_search = 4
    assert hnsw.ef_search == 4
    with pytest.raises(InvalidInputError):
        hnsw.ef_search = 0


# --------------------------------------------------------------------------- IVF: parameters, training, removal


def test_ivf_parameters_validated() -> None:
    bad = [
        {"nlist": 0},
        {"nlist": 2**20 + 1},
        {"prefix_bits": 0},
        {"prefix_bits": 32},
        {"prefix_bits": 100},
        {"prefix_bits": 320},  # wider than the code
        {"nprobe": 0},
        {"rerank": 0},
    ]
    for kw in bad:
        with pytest.raises(InvalidInputError):
            IVFIndex(256, **kw)
    with pytest.raises(InvalidInputError):
        IVFIndex(100)
    index = IVFIndex(1024, nlist=16, prefix_bits=128, nprobe=3, rerank=7)
    assert (index.bits, index.code_size, index.nlist, index.nprobe, index.rerank) == (1024, 128, 16, 3, 7)
    assert index._native.prefix_bits == 128 and not index.is_trained and len(index) == 0
    default = IVFIndex(256)
    assert (default.nlist, default.nprobe, default.rerank, default._native.prefix_bits) == (1024, 512, 256, 256)
    assert IVFIndex(64, prefix_bits=64).code_size == 8


def test_ivf_nprobe_and_rerank_setters(hashed: Data) -> None:
    index = filled("ivf", hashed, prefix_bits=64)
    before = index.search(hashed.queries, 5)
    for name in ("nprobe", "rerank"):
        with pytest.raises(InvalidInputError):
            setattr(index, name, 0)
    assert index.nprobe == IVF_NPROBE and index.rerank == 256  # a rejected value changes nothing
    after = index.search(hashed.queries, 5)
    np.testing.assert_array_equal(after.distances, before.distances)
    np.testing.assert_array_equal(after.labels, before.labels)
    # The settings take effect: every list and a full re-rank give brute force...
    index.nprobe, index.rerank = IVF_NLIST, len(hashed.codes)
    assert (index.nprobe, index.rerank) == (IVF_NLIST, len(hashed.codes))
    np.testing.assert_array_equal(index.search(hashed.queries, 5).distances, np.sort(hashed.dist, axis=1)[:, :5])
    # ...and one list with a one-entry shortlist over 64-bit prefixes finds less.
    index.nprobe, index.rerank = 1, 1
    narrow = index.search(hashed.queries, 5)
    assert (narrow.distances >= np.sort(hashed.dist, axis=1)[:, :5]).all()
    assert (narrow.distances > np.sort(hashed.dist, axis=1)[:, :5]).any()
    # k larger than rerank widens the shortlist to k.
    assert (index.search(hashed.queries, 5).labels >= 0).all()
    index.nprobe = 7
    assert index.nprobe == 7 and index.rerank == 1


def test_ivf_negative_settings_raise_invalid_input() -> None:
    index = IVFIndex(256, nlist=16)
    with pytest.raises(InvalidInputError):
        index.nprobe = -1
    with pytest.raises(InvalidInputError):
        index.rerank = -1
    with pytest.raises(InvalidInputError):
        IVFIndex(256, nprobe=-1)


def test_ivf_add_before_training_raises(hashed: Data) -> None:
    index = IVFIndex(hashed.bits, nlist=16)
    assert not index.is_trained
    with pytest.raises(InvalidInputError):
        index.add(hashed.codes[:100], hashed.ids[:100])
    assert len(index) == 0 and index.ids().tolist() == [] and int(hashed.ids[0]) not in index
    empty_blob = IVFIndex(hashed.bits, nlist=16).serialize(MAC_KEY)
    assert index.serialize(MAC_KEY) == empty_blob  # nothing was stored
    distances, labels = index.search(hashed.queries[:3], 4)
    assert (labels == -1).all() and (distances == INT32_MAX).all()
    assert index.range_search(hashed.queries[:3], hashed.bits).lims.tolist() == [0] * 4
    index.train(hashed.codes)
    assert index.is_trained
    index.add(hashed.codes[:100], hashed.ids[:100])
    assert len(index) == 100 and sorted(index.ids().tolist()) == sorted(hashed.ids[:100].tolist())


def test_ivf_training_needs_nlist_codes_and_an_empty_index(hashed: Data) -> None:
    index = IVFIndex(hashed.bits, nlist=64, nprobe=64, rerank=len(hashed.codes))
    for n in (0, 1, 63):
        with pytest.raises(InvalidInputError):
            index.train(hashed.codes[:n])
        assert not index.is_trained
    with pytest.raises(InvalidInputError):
        index.add(hashed.codes[:10], hashed.ids[:10])
    index.train(hashed.codes[:64])  # exactly nlist codes suffice
    assert index.is_trained
    index.add(hashed.codes[:500], hashed.ids[:500])
    blob = index.serialize(MAC_KEY)
    for codes in (hashed.codes, hashed.codes[:64], hashed.codes[:10]):
        with pytest.raises(InvalidInputError):
            index.train(codes)
    assert index.serialize(MAC_KEY) == blob  # the lists were not relearnt under the stored codes
    own = index.search(hashed.codes[:500], 1)
    assert (own.distances[:, 0] == 0).all()
    np.testing.assert_array_equal(own.labels[:, 0], hashed.ids[:500])
    # Emptied, the index is untouched by a failed train and may be trained afresh.
    assert index.remove(hashed.ids[:500]) == 500
    with pytest.raises(InvalidInputError):
        index.train(hashed.codes[:63])
    assert index.is_trained
    index.train(hashed.codes[500:])
    index.add(hashed.codes[500:600], hashed.ids[500:600])
    assert index.serialize(MAC_KEY) != blob
    own = index.search(hashed.codes[500:600], 1)
    assert (own.distances[:, 0] == 0).all()
    np.testing.assert_array_equal(own.labels[:, 0], hashed.ids[500:600])


def test_ivf_training_and_adding_do_not_depend_on_threads(hashed: Data) -> None:
    blobs, results = set(), []
    for n_threads in (1, 2, 3):
        index = IVFIndex(hashed.bits, nlist=IVF_NLIST, nprobe=IVF_NPROBE)
        index.train(hashed.codes, n_threads=n_threads)
        index.add(hashed.codes, hashed.ids, n_threads=n_threads)
        blobs.add(index.serialize(MAC_KEY))
        results.append(index.search(hashed.queries, 5))
    assert len(blobs) == 1
    for other in results[1:]:
        np.testing.assert_array_equal(other.labels, results[0].labels)
    # Adding in two batches stores exactly what one batch does.
    index = IVFIndex(hashed.bits, nlist=IVF_NLIST, nprobe=IVF_NPROBE)
    index.train(hashed.codes)
    index.add(hashed.codes[:1000], hashed.ids[:1000])
    index.add(hashed.codes[1000:], hashed.ids[1000:])
    assert index.serialize(MAC_KEY) in blobs


@pytest.mark.parametrize("bits", [256, 1024])
def test_ivf_recall_at_1_on_hashed_faces(bits: int) -> None:
    n, nlist = 5000, 64
    enrol, probes = structured_templates(n, 512, seed=31)
    scheme = CancellableHash(HashKey(bytes(range(32))), 512, bits)
    gallery, queries = scheme.protect(enrol), scheme.protect(probes)
    ids = np.arange(n, dtype=np.int64)
    flat = FlatIndex(bits)
    flat.add(gallery, ids)
    ivf = IVFIndex(bits, nlist=nlist, nprobe=nlist // 2)  # 256-bit prefixes: a quarter of 1024-bit codes
    ivf.train(gallery)
    ivf.add(gallery, ids)
    fd, fl = flat.search(queries, 1)
    assert np.mean(fl[:, 0] == ids) >= 0.99  # the data is identifiable at all
    d, l = ivf.search(queries, 1)
    recall = np.mean(d[:, 0] == fd[:, 0])
    truth = hamming_matrix(queries[:200], gallery)
    np.testing.assert_array_equal(truth[np.arange(200), l[:200, 0]], d[:200, 0])  # true distances
    # As good as FAISS's own binary inverted file at the same nlist and nprobe.
    reference = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, nlist)
    reference.train(gallery)
    reference.add(gallery)
    reference.nprobe = nlist // 2
    rd, _ = reference.search(queries, 1)
    assert recall >= np.mean(rd[:, 0] == fd[:, 0]) - 0.02
    if bits == 1024:  # the default code width
        assert recall >= 0.95
        assert np.mean(l[:, 0] == ids) >= 0.95
    else:  # these identities have no cluster structure: half the lists of short codes miss ~6% of mates
        assert recall >= 0.9
        ivf.nprobe = 3 * nlist // 4
        assert np.mean(ivf.search(queries, 1).distances[:, 0] == fd[:, 0]) >= 0.95
        ivf.nprobe = nlist // 2
    # Fewer probes find less; every list with a full re-rank is exact.
    ivf.nprobe = 1
    d1, _ = ivf.search(queries, 1)
    assert (d1[:, 0] >= fd[:, 0]).all() and np.mean(d1[:, 0] == fd[:, 0]) < recall
    ivf.nprobe, ivf.rerank = nlist, n
    np.testing.assert_array_equal(ivf.search(queries[:500], 3).distances, flat.search(queries[:500], 3).distances)


def test_ivf_removal_keeps_every_other_code_findable(hashed: Data) -> None:
    n = len(hashed.codes)
    assert len(np.unique(hashed.codes, axis=0)) == n  # so that each code's nearest is itself alone
    index = filled("ivf", hashed, nlist=16, nprobe=16, rerank=n)
    _, list_of = ivf_layout(index)
    members: dict[int, list[int]] = {}
    for id_, lst in list_of.items():
        members.setdefault(lst, []).append(id_)
    by_size = sorted(members, key=lambda lst: -len(members[lst]))
    crowded, emptied = members[by_size[0]], members[by_size[1]]
    edges = {int(i) for i in hashed.ids[[0, -1, -2, -3]]}  # removed in the first and last rounds
    crowded.sort(key=lambda i: i in edges)  # crowded[0], the one kept, is not among them
    assert len(crowded) > 20 and len(emptied) > 5
    last_stored = int(hashed.ids[-1])
    keep = {crowded[0], int(hashed.ids[-4])}  # must survive every round below
    rounds = [
        np.array([last_stored, int(hashed.ids[0])], dtype=np.int64),  # the last-stored and the first
        np.array(crowded[1:], dtype=np.int64),  # all but one of the biggest list, in storage order
        np.array(emptied[::-1] + [i for i in hashed.ids[5::7].tolist() if i not in keep], dtype=np.int64),
        np.array([int(hashed.ids[-2]), int(hashed.ids[-3])], dtype=np.int64),  # the new last-stored
    ]
    gone: set[int] = set()
    for batch in rounds:
        batch = np.array([i for i in dict.fromkeys(batch.tolist()) if i not in gone], dtype=np.int64)
        assert index.remove(batch) == len(batch)
        gone |= set(batch.tolist())
        live = np.array([i for i in hashed.ids.tolist() if i not in gone], dtype=np.int64)
        assert len(index) == len(live) and set(index.ids().tolist()) == set(live.tolist())
        # Each remaining id stays in the list it was stored in.
        _, now = ivf_layout(index)
        assert now == {i: list_of[i] for i in live.tolist()}
        # Each remaining code's own query returns itself, at distance 0.
        codes = hashed.codes[[hashed.pos[i] for i in live.tolist()]]
        np.testing.assert_array_equal(index.reconstruct(live), codes)
        distances, labels = index.search(codes, 2)
        assert (distances[:, 0] == 0).all() and (distances[:, 1] > 0).all()
        np.testing.assert_array_equal(labels[:, 0], live)
        # The removed ones are gone from results and from the stored bytes.
        removed_codes = hashed.codes[[hashed.pos[i] for i in sorted(gone)]]
        _, labels = index.search(removed_codes, 5)
        assert not set(labels.ravel().tolist()) & gone
        blob = index.serialize(MAC_KEY)
        assert not any(code.tobytes() in blob for code in removed_codes)
    assert set(crowded[1:]) <= gone and set(emptied) <= gone
    assert crowded[0] in index and int(hashed.ids[-4]) in index
    # Re-added under new ids, removed codes go back into their lists and are found.
    back = np.array(sorted(gone)[:50], dtype=np.int64)
    index.add(hashed.codes[[hashed.pos[i] for i in back.tolist()]], back + 1)
    _, now = ivf_layout(index)
    assert all(now[int(i) + 1] == list_of[int(i)] for i in back)
    distances, labels = index.search(hashed.codes[[hashed.pos[i] for i in back.tolist()]], 1)
    assert (distances[:, 0] == 0).all()
    np.testing.assert_array_equal(labels[:, 0], back + 1)
    # All of it survives a round trip.
    loaded = load_index(index.serialize(MAC_KEY), MAC_KEY)
    assert loaded.serialize(MAC_KEY) == index.serialize(MAC_KEY)
    live = index.ids()
    distances, labels = loaded.search(loaded.reconstruct(live), 1)
    assert (distances[:, 0] == 0).all()
    np.testing.assert_array_equal(labels[:, 0], live)


# --------------------------------------------------------------------------- serialisation


def _prepared(kind: str, d: Data, tombstones: bool):
    index = make_index(kind, d.bits, train=d.codes, m=8)
    index.add(d.codes[:300], d.ids[:300])
    if tombstones:
        index.remove(d.ids[:300:4].copy())
    return index


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tombstones", [False, True], ids=["intact", "after-removals"])
def test_serialize_round_trip(kind: str, tombstones: bool, hashed: Data) -> None:
    index = _prepared(kind, hashed, tombstones)
    blob = index.serialize(MAC_KEY)
    assert isinstance(blob, bytes) and blob.startswith(b"FPMATCHI")
    loaded = load_index(blob, MAC_KEY)
    assert type(loaded) is type(index)
    assert loaded.serialize(MAC_KEY) == blob
    assert load_index(bytearray(blob), MAC_KEY).serialize(MAC_KEY) == blob
    assert len(loaded) == len(index) and loaded.bits == index.bits
    assert sorted(loaded.ids().tolist()) == sorted(index.ids().tolist())
    if kind == "hnsw":
        assert loaded.tombstones == index.tombstones == (75 if tombstones else 0)
        assert loaded.ef_search == index.ef_search
    if kind == "ivf":
        assert loaded.is_trained and loaded.nlist == index.nlist == IVF_NLIST
        assert loaded.nprobe == index.nprobe == IVF_NPROBE and loaded.rerank == index.rerank
        assert loaded._native.prefix_bits == index._native.prefix_bits == 256
        assert ivf_layout(loaded) == ivf_layout(index)
    for k in (1, 7):
        a, b = index.search(hashed.queries, k), loaded.search(hashed.queries, k)
        np.testing.assert_array_equal(a.distances, b.distances)
        np.testing.assert_array_equal(a.labels, b.labels)
    ra, rb = index.range_search(hashed.queries, 100), loaded.range_search(hashed.queries, 100)
    for x, y in zip(ra, rb):
        np.testing.assert_array_equal(x, y)
    live = index.ids()
    np.testing.assert_array_equal(loaded.reconstruct(live), index.reconstruct(live))
    # The loaded index is fully usable.
    loaded.add(hashed.codes[300:310], hashed.ids[300:310])
    loaded.remove(hashed.ids[1:2])
    assert len(loaded) == len(index) + 9


@pytest.mark.parametrize("kind", KINDS)
def test_tampered_bytes_raise_authentication_error(kind: str, hashed: Data) -> None:
    index = _prepared(kind, hashed, tombstones=True)
    blob = index.serialize(MAC_KEY)
    n = len(blob)
    labels_start = 32 + int.from_bytes(blob[24:32], "little") + 8
    extra_start = labels_start + 8 * int.from_bytes(blob[labels_start - 8 : labels_start], "little") + 8
    positions = set(np.linspace(0, n - 1, 200).astype(int).tolist())
    positions |= set(range(0, 40))  # magic, format, kind, bits, FAISS length
    positions |= set(range(labels_start - 8, labels_start + 24))  # label count and first labels
    positions |= set(range(extra_start - 24, min(extra_start + 48, n)))  # last labels, kind-specific length
    positions |= set(range(n - 40, n))  # the end of the last section and the tag
    if kind == "ivf":  # nlist, prefix_bits, nprobe, rerank, trained; centroids; list numbers
        assert extra_start + 40 + IVF_NLIST * index.code_size + 8 * 225 == n - 32
        positions |= set(range(extra_start + 40, extra_start + 40 + IVF_NLIST * index.code_size, 37))
    for i, pos in enumerate(sorted(positions)):
        damaged = bytearray(blob)
        damaged[pos] ^= (0x01, 0x80, 0xFF)[i % 3]
        with pytest.raises(AuthenticationError):
            load_index(bytes(damaged), MAC_KEY)
    for length in sorted({0, 1, 7, 8, 40, n - 1, n // 2, n - 32, n - 33}):
        with pytest.raises(AuthenticationError):
            load_index(blob[:length], MAC_KEY)
    for extra in (b"\x00", b"x" * 32, blob[-32:]):
        with pytest.raises(AuthenticationError):
            load_index(blob + extra, MAC_KEY)
    with pytest.raises(AuthenticationError):
        load_index(blob, bytes(32))
    with pytest.raises(AuthenticationError):
        load_index(blob, MAC_KEY[:-1] + bytes([MAC_KEY[-1] ^ 1]))
    # The untouched bytes still load.
    assert len(load_index(blob, MAC_KEY)) == len(index)


@pytest.mark.parametrize("kind", KINDS)
def test_short_mac_key_rejected(kind: str, hashed: Data) -> None:
    index = _prepared(kind, hashed, tombstones=False)
    for key in (b"", b"k" * 15):
        with pytest.raises(InvalidInputError):
            index.serialize(key)
    blob = index.serialize(b"k" * 16)
    with pytest.raises(InvalidInputError):
        load_index(blob, b"k" * 15)
    assert len(load_index(blob, b"k" * 16)) == 300


@pytest.mark.parametrize("trained", [False, True])
def test_ivf_empty_round_trip(trained: bool, hashed: Data) -> None:
    index = IVFIndex(hashed.bits, nlist=16, prefix_bits=128, nprobe=5, rerank=9)
    if trained:
        index.train(hashed.codes)
    blob = index.serialize(MAC_KEY)
    loaded = load_index(blob, MAC_KEY)
    assert type(loaded) is IVFIndex and loaded.serialize(MAC_KEY) == blob
    assert loaded.is_trained == trained and len(loaded) == 0
    assert (loaded.nlist, loaded._native.prefix_bits, loaded.nprobe, loaded.rerank) == (16, 128, 5, 9)
    distances, labels = loaded.search(hashed.queries[:3], 4)
    assert (labels == -1).all() and (distances == INT32_MAX).all()
    if trained:  # the lists came along: codes go straight in, exactly as in the original
        loaded.add(hashed.codes, hashed.ids)
        index.add(hashed.codes, hashed.ids)
        assert loaded.serialize(MAC_KEY) == index.serialize(MAC_KEY)
    else:
        with pytest.raises(InvalidInputError):
            loaded.add(hashed.codes[:5], hashed.ids[:5])
        loaded.train(hashed.codes)
        loaded.add(hashed.codes[:5], hashed.ids[:5])
        assert len(loaded) == 5
    # Settings are part of the authenticated bytes.
    loaded.nprobe = 6
    assert load_index(loaded.serialize(MAC_KEY), MAC_KEY).nprobe == 6


def test_ivf_loaded_index_searches_like_the_saved_one_after_removals(hashed: Data) -> None:
    # Hand-made: two lists (centroids all-zero and all-one); the query is all-one and
    # b and d both differ from it by one prefix bit, d being nearer over the whole code.
    zeros, ones = np.zeros(16, np.uint8), np.full(16, 0xFF, np.uint8)
    a, b, c, d = zeros.copy(), ones.copy(), zeros.copy(), ones.copy()
    b[0], b[8:12], c[0], d[0] = 0xFE, 0, 0x01, 0xFD
    index = IVFIndex(128, nlist=2, prefix_bits=64, nprobe=1, rerank=1)
    index.train(np.stack([zeros, ones]))
    index.add(np.stack([a, b, c, d]), np.array([10, 11, 12, 13], dtype=np.int64))
    index.remove(np.array([10], dtype=np.int64))  # d moves to storage position 0
    blob = index.serialize(MAC_KEY)
    loaded = load_index(blob, MAC_KEY)
    assert loaded.serialize(MAC_KEY) == blob
    before, after = index.search(ones[None], 1), loaded.search(ones[None], 1)
    assert (after.labels.tolist(), after.distances.tolist()) == (before.labels.tolist(), before.distances.tolist())
    # The same on hashed faces with short prefixes and a short shortlist.
    index = filled("ivf", hashed, prefix_bits=64, rerank=5)
    index.remove(hashed.ids[::3].copy())
    loaded = load_index(index.serialize(MAC_KEY), MAC_KEY)
    before, after = index.search(hashed.queries, 5), loaded.search(hashed.queries, 5)
    np.testing.assert_array_equal(after.distances, before.distances)
    np.testing.assert_array_equal(after.labels, before.labels)


def test_authentication_error_is_value_error() -> None:
    assert issubclass(AuthenticationError, ValueError)
    assert issubclass(AuthenticationError, fpmatch.FpmatchError)


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_search_while_writing(kind: str) -> None:
    rng = np.random.default_rng(77)
    bits, pool_n = 256, 6000
    pool = rng.integers(0, 256, (pool_n, bits // 8), dtype=np.uint8)

    def code_of(ids: np.ndarray) -> np.ndarray:
        return pool[ids % pool_n]

    index = make_index(kind, bits, train=pool)
    ever: set[int] = set(range(500))
    live: set[int] = set(range(500))
    index.add(code_of(np.arange(500, dtype=np.int64)), np.arange(500, dtype=np.int64))
    added, removed = 500, 0
    stop = threading.Event()
    errors: list[BaseException] = []
    searches = [0]

    def reader(seed: int) -> None:
        r = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                queries = pool[r.integers(0, pool_n, 8)]
                distances, labels = index.search(queries, 5, n_threads=1)
                seen = set(labels.ravel().tolist()) - {-1}
                assert seen <= ever, seen - ever
                for q in range(len(queries)):
                    for d, l in zip(distances[q].tolist(), labels[q].tolist()):
                        if l >= 0:  # codes of an id never change, so distances must match
                            assert d == int(POPCOUNT[queries[q] ^ pool[l % pool_n]].sum())
                        else:
                            assert d == INT32_MAX
                found = index.range_search(queries[:2], 100, n_threads=1)
                assert set(found.labels.tolist()) <= ever
                searches[0] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)
            stop.set()

    def writer() -> None:
        nonlocal added, removed
        r = np.random.default_rng(5)
        next_id = 500
        try:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline and not stop.is_set():
                ids = np.arange(next_id, next_id + 20, dtype=np.int64)
                ever.update(ids.tolist())  # before the add: readers may see them at once
                index.add(code_of(ids), ids)
                live.update(ids.tolist())
                next_id += 20
                added += 20
                gone = r.choice(sorted(live), 10, replace=False).astype(np.int64)
                assert index.remove(gone) == 10
                live.difference_update(gone.tolist())
                removed += 10
                if kind == "hnsw" and next_id % 1000 == 0:
                    index.compact()
                if kind == "ivf":  # settings change under running searches too
                    index.nprobe = int(r.integers(1, 2 * IVF_NLIST))
                    index.rerank = int(r.integers(1, 300))
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[0]
    assert searches[0] > 10
    assert added > 500 and removed > 0
    assert len(index) == added - removed == len(live)
    assert set(index.ids().tolist()) == live
    np.testing.assert_array_equal(
        index.reconstruct(np.array(sorted(live), dtype=np.int64)), code_of(np.array(sorted(live), dtype=np.int64))
    )
    if kind == "hnsw":
        index.compact()
        assert index.tombstones == 0 and len(index) == len(live)
    if kind == "ivf":  # every live code still sits in the list that its own query probes first
        live_ids = np.array(sorted(live), dtype=np.int64)
        index.nprobe, index.rerank = 1, 1
        distances, labels = index.search(code_of(live_ids), 1)
        assert (distances[:, 0] == 0).all()
        np.testing.assert_array_equal(code_of(labels[:, 0]), code_of(live_ids))  # ids >= pool_n share codes


# --------------------------------------------------------------------------- weighted re-ranking


def _weighted_reference(codes: np.ndarray, query: np.ndarray, weights: np.ndarray) -> np.ndarray:
    mismatch = np.unpackbits(codes ^ query[None, :], axis=1, bitorder="little").astype(np.float64)
    return mismatch @ weights.astype(np.float64)


@pytest.mark.parametrize("kind", KINDS)
def test_weighted_search_reranks_the_hamming_shortlist(kind: str, data: Data) -> None:
    index = filled(kind, data)
    rng = np.random.default_rng(11)
    weights = rng.random((len(data.queries), data.bits)).astype(np.float32)
    weights /= weights.sum(axis=1, keepdims=True)
    k, depth = 5, 40
    got = index.search_weighted(data.queries, weights, k, shortlist=depth)
    plain = index.search(data.queries, depth)
    for q in range(len(data.queries)):
        candidates = plain.labels[q][plain.labels[q] >= 0]
        exact = _weighted_reference(data.codes[[data.pos[i] for i in candidates]], data.queries[q], weights[q])
        order = np.lexsort((candidates, exact))[:k]  # by distance, then id
        np.testing.assert_allclose(got.distances[q], exact[order], rtol=1e-5, atol=1e-7)
        # Exactly the best k of the shortlist (ties within float noise may swap places).
        assert set(got.labels[q].tolist()) <= set(candidates.tolist())
        assert np.all(np.diff(got.distances[q]) >= 0)


def test_weighted_search_with_whole_gallery_shortlist_is_exhaustive(data: Data) -> None:
    index = filled("flat", data)
    weights = np.random.default_rng(12).random((len(data.queries), data.bits)).astype(np.float32)
    got = index.search_weighted(data.queries, weights, 3, shortlist=len(data.codes))
    for q in range(len(data.queries)):
        exact = np.sort(_weighted_reference(data.codes, data.queries[q], weights[q]))[:3]
        np.testing.assert_allclose(got.distances[q], exact, rtol=1e-5, atol=1e-6)


def test_uniform_weights_rank_like_hamming(hashed: Data) -> None:
    index = filled("flat", hashed)
    uniform = np.full((len(hashed.queries), hashed.bits), 1.0 / hashed.bits, dtype=np.float32)
    got = index.search_weighted(hashed.queries, uniform, 10, shortlist=10)
    plain = index.search(hashed.queries, 10)
    np.testing.assert_allclose(got.distances, plain.distances / hashed.bits, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_weighted_search_pads_and_skips_removed(kind: str, hashed: Data) -> None:
    index = filled(kind, hashed)
    gone = hashed.ids[:10]
    index.remove(gone)
    weights = np.random.default_rng(13).random((10, hashed.bits)).astype(np.float32)
    got = index.search_weighted(hashed.codes[:10], weights, 5)
    assert not set(got.labels.ravel().tolist()) & set(gone.tolist())
    # Removal moved stored codes: each distance must still be that of its own id's code.
    for q in range(10):
        rows = hashed.codes[[hashed.pos[i] for i in got.labels[q]]]
        exact = _weighted_reference(rows, hashed.codes[q], weights[q])
        np.testing.assert_allclose(got.distances[q], exact, rtol=1e-5, atol=1e-7)
    empty = make_index(kind, hashed.bits, train=hashed.codes)
    padded = empty.search_weighted(hashed.codes[:2], weights[:2], 3)
    assert (padded.labels == -1).all() and np.isinf(padded.distances).all()


@pytest.mark.parametrize(
    "bad, error",
    [
        (lambda w: w.astype(np.float64), DtypeError),
        (lambda w: w[:, :-8], InvalidInputError),
        (lambda w: w[:-1], InvalidInputError),
        (lambda w: np.where(np.arange(w.shape[1]) == 3, np.float32(np.nan), w), InvalidInputError),
        (lambda w: np.where(np.arange(w.shape[1]) == 3, np.float32(-0.5), w), InvalidInputError),
        (lambda w: np.where(np.arange(w.shape[1]) == 3, np.float32(np.inf), w), InvalidInputError),
    ],
    ids=["float64", "narrow", "rows", "nan", "negative", "inf"],
)
def test_bad_weights_rejected(bad, error, hashed: Data) -> None:
    index = filled("flat", hashed)
    weights = np.full((4, hashed.bits), 1.0 / hashed.bits, dtype=np.float32)
    with pytest.raises(error):
        index.search_weighted(hashed.codes[:4], bad(weights).astype(bad(weights).dtype), 3)
    with pytest.raises(InvalidInputError):
        index.search_weighted(hashed.codes[:4], weights, 0)


def test_weighted_pairs_equal_search_and_check_rows(hashed: Data) -> None:
    from fpmatch.codes import weighted_pairs

    index = filled("flat", hashed)
    weights = np.random.default_rng(13).random((len(hashed.queries), hashed.bits)).astype(np.float32)
    got = index.search_weighted(hashed.queries, weights, 4, shortlist=64)
    rows_a = np.repeat(np.arange(len(hashed.queries)), 4)
    rows_b = np.array([hashed.pos[int(i)] for i in got.labels.ravel()])
    # Bit-identical, so that verify and identify report the same score for one pair.
    assert (weighted_pairs(hashed.queries, weights, rows_a, hashed.codes, rows_b) == got.distances.ravel()).all()
    with pytest.raises(InvalidInputError):
        weighted_pairs(hashed.queries, weights, np.array([len(hashed.queries)]), hashed.codes, np.array([0]))
    with pytest.raises(InvalidInputError):
        weighted_pairs(hashed.queries, weights, np.array([0]), hashed.codes, np.array([-1]))
    with pytest.raises(InvalidInputError):
        weighted_pairs(hashed.queries, weights[:-1], np.array([0]), hashed.codes, np.array([0]))
