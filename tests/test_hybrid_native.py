"""The hybrid path as one native call: the same requests as the Python path, bit for bit."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("tenseal", reason="the he and hybrid schemes need TenSEAL (pip install tenseal)")

from fpmatch import CancellableHash, HashKey, IVFIndex, _core  # noqa: E402
from fpmatch.errors import DtypeError, InvalidInputError  # noqa: E402
from fpmatch.he import HybridGallery, KeyHolder, PublicContext, RateLimit  # noqa: E402
from fpmatch.he._kernel import reference_scoring  # noqa: E402
from fpmatch.he._packing import pack  # noqa: E402
from fpmatch.synthetic import make_faces  # noqa: E402

DIM, BITS, N = 128, 256, 700


@pytest.fixture(scope="module")
def world() -> dict:
    holder = KeyHolder(limits=RateLimit(requests_per_second=1e6, burst=1_000_000))
    faces = make_faces(N, 2, profile="centred", seed=5)
    return {
        "holder": holder,
        "public": holder.public_context(),
        "scheme": CancellableHash(HashKey(bytes(range(32))), DIM, BITS),
        "templates": np.ascontiguousarray(faces.embeddings[0::2, :DIM]),  # a short template: small rows
        "probes": np.ascontiguousarray(faces.embeddings[1::2, :DIM]),
        "names": [f"n{i:04d}" for i in range(N)],
    }


def _gallery(world: dict, index: object, shortlist: int = 24, context: object = None) -> HybridGallery:
    gallery = HybridGallery(world["scheme"], context or world["public"], index=index, shortlist=shortlist)
    names, templates = world["names"], world["templates"]
    gallery.enrol(names[:401], templates[:401])  # the second batch reopens a part-filled row
    gallery.enrol(names[401:], templates[401:])
    for name in names[::6]:  # withdrawn: codes removed, c0 windows zeroed
        gallery.withdraw(name)
    return gallery


def _index(kind: str) -> object:
    return IVFIndex(BITS, nlist=16, nprobe=8) if kind == "ivf" else kind


@pytest.fixture(scope="module", params=["flat", "hnsw", "ivf"])
def gallery(request: pytest.FixtureRequest, world: dict) -> HybridGallery:
    return _gallery(world, _index(request.param))


def _arrays(scores: object) -> tuple:
    return tuple(getattr(scores, f).tolist() for f in ("a", "b", "index", "row"))


# -- the forward NTT -------------------------------------------------------------------


def test_forward_ntt_equals_seals(world: dict) -> None:
    ring = PublicContext(world["public"]).ring
    assert ring.native_ntt  # checked against SEAL at start
    rng = np.random.default_rng(1)
    polys = rng.integers(0, ring.q, (4, ring.n), dtype=np.int64)
    polys[0] = 0
    polys[1] = ring.q - 1
    polys[2, :] = 0
    polys[2, 1] = 1  # X: value 0 of its NTT is psi
    native = _core.ntt_forward(polys, ring.q, ring.psi)
    for poly, values in zip(polys, native):
        np.testing.assert_array_equal(values, ring.seal_ntt(poly))
    assert native[2, 0] == ring.psi
    np.testing.assert_array_equal(_core.ntt_inverse(native, ring.q, ring.psi), polys)


def test_forward_ntt_refuses_bad_input(world: dict) -> None:
    ring = PublicContext(world["public"]).ring
    good = np.zeros((1, ring.n), dtype=np.int64)
    for bad in (ring.q, -1):
        poly = good.copy()
        poly[0, 7] = bad
        with pytest.raises(InvalidInputError, match=r"\[0, q\)"):
            _core.ntt_forward(poly, ring.q, ring.psi)
    with pytest.raises(DtypeError):
        _core.ntt_forward(good.astype(np.float64), ring.q, ring.psi)
    with pytest.raises(InvalidInputError):
        _core.ntt_forward(good[0], ring.q, ring.psi)  # 1-D
    with pytest.raises(InvalidInputError, match="power of two"):
        _core.ntt_forward(good[:, :100], ring.q, ring.psi)
    with pytest.raises(InvalidInputError, match="root of unity"):
        _core.ntt_forward(good, ring.q, 3)
    with pytest.raises(InvalidInputError, match="odd"):
        _core.ntt_forward(good, ring.q + 1, ring.psi)


def test_seal_is_used_where_the_native_ntt_disagrees(world: dict) -> None:
    context = PublicContext(world["public"])
    context.ring.native_ntt = False  # as if the check at start had failed
    fallback = _gallery(world, "flat", context=context)
    rows, ring = fallback.ciphertext_rows, context.ring
    assert not rows.native
    native = _core.HybridRescorer(ring.n, DIM, ring.q, ring.psi)  # the same rows, scored by the core
    for probe in world["probes"][:20]:
        names, scores = fallback.shortlist_scores(probe)
        assert names == fallback.shortlist_for(probe) and scores is not None
        slots = np.array([fallback._slot[fallback.id_of(name)] for name in names], dtype=np.int64)
        expected = native.score(rows._c0, rows._c1, rows.count, slots, fallback._probe_values(probe))
        assert _arrays(scores) == tuple(part.tolist() for part in expected)


# -- one call equals the Python path -----------------------------------------------------


def test_one_call_equals_the_python_path(gallery: HybridGallery, world: dict) -> None:
    assert gallery.ciphertext_rows.native
    withdrawn = set(world["names"][::6])
    for probe in world["probes"][:60]:
        names, scores = gallery.shortlist_scores(probe)
        with reference_scoring():  # Python glue, SEAL's NTT, numpy kernels
            expected_names, expected = gallery.shortlist_scores(probe)
        assert names == expected_names == gallery.shortlist_for(probe)
        assert len(names) == gallery.shortlist and not withdrawn & set(names)
        assert scores is not None and expected is not None
        assert _arrays(scores) == _arrays(expected)
        assert scores.to_bytes() == expected.to_bytes()


def test_native_request_equals_the_reference(gallery: HybridGallery, world: dict) -> None:
    rows = gallery.ciphertext_rows
    rng = np.random.default_rng(2)
    live = sorted(gallery._slot.values())
    for probe in world["probes"][:10]:
        slots = rng.choice(live, size=40, replace=True)  # repeats and shared rows included
        weights = gallery._probe_values(probe)
        assert rows.request(slots, weights).to_bytes() == rows.request_reference(slots, weights).to_bytes()


def test_decisions_equal_the_python_path(gallery: HybridGallery, world: dict) -> None:
    holder = world["holder"]
    for probe in world["probes"][:30]:
        native = gallery.identify(probe, holder, 0.3, 5, caller="t")
        with reference_scoring():
            expected = gallery.identify(probe, holder, 0.3, 5, caller="t")
        assert native == expected


def test_an_empty_gallery_shortlists_nobody(world: dict) -> None:
    empty = HybridGallery(world["scheme"], world["public"])
    assert empty.shortlist_scores(world["probes"][0]) == ([], None)
    assert empty.identify(world["probes"][0], world["holder"], 0.3, caller="t") == []


# -- eligibility (the service's consent filter) -------------------------------------------


def test_a_filter_passes_over_ineligible_subjects_before_scoring(world: dict) -> None:
    gallery = _gallery(world, "flat")
    blocked = set(world["names"][1::3])
    eligible = lambda name: name not in blocked  # noqa: E731
    want = gallery.shortlist
    for probe in world["probes"][:30]:
        code, reliability = gallery._probe_code(probe)
        values = gallery._probe_values(probe)
        ids, scores = gallery.rescored(code, reliability, values, want, eligible)
        names = [gallery._names[i] for i in ids]
        assert not blocked & set(names) and scores is not None
        assert len(scores) == len(ids) == want  # one score per eligible subject, none for the others
        # As before the native path: the code table's search, deeper while the blocked fill it.
        nearest = gallery.codes.nearest(code, reliability, want, lambda i: gallery._names[i] not in blocked)
        assert ids == [i for i, _ in nearest]
        expected = gallery.ciphertext_rows.request_reference(
            np.array([gallery._slot[i] for i in ids]), values
        )
        assert scores.to_bytes() == expected.to_bytes()
        # Everyone eligible through the filter: the same as the one call.
        assert gallery.rescored(code, reliability, values, want, lambda name: True)[1].to_bytes() == (
            gallery.rescored(code, reliability, values, want)[1].to_bytes()
        )


# -- hostile input ---------------------------------------------------------------------------


def test_score_refuses_hostile_input(world: dict) -> None:
    gallery = _gallery(world, "flat")
    rows = gallery.ciphertext_rows
    rescorer = rows._rescorer
    c0, c1, count = rows._c0, rows._c1, rows.count
    weights = gallery._probe_values(world["probes"][0])
    slots = np.array([1, 2], dtype=np.int64)
    with pytest.raises(InvalidInputError, match="empty shortlist"):
        rescorer.score(c0, c1, count, np.zeros(0, dtype=np.int64), weights)
    for bad in (-1, count * rows.group):
        with pytest.raises(InvalidInputError, match="holds no ciphertext"):
            rescorer.score(c0, c1, count, np.array([0, bad], dtype=np.int64), weights)
    with pytest.raises(InvalidInputError):
        rescorer.score(c0, c1, count, slots, weights[:-1])
    with pytest.raises(DtypeError):
        rescorer.score(c0, c1, count, slots, weights.astype(np.float64))
    with pytest.raises(DtypeError):
        rescorer.score(c0, c1, count, slots.astype(np.int32), weights)
    with pytest.raises(InvalidInputError):
        rescorer.score(c0[:, :-6], c1, count, slots, weights)  # rows one value short
    with pytest.raises(InvalidInputError):
        rescorer.score(c0, c1, len(c0) + 1, slots, weights)  # more rows than given
    with pytest.raises(InvalidInputError):
        rescorer.score(c0[:, None], c1, count, slots, weights)  # 3-D
    last = c1.shape[1] - 6
    for half, at in (("c0", 6 * DIM + 6), ("c1", 6 * DIM + 6), ("c1", last)):  # a stored value above q - 1
        bad0, bad1 = c0[:count].copy(), c1[:count].copy()  # in a window / a row the request reads
        (bad0 if half == "c0" else bad1)[0, at : at + 6] = 0xFF
        with pytest.raises(InvalidInputError, match="out of range"):
            rescorer.score(bad0, bad1, count, slots, weights)


def test_identify_refuses_hostile_input(world: dict) -> None:
    gallery = _gallery(world, "flat")
    rows = gallery.ciphertext_rows
    code, reliability = gallery._probe_code(world["probes"][0])
    weights = gallery._probe_values(world["probes"][0])
    index, table = gallery.codes.index.native, gallery._slot.array

    def call(**change: object) -> object:
        args = dict(index=index, code=code, reliability=reliability, want=8, hamming=64, slot_of_id=table,
                    c0=rows._c0, c1=rows._c1, count=rows.count, weights=weights)
        args.update(change)
        return rows._rescorer.identify(**args)

    assert len(call()[0]) == 8
    with pytest.raises(InvalidInputError):
        call(code=code[:-1])
    with pytest.raises(DtypeError):
        call(reliability=reliability.astype(np.float64))
    with pytest.raises(InvalidInputError, match="non-negative"):
        call(reliability=-reliability)
    with pytest.raises(InvalidInputError, match="want"):
        call(want=0)
    with pytest.raises(DtypeError):
        call(slot_of_id=table.astype(np.int32))
    bad_table = table.copy()
    bad_table[bad_table >= 0] = rows.count * rows.group  # every id names a slot past the rows
    with pytest.raises(InvalidInputError, match="holds no ciphertext"):
        call(slot_of_id=bad_table)
    nobody = np.full(len(table), -1, dtype=np.int64)  # no id holds a slot: nothing to score
    ids, slots, alpha, beta, offsets, row = call(slot_of_id=nobody)
    assert len(ids) == len(slots) == len(beta) == len(offsets) == len(row) == 0 and alpha.shape[0] == 0


def test_concurrent_calls_equal_serial_ones(world: dict) -> None:
    gallery = _gallery(world, "hnsw")
    probes = world["probes"][:16]
    serial = [gallery.shortlist_scores(p)[1].to_bytes() for p in probes]
    results: dict[int, bytes] = {}

    def work(i: int) -> None:
        results[i] = gallery.shortlist_scores(probes[i])[1].to_bytes()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(probes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(probes))] == serial


def test_score_is_exact_at_the_ends_of_the_range(world: dict) -> None:
    """Stored values at 0 and q - 1, weights at the ends of int64: the request as exact integers give it."""
    ring = PublicContext(world["public"]).ring
    q, n, h = ring.q, ring.n, ring.q // 2
    rng = np.random.default_rng(4)
    rows = 3
    centred = rng.integers(-h, h + 1, (2, rows, n), dtype=np.int64)
    centred[:, 0, ::2], centred[:, 0, 1::2] = h, -h  # stored q - 1 and 0
    c0, c1 = pack(centred[0], q), pack(centred[1], q)
    weights = rng.integers(-(2**62), 2**62, DIM, dtype=np.int64)
    weights[:3] = [np.iinfo(np.int64).max, np.iinfo(np.int64).min, 0]
    g = n // DIM
    slots = np.array([0, 1, g - 1, g, 2 * g + 3, 0], dtype=np.int64)
    alpha, beta, offsets, row = _core.HybridRescorer(n, DIM, q, ring.psi).score(c0, c1, rows, slots, weights)
    poly = [0] * n  # P(X) = sum_i w_i X^-i, exactly
    poly[0] = int(weights[0]) % q
    for i in range(1, DIM):
        poly[n - i] = -int(weights[i]) % q
    p_hat = [int(v) for v in ring.seal_ntt(np.array(poly, dtype=np.int64))]
    assert row.tolist() == [0, 0, 0, 1, 2, 0] and offsets.tolist() == [(s % g) * DIM for s in slots]
    for r in range(rows):
        assert alpha[r].tolist() == [int(x) * p % q for x, p in zip(centred[1, r], p_hat)]
    for s, b in zip(slots, beta):
        window = centred[0, s // g, (s % g) * DIM : (s % g + 1) * DIM]
        assert int(b) == sum(int(w) * int(x) for w, x in zip(weights, window)) % q
