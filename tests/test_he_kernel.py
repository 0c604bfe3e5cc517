"""The native encrypted-scoring kernel (fpmatch._core.modular_combine / modular_multiply).

It must equal the numpy reference (fpmatch.he._reference, the specification) and SEAL's own
evaluator bit for bit, on every CPU path; refuse arrays it cannot read safely before it reads
them; raise one Python exception for a bad value met by any of its threads; and give
concurrent searches the answers of serial ones.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fpmatch import DtypeError, InvalidInputError, _core
from fpmatch.he import KeyHolder
from fpmatch.he import _kernel, _reference
from fpmatch.he._encoding import quantise
from fpmatch.he._packing import PACKED_LIMIT, pack, unpack
from fpmatch.he._ring import Ring, secret_ntt
from fpmatch.he.errors import CiphertextFormatError
from fpmatch.he.audit import SecretKeyAudit
from fpmatch.he.blocks import CiphertextBlocks
from fpmatch.he.context import PublicContext
from fpmatch.he.encrypted import EncryptedGallery
from fpmatch.he.rows import CiphertextRows

ts = pytest.importorskip("tenseal")
sealapi = ts.sealapi

Q = 17592186028033  # the 44-bit data prime SEAL picks for N = 4096 (checked below)
H = Q // 2
KERNELS = _core.modular_kernels()
INT64 = np.iinfo(np.int64)


def exact(matrices: list[np.ndarray], weights: np.ndarray, q: int = Q) -> np.ndarray:
    """sum_j w_j m[j, :] mod q in Python integers: exact for any int64 input."""
    w = np.asarray(weights).astype(object)
    return np.array([[int(v) % q for v in w @ m.astype(object)] for m in matrices], dtype=np.int64)


def packed(m: np.ndarray, q: int = Q) -> np.ndarray:
    """Centred int64 values in the packed form the kernel reads (uint8 passes as it is)."""
    return m if m.dtype == np.uint8 else pack(m, q)


def combine(matrices, weights, q=Q, **options):  # type: ignore[no-untyped-def]
    return _core.modular_combine([packed(m, q) for m in matrices], np.asarray(weights, dtype=np.int64), q, **options)


def reference(matrices, weights, q=Q):  # type: ignore[no-untyped-def]
    return _reference.combine([packed(m, q) for m in matrices], np.asarray(weights, dtype=np.int64), q)


def centred(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(-H, H + 1, shape, dtype=np.int64)


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory) -> tuple[PublicContext, SecretKeyAudit]:
    path = tmp_path_factory.mktemp("keys") / "holder.key"
    holder = KeyHolder()
    holder.save(path)
    return PublicContext(holder.public_context()), SecretKeyAudit(path)


def test_the_default_data_prime_is_the_one_these_tests_use(parties: tuple[PublicContext, SecretKeyAudit]) -> None:
    assert parties[0].ring.q == Q


def test_kernels_listed_fastest_first_and_portable_always_there() -> None:
    assert KERNELS[-1] == "portable"
    assert set(KERNELS) <= {"avx512ifma", "avx512", "portable"}
    assert "avx512ifma" not in KERNELS or "avx512" in KERNELS


# -- agreement with the reference -------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 7), (4, 8), (5, 9), (32, 1030), (512, 8192 + 11)])
def test_random_inputs_equal_the_reference(kernel: str, rows: int, cols: int) -> None:
    rng = np.random.default_rng(rows * 10_000 + cols)
    matrices = [centred(rng, rows, cols) for _ in range(3)]
    weights = rng.integers(-(1 << 14), 1 << 14, rows)  # an honest probe: the reference is exact
    got = combine(matrices, weights, kernel=kernel)
    assert got.dtype == np.int64 and got.shape == (3, cols)
    np.testing.assert_array_equal(got, reference(matrices, weights))


@pytest.mark.parametrize("kernel", KERNELS)
def test_any_int64_weights_are_exact(kernel: str) -> None:
    # Far past what int64 sums (and so the reference) can hold.
    rng = np.random.default_rng(1)
    matrices = [centred(rng, 300, 45) for _ in range(2)]
    weights = rng.integers(INT64.min, INT64.max, 300, endpoint=True)
    np.testing.assert_array_equal(combine(matrices, weights, kernel=kernel), exact(matrices, weights))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rows", [1, 4095, 4096, 4097])  # 4096 (N) is the longest template; passes are 4096 rows
@pytest.mark.parametrize(
    "value, weight",
    [(H, Q - 1), (-H, Q - 1), (H, INT64.max), (-H, INT64.min), (H, -(Q - 1)), (0, Q - 1), (H, 0), (-H, 1 << 14)],
)
def test_adversarial_values(kernel: str, rows: int, value: int, weight: int) -> None:
    matrices = [np.full((rows, 19), value, dtype=np.int64)]
    weights = np.full(rows, weight, dtype=np.int64)
    np.testing.assert_array_equal(combine(matrices, weights, kernel=kernel), exact(matrices, weights))


@pytest.mark.parametrize("kernel", KERNELS)
def test_the_most_rows_the_kernel_takes(kernel: str) -> None:
    rows = 1 << 16
    rng = np.random.default_rng(2)
    matrices = [rng.choice(np.array([-H, H, 0, -1, 1], dtype=np.int64), (rows, 9))]
    weights = rng.choice(np.array([Q - 1, INT64.max, INT64.min, -(Q - 1)], dtype=np.int64), rows)
    np.testing.assert_array_equal(combine(matrices, weights, kernel=kernel), exact(matrices, weights))
    with pytest.raises(InvalidInputError):
        combine([np.zeros((rows + 1, 8), dtype=np.int64)], np.zeros(rows + 1), kernel=kernel)


@pytest.mark.parametrize("kernel", KERNELS)
def test_known_answers(kernel: str) -> None:
    # 8 columns take the SIMD body and 3 more its portable tail; each column has a closed form.
    cols = 11
    h = H
    m = np.array([[h] * cols, [-h] * cols, [c - 5 for c in range(cols)]], dtype=np.int64)
    cases = [
        ([1, 0, 0], [h] * cols),
        ([1, 1, 0], [0] * cols),
        ([Q - 1, 0, 0], [Q - h] * cols),  # -h
        ([3, 0, 0], [(Q - 3) // 2] * cols),  # 3h = q + (q-3)/2
        ([0, 2, 0], [1] * cols),  # -2h = -(q-1)
        ([0, 0, 6], [(6 * (c - 5)) % Q for c in range(cols)]),
        ([-1, 0, 0], [Q - h] * cols),
        ([INT64.max, 0, 0], [(INT64.max % Q) * h % Q] * cols),
    ]
    for weights, expected in cases:
        assert combine([m], weights, kernel=kernel)[0].tolist() == expected, (weights, kernel)
    assert combine([np.zeros((2, cols), dtype=np.int64)], [5, 7], kernel=kernel)[0].tolist() == [0] * cols


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_cpu_path_equals_the_portable_one(kernel: str) -> None:
    rng = np.random.default_rng(3)
    for rows, cols in [(513, 8195), (7, 64), (4100, 24)]:
        matrices = [centred(rng, rows, cols) for _ in range(2)]
        weights = rng.integers(INT64.min, INT64.max, rows, endpoint=True)
        expected = combine(matrices, weights, kernel="portable")
        for threads in (1, 3):
            np.testing.assert_array_equal(combine(matrices, weights, kernel=kernel, n_threads=threads), expected)


def test_strided_views_are_read_in_place() -> None:
    rng = np.random.default_rng(4)
    block = centred(rng, 40, 2 * 64)
    stored = pack(block, Q)  # 6 bytes a value
    weights = rng.integers(-1000, 1000, 40)
    views = [(stored[:, 6 * 64 :], block[:, 64:]), (stored[:, 18:24], block[:, 3:4]), (stored[:, : 6 * 64], block[:, :64])]
    for view, values in views:
        assert view.base is not None  # a view, not a copy
        np.testing.assert_array_equal(combine([view], weights)[0], exact([values], weights)[0])
    window = stored[5, 60:300].reshape(40, 6)  # one row's d values as a column: row stride 6 bytes
    np.testing.assert_array_equal(combine([window], weights)[0], exact([block[5, 10:50].reshape(40, 1)], weights)[0])


@pytest.mark.parametrize("kernel", KERNELS)
def test_stored_values_at_the_ends_of_the_range(kernel: str) -> None:
    # Stored 0 is -h, stored q - 1 is h, stored h is zero; every byte of a value is read.
    rows, cols = 7, 8 * 3 + 5
    stored = np.zeros((rows, 6 * cols), dtype=np.uint8)
    values = np.zeros((rows, cols), dtype=np.int64)
    ends = [0, Q - 1, H, 1, Q - 2, (Q - 1) & ~0xFF, 0xFF]
    for j in range(rows):
        for c in range(cols):
            value = ends[(j + c) % len(ends)]
            stored[j, 6 * c : 6 * c + 6] = list(value.to_bytes(6, "little"))
            values[j, c] = value - H
    np.testing.assert_array_equal(unpack(stored, Q), values)
    assert values.min() == -H and values.max() == H
    for weights in (np.full(rows, Q - 1), np.arange(1, rows + 1), np.full(rows, INT64.min)):
        np.testing.assert_array_equal(combine([stored], weights, kernel=kernel), exact([values], weights))
        np.testing.assert_array_equal(_core.modular_multiply(stored, np.full(cols, Q - 1), Q), np.mod(values * -1, Q))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("threads", [1, 3])
def test_a_batch_of_probes_equals_one_probe_at_a_time(kernel: str, threads: int) -> None:
    rng = np.random.default_rng(41)
    for rows, cols, probes in [(512, 8192 + 13, 5), (48, 300, 1), (3, 9, 17)]:
        matrices = [pack(centred(rng, rows, cols), Q) for _ in range(3)]
        weights = rng.integers(-(1 << 14), 1 << 14, (probes, rows))
        batch = _core.modular_combine(matrices, weights, Q, n_threads=threads, kernel=kernel)
        assert batch.shape == (probes, 3, cols)
        for p in range(probes):
            np.testing.assert_array_equal(batch[p], _core.modular_combine(matrices, weights[p], Q, kernel="portable"))
        if rows == 48:
            np.testing.assert_array_equal(batch, _reference.combine(matrices, weights, Q))
    with pytest.raises(InvalidInputError):
        _core.modular_combine(matrices, np.zeros((0, 3), dtype=np.int64), Q)
    with pytest.raises(InvalidInputError):
        _core.modular_combine(matrices, np.zeros((2, 4), dtype=np.int64), Q)


def test_multiply_equals_the_reference() -> None:
    rng = np.random.default_rng(5)
    a = centred(rng, 6, 4096)
    a[0, :4] = [H, -H, 0, -1]
    b = rng.integers(0, Q, 4096, dtype=np.int64)
    b[:3] = [0, Q - 1, 1]
    got = _core.modular_multiply(pack(a, Q), b, Q)
    np.testing.assert_array_equal(got, _reference.multiply(pack(a, Q), b, Q))
    exact_rows = [[(int(x) * int(y)) % Q for x, y in zip(row, b)] for row in a[:2]]
    assert got[:2].tolist() == exact_rows


# -- agreement with SEAL ------------------------------------------------------------------------


def test_equal_to_seal_evaluator_and_decrypts_the_same() -> None:
    """multiply_plain by integer constants and add_many in SEAL give the kernel's ciphertext."""
    context = ts.context(ts.SCHEME_TYPE.CKKS, 4096, coeff_mod_bit_sizes=[44, 60])
    ring = Ring(context)
    n, q = ring.n, ring.q
    with tempfile.TemporaryDirectory() as folder:
        context.secret_key().data.save(os.path.join(folder, "secret"))
        secret = sealapi.SecretKey()
        secret.load(ring.seal, os.path.join(folder, "secret"))
    encryptor = sealapi.Encryptor(ring.seal, ring.public_key(context)[0])
    evaluator = sealapi.Evaluator(ring.seal)
    encoder = sealapi.CKKSEncoder(ring.seal)
    rng = np.random.default_rng(6)

    def halves(ciphertext: sealapi.Ciphertext) -> np.ndarray:
        """(c0 coefficients | c1 NTT values), as blocks store a ciphertext (left in NTT form)."""
        c1 = np.fromiter(map(ciphertext.dyn_array().at, range(n, 2 * n)), dtype=np.int64, count=n)
        evaluator.transform_from_ntt_inplace(ciphertext)
        c0 = np.fromiter(map(ciphertext.dyn_array().at, range(n)), dtype=np.int64, count=n)
        evaluator.transform_to_ntt_inplace(ciphertext)
        return np.concatenate([c0, c1])

    d = 24
    ciphertexts = []
    for _ in range(d):
        plain = sealapi.Plaintext()
        encoder.encode(rng.standard_normal(n // 2).tolist(), ring.parms_id, 2.0**25, plain)
        ciphertext = sealapi.Ciphertext(ring.seal)
        encryptor.encrypt(plain, ciphertext)
        ciphertexts.append(ciphertext)
    block = ring.centre(np.stack([halves(c) for c in ciphertexts]))
    # Small honest weights, and weights as large as SEAL encodes (the reference would overflow).
    for weights in (rng.integers(-(1 << 14), 1 << 14, d), rng.integers(-(1 << 40), 1 << 40, d)):
        products = []
        for ciphertext, w in zip(ciphertexts, weights.tolist()):
            plain = sealapi.Plaintext()
            encoder.encode(int(w), ring.parms_id, 1.0, plain)
            product = sealapi.Ciphertext(ring.seal)
            evaluator.multiply_plain(ciphertext, plain, product)
            products.append(product)
        result = sealapi.Ciphertext(ring.seal)
        evaluator.add_many(products, result)
        expected = halves(result)
        for kernel in KERNELS:
            np.testing.assert_array_equal(combine([block], weights, q, kernel=kernel)[0], expected)
        got = combine([block], weights, q)[0]
        # SEAL's decryption of its result (NTT form) and ours of the kernel's output agree.
        plain = sealapi.Plaintext()
        sealapi.Decryptor(ring.seal, secret).decrypt(result, plain)
        seal_plain = ring.reduce(ring.intt(np.fromiter(map(plain.data, range(n)), dtype=np.int64, count=n)))
        ours = ring.reduce(got[:n] + ring.intt(ring.mulmod(got[n:], secret_ntt(context, ring))))
        np.testing.assert_array_equal(ours, seal_plain)


# -- refusals ------------------------------------------------------------------------------------


GOOD = np.zeros((4, 6 * 16), dtype=np.uint8)  # 4 rows of 16 packed values
WEIGHTS = np.ones(4, dtype=np.int64)


def hostile_matrices() -> dict[str, tuple[object, type]]:
    base = np.zeros((4, 6 * 17), dtype=np.uint8)
    return {
        "int64": (np.zeros((4, 16), dtype=np.int64), DtypeError),
        "int8": (np.zeros((4, 96), dtype=np.int8), DtypeError),
        "uint16": (np.zeros((4, 48), dtype=np.uint16), DtypeError),
        "float64": (np.zeros((4, 96)), DtypeError),
        "object": (np.zeros((4, 96), dtype=object), DtypeError),
        "a list": ([[0] * 96] * 4, DtypeError),
        "1-D": (np.zeros(384, dtype=np.uint8), InvalidInputError),
        "3-D": (np.zeros((4, 16, 6), dtype=np.uint8), InvalidInputError),
        "part of a value": (np.zeros((4, 95), dtype=np.uint8), InvalidInputError),
        "strided columns": (np.zeros((4, 192), dtype=np.uint8)[:, ::2], InvalidInputError),
        "reversed rows": (base[::-1, :96], InvalidInputError),
        "broadcast rows": (np.broadcast_to(base[0, :96], (4, 96)), InvalidInputError),
        "overlapping rows": (np.lib.stride_tricks.as_strided(base, (4, 96), (6, 1)), InvalidInputError),
        "Fortran order": (np.asfortranarray(np.zeros((4, 96), dtype=np.uint8)), InvalidInputError),
        "no rows": (np.zeros((0, 96), dtype=np.uint8), InvalidInputError),
        "no columns": (np.zeros((4, 0), dtype=np.uint8), InvalidInputError),
        "other shape": (np.zeros((4, 48), dtype=np.uint8), InvalidInputError),
    }


@pytest.mark.parametrize("name", sorted(hostile_matrices()))
def test_hostile_arrays_are_refused(name: str) -> None:
    matrix, error = hostile_matrices()[name]
    with pytest.raises(error):
        _core.modular_combine([GOOD, matrix], WEIGHTS, Q)
    if isinstance(matrix, np.ndarray) and matrix.ndim == 2 and matrix.shape[1] == 96:
        with pytest.raises(error):
            _core.modular_multiply(matrix, np.zeros(16, dtype=np.int64), Q)


@pytest.mark.parametrize(
    "weights, error",
    [
        (np.ones(3, dtype=np.int64), InvalidInputError),
        (np.ones(5, dtype=np.int64), InvalidInputError),
        (np.ones((4, 1), dtype=np.int64), InvalidInputError),
        (np.ones(8, dtype=np.int64)[::2], InvalidInputError),
        (np.ones(4, dtype=np.int32), DtypeError),
        (np.ones(4), DtypeError),
    ],
)
def test_bad_weights_are_refused(weights: np.ndarray, error: type) -> None:
    with pytest.raises(error):
        _core.modular_combine([GOOD], weights, Q)


@pytest.mark.parametrize("q", [0, 1, 2, Q + 1, 1 << 48, (1 << 48) + 1, (1 << 50) + 1])
def test_bad_moduli_are_refused(q: int) -> None:
    with pytest.raises(InvalidInputError):
        _core.modular_combine([GOOD], WEIGHTS, q)
    with pytest.raises(InvalidInputError):
        _core.modular_multiply(GOOD, np.zeros(16, dtype=np.int64), q)
    with pytest.raises(TypeError):
        _core.modular_combine([GOOD], WEIGHTS, -Q)


def test_other_bad_calls_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        _core.modular_combine([], WEIGHTS, Q)
    with pytest.raises(InvalidInputError):
        _core.modular_combine([GOOD], WEIGHTS, Q, kernel="sse9")
    with pytest.raises(InvalidInputError):
        _core.modular_multiply(GOOD, np.full(16, Q, dtype=np.int64), Q)  # b must be below q
    with pytest.raises(InvalidInputError):
        _core.modular_multiply(GOOD, np.full(16, -1, dtype=np.int64), Q)
    with pytest.raises(InvalidInputError):
        _core.modular_multiply(GOOD, np.zeros(15, dtype=np.int64), Q)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bad", [Q, Q + 1, 1 << 47, PACKED_LIMIT - 1])  # stored values above q - 1
@pytest.mark.parametrize("where", [(0, 0), (3, 8 * 5 + 2), (7, 8 * 6 + 3)])  # first value, SIMD body, tail
def test_values_out_of_range_are_refused(kernel: str, bad: int, where: tuple[int, int]) -> None:
    matrix = pack(np.zeros((8, 8 * 6 + 4), dtype=np.int64), Q)
    row, col = where
    matrix[row, 6 * col : 6 * col + 6] = list(bad.to_bytes(6, "little"))
    with pytest.raises(InvalidInputError, match="out of range"):
        combine([np.zeros_like(matrix), matrix], np.ones(8), kernel=kernel)
    with pytest.raises(InvalidInputError, match="out of range"):
        _core.modular_multiply(matrix, np.zeros(matrix.shape[1] // 6, dtype=np.int64), Q)


def test_a_bad_value_in_many_threads_is_one_exception() -> None:
    rng = np.random.default_rng(7)
    matrices = [pack(centred(rng, 64, 2048), Q) for _ in range(12)]
    for m in matrices[::2]:
        m[5, 600:606] = list(Q.to_bytes(6, "little"))  # stored q: one past the largest value
    for _ in range(3):
        with pytest.raises(InvalidInputError, match="out of range"):
            combine(matrices, np.ones(64), n_threads=4)
    fine = matrices[1::2]
    np.testing.assert_array_equal(combine(fine, np.ones(64), n_threads=4), reference(fine, np.ones(64)))


# -- threads and the GIL ---------------------------------------------------------------------------


def test_concurrent_calls_equal_serial_ones() -> None:
    rng = np.random.default_rng(8)
    matrices = [centred(rng, 128, 4096) for _ in range(6)]
    probes = [rng.integers(-(1 << 14), 1 << 14, 128) for _ in range(12)]
    serial = [combine(matrices, w, n_threads=1) for w in probes]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda w: combine(matrices, w, n_threads=0), probes))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def test_the_gil_is_released_while_scoring() -> None:
    rng = np.random.default_rng(9)
    matrices = [centred(rng, 512, 8192) for _ in range(4)] * 16  # 2 GB read, on one thread
    span: list[float] = []

    def score() -> None:
        span.append(time.perf_counter())
        combine(matrices, np.ones(512), n_threads=1)
        span.append(time.perf_counter())

    worker = threading.Thread(target=score)
    ticks = []
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
    worker.join()
    start, end = span[0] + 0.02, span[1] - 0.02
    assert end - start > 0.05
    # This thread ran while the kernel did: a kernel holding the GIL would have stopped it.
    assert sum(start < t < end for t in ticks) > 1000


# -- the galleries score with the kernel, as the reference does ---------------------------------------


def same_scores(a, b) -> None:  # type: ignore[no-untyped-def]
    for field in ("a", "b", "index", "row"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert (a.key_id, a.scale_bits, a.q) == (b.key_id, b.scale_bits, b.q)
    assert a.to_bytes() == b.to_bytes()


def unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_blocks_score_as_the_reference(parties: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, secret = parties
    dim = 48
    templates, probe = unit(4200, dim, 10), unit(1, dim, 11)[0]
    blocks = CiphertextBlocks(context, dim)
    blocks.apply(blocks.stage(quantise(templates, 23)))
    blocks.erase(7)
    weights = quantise(probe, blocks.probe_scale_bits)
    live = [np.setdiff1d(np.arange(4096), [7]), np.arange(104)]
    slots = np.array([0, 4095, 4096, 4199, 8, 4096])
    native_all, native_some = blocks.request_all(weights, live), blocks.request(slots, weights)
    with _kernel.reference_scoring():
        same_scores(native_all, blocks.request_all(weights, live))
        same_scores(native_some, blocks.request(slots, weights))
    plain = templates @ probe
    np.testing.assert_allclose(secret.scores(native_some), plain[[0, 4095, 4096, 4199, 8, 4096]], atol=2e-4)
    with ThreadPoolExecutor(3) as pool:
        for request in pool.map(lambda _: blocks.request_all(weights, live), range(6)):
            same_scores(request, native_all)


def test_a_gallery_holding_values_out_of_range_refuses_to_score(parties: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, _ = parties
    blocks = CiphertextBlocks(context, 16)
    blocks.apply(blocks.stage(quantise(unit(20, 16, 16), 23)))
    weights = quantise(unit(1, 16, 17)[0], blocks.probe_scale_bits)
    at = 6 * (4096 + 5)
    blocks._data[0][3, at : at + 6] = list(Q.to_bytes(6, "little"))  # a c1 value no honest ciphertext holds
    with pytest.raises(InvalidInputError, match="out of range"):
        blocks.request_all(weights, [np.arange(20)])
    with pytest.raises(InvalidInputError, match="out of range"):
        blocks.request(np.array([2]), weights)


def test_rows_score_as_the_reference(parties: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, secret = parties
    dim = 64
    templates, probe = unit(300, dim, 12), unit(1, dim, 13)[0]
    rows = CiphertextRows(context, dim)
    rows.apply(rows.stage(quantise(templates, 23)))
    weights = quantise(probe, rows.probe_scale_bits)
    slots = np.array([0, 63, 64, 299, 5, 64])
    native = rows.request(slots, weights)
    with _kernel.reference_scoring():
        same_scores(native, rows.request(slots, weights))
    np.testing.assert_allclose(secret.scores(native), templates[slots] @ probe, atol=2e-4)


def test_encrypted_gallery_scores_as_the_reference(parties: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, _ = parties
    dim = 32
    templates, probe = unit(4100, dim, 14).astype(np.float32), unit(1, dim, 15).astype(np.float32)
    names = [f"s{i}" for i in range(4100)]
    gallery = EncryptedGallery(context, dim, n_threads=2)
    gallery.enrol(names, templates)
    gallery.withdraw("s9")
    request, slots = gallery.identification_request(probe)
    one = gallery.verification_request("s4099", probe)
    with _kernel.reference_scoring():
        expected, expected_slots = gallery.identification_request(probe)
        same_scores(one, gallery.verification_request("s4099", probe))
    same_scores(request, expected)
    np.testing.assert_array_equal(slots, expected_slots)


def test_a_batch_of_probes_gets_the_requests_of_one_probe_at_a_time(parties: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, _ = parties
    dim = 24
    templates, probes = unit(4200, dim, 18).astype(np.float32), unit(6, dim, 19).astype(np.float32)
    gallery = EncryptedGallery(context, dim, n_threads=2)
    gallery.enrol([f"s{i}" for i in range(4200)], templates)
    gallery.withdraw("s17")
    requests, slots = gallery.identification_requests(probes)
    assert len(requests) == len(probes)
    for probe, request in zip(probes, requests):
        one, one_slots = gallery.identification_request(probe)
        same_scores(request, one)
        np.testing.assert_array_equal(slots, one_slots)
    with _kernel.reference_scoring():
        for request, expected in zip(requests, gallery.identification_requests(probes)[0]):
            same_scores(request, expected)
    with pytest.raises(InvalidInputError):
        gallery.identification_requests(np.zeros((0, dim), dtype=np.float32))


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_batch_at_the_ends_of_the_range_is_exact(kernel: str) -> None:
    # Nine probes (more than one group of eight), rows past a pass and not a multiple of eight,
    # every stored value at an end of its range, weights at the ends of int64.
    rows, cols = 4097 + 3, 8 * 2 + 3
    rng = np.random.default_rng(43)
    values = rng.choice(np.array([-H, H, 0], dtype=np.int64), (rows, cols))
    weights = rng.choice(np.array([Q - 1, INT64.max, INT64.min, -(Q - 1), 0], dtype=np.int64), (9, rows))
    batch = _core.modular_combine([pack(values, Q)], weights, Q, kernel=kernel)
    for p in range(len(weights)):
        np.testing.assert_array_equal(batch[p], exact([values], weights[p]))


def test_packing_reduces_any_representative_and_round_trips() -> None:
    # SEAL's residues, centred values and sums of them pack to the same bytes as their centred form.
    rng = np.random.default_rng(43)
    centred_values = np.concatenate([centred(rng, 3, 50), np.array([[-H, H, 0, 1, -1] * 10] * 2)])
    residues = np.mod(centred_values, Q)
    shifted = centred_values + Q * rng.integers(-(1 << 15), 1 << 15, centred_values.shape)
    packed = pack(centred_values, Q)
    assert packed.shape == (5, 300) and packed.dtype == np.uint8
    for same in (residues, shifted, np.asfortranarray(centred_values), centred_values[:, ::-1][:, ::-1]):
        np.testing.assert_array_equal(pack(same, Q), packed)
    np.testing.assert_array_equal(unpack(packed, Q), centred_values)
    expected = [(int(v) % Q + H) % Q for v in centred_values[0, :8]]  # stored u = centred x + h
    assert [int.from_bytes(packed[0, 6 * i : 6 * i + 6].tobytes(), "little") for i in range(8)] == expected
    np.testing.assert_array_equal(unpack(packed[:, 6:30], Q), centred_values[:, 1:5])  # a strided view
    assert unpack(b"", Q).shape == (0,) and pack(np.zeros((0, 4), dtype=np.int64), Q).shape == (0, 24)
    for extreme in (np.iinfo(np.int64).min, np.iinfo(np.int64).max):
        np.testing.assert_array_equal(unpack(pack(np.array([extreme]), Q), Q), [((extreme % Q) + H) % Q - H])


@pytest.mark.parametrize("bad", [Q, 1 << 47, PACKED_LIMIT - 1])
def test_unpacking_refuses_stored_values_above_q(bad: int) -> None:
    stored = pack(np.zeros((2, 3), dtype=np.int64), Q)
    stored[1, 6:12] = list(bad.to_bytes(6, "little"))
    with pytest.raises(CiphertextFormatError, match="out of range"):
        unpack(stored, Q)
    with pytest.raises(CiphertextFormatError, match="6-byte units"):
        unpack(stored[:, :5], Q)
