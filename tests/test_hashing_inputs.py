"""Input validation and invariances of CancellableHash.protect."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fpmatch import CancellableHash, DtypeError, HashKey, InvalidInputError, KeyFileError, _core

KEY = HashKey(bytes(range(7, 39)))
DIM = 64
BITS = 256


def _unit_rows(rng: np.random.Generator, n: int, d: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def scheme() -> CancellableHash:
    return CancellableHash(KEY, DIM, BITS)


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return _unit_rows(np.random.default_rng(1), 40)


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("bad", ["nan", "+inf", "-inf", "zero"])
@pytest.mark.parametrize("row", [0, 5, 13, 39])  # rows in the first and in later blocks of 8
@pytest.mark.parametrize("n_threads", [0, 1])
def test_non_finite_or_zero_row_names_the_row(bad: str, row: int, n_threads: int, batch: np.ndarray) -> None:
    x = batch.copy()
    if bad == "zero":
        x[row] = 0.0
    else:
        x[row, 3] = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}[bad]
    scheme = CancellableHash(KEY, DIM, BITS, n_threads=n_threads)
    with pytest.raises(InvalidInputError, match=rf"\b{row}\b") as info:
        scheme.protect(x)
    message = str(info.value)
    assert re.search(r"zero" if bad == "zero" else r"NaN|Inf", message)
    # The other rows are valid: removing the bad one makes the batch acceptable.
    assert scheme.protect(np.delete(x, row, axis=0)).shape == (39, BITS // 8)


def test_bad_single_template(scheme: CancellableHash) -> None:
    x = np.zeros(DIM, dtype=np.float32)
    with pytest.raises(InvalidInputError, match="zero"):
        scheme.protect(x)
    x[0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        scheme.protect(x)


def test_tiny_but_nonzero_template_is_accepted(scheme: CancellableHash, batch: np.ndarray) -> None:
    x = batch[:3] * np.float32(1e-30)
    np.testing.assert_array_equal(scheme.protect(x), scheme.protect(batch[:3]))


# --------------------------------------------------------------------------- dtype and shape


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.int64, np.uint8, np.complex64, bool])
def test_wrong_dtype_raises_dtype_error(dtype, scheme: CancellableHash, batch: np.ndarray) -> None:
    x = batch.astype(dtype)
    with pytest.raises(DtypeError) as info:
        scheme.protect(x)
    assert isinstance(info.value, TypeError)
    with pytest.raises(DtypeError):
        scheme.protect(x[0])


def test_big_endian_float32_is_not_silently_cast(scheme: CancellableHash, batch: np.ndarray) -> None:
    with pytest.raises(DtypeError):
        scheme.protect(batch.astype(">f4"))


@pytest.mark.parametrize("value", [[0.1] * DIM, [[0.1] * DIM] * 3, (0.1,) * DIM, 1.0, None])
def test_non_array_input_raises_dtype_error(value, scheme: CancellableHash) -> None:
    with pytest.raises(DtypeError):
        scheme.protect(value)


@pytest.mark.parametrize("shape", [(DIM - 1,), (DIM + 1,), (3, DIM - 1), (3, 2 * DIM), (0,), (3, 0)])
def test_wrong_dim_raises(shape, scheme: CancellableHash) -> None:
    x = np.ones(shape, dtype=np.float32)
    with pytest.raises(InvalidInputError):
        scheme.protect(x)


@pytest.mark.parametrize("shape", [(2, 3, DIM), (1, 1, DIM), ()])
def test_wrong_ndim_raises(shape, scheme: CancellableHash) -> None:
    with pytest.raises(InvalidInputError):
        scheme.protect(np.ones(shape, dtype=np.float32))


def test_fortran_order_raises(scheme: CancellableHash, batch: np.ndarray) -> None:
    f = np.asfortranarray(batch[:10])
    assert not f.flags.c_contiguous
    with pytest.raises(InvalidInputError):
        scheme.protect(f)
    # Also through the native hasher directly.
    with pytest.raises(InvalidInputError):
        _core.ProjectionHasher(KEY.secret, DIM, BITS).hash(f)


def test_inner_strided_view_raises(scheme: CancellableHash, batch: np.ndarray) -> None:
    wide = np.repeat(batch, 2, axis=1)
    with pytest.raises(InvalidInputError):
        scheme.protect(wide[:, ::2])


def test_reversed_rows_raise(scheme: CancellableHash, batch: np.ndarray) -> None:
    with pytest.raises(InvalidInputError):
        scheme.protect(batch[::-1])
    # A single reversed row is just one row: fine.
    np.testing.assert_array_equal(scheme.protect(batch[:1][::-1]), scheme.protect(batch[:1]))


@pytest.mark.parametrize("n_threads", [0, 1, 2])
def test_row_strided_view_equals_contiguous_copy(n_threads: int, batch: np.ndarray) -> None:
    scheme = CancellableHash(KEY, DIM, BITS, n_threads=n_threads)
    wide = np.empty((len(batch), DIM + 1), dtype=np.float32)
    wide[:, 0] = np.nan  # must not be read
    wide[:, 1:] = batch
    view = wide[:, 1:]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(scheme.protect(view), scheme.protect(np.ascontiguousarray(view)))
    # Every other row of a batch: row stride of two rows.
    np.testing.assert_array_equal(scheme.protect(batch[::2]), scheme.protect(batch[::2].copy()))
    # The input is not modified.
    assert np.isnan(wide[:, 0]).all()
    np.testing.assert_array_equal(wide[:, 1:], batch)


def test_single_template_accepted(scheme: CancellableHash, batch: np.ndarray) -> None:
    one = scheme.protect(batch[7])
    assert one.shape == (1, BITS // 8) and one.dtype == np.uint8
    np.testing.assert_array_equal(one, scheme.protect(batch[7:8]))
    np.testing.assert_array_equal(one[0], scheme.protect(batch)[7])


def test_empty_batch_sliced(scheme: CancellableHash, batch: np.ndarray) -> None:
    out = scheme.protect(batch[:0])
    assert out.shape == (0, BITS // 8) and out.dtype == np.uint8


def test_empty_batch_fresh(scheme: CancellableHash) -> None:
    x = np.empty((0, DIM), dtype=np.float32)
    assert x.flags.c_contiguous
    out = scheme.protect(x)
    assert out.shape == (0, BITS // 8) and out.dtype == np.uint8


def test_input_not_modified_and_output_owned(scheme: CancellableHash, batch: np.ndarray) -> None:
    x = batch.copy()
    codes = scheme.protect(x)
    np.testing.assert_array_equal(x, batch)
    assert codes.flags.c_contiguous and codes.flags.owndata
    codes[:] = 0  # writing to the result does not affect later results
    assert scheme.protect(x).any()


# --------------------------------------------------------------------------- invariances


def test_positive_scale_invariance() -> None:
    rng = np.random.default_rng(2)
    x = _unit_rows(rng, 200, 512)
    scheme = CancellableHash(KEY, 512, 1024)
    base = scheme.protect(x)
    for scale in (4.0, 0.25, 1024.0):  # exact in floating point
        np.testing.assert_array_equal(scheme.protect(x * np.float32(scale)), base)
    np.testing.assert_array_equal(scheme.protect(x * np.float32(3.7)), base)
    # Per-row scales, not only one global factor.
    scales = rng.uniform(0.01, 100.0, (200, 1)).astype(np.float32)
    assert (np.unpackbits(scheme.protect(x * scales) ^ base)).sum() <= 2
    # A negative scale flips every bit (no projection is exactly zero).
    np.testing.assert_array_equal(scheme.protect(-x), ~base)


def test_offset_component_is_ignored_with_full_removal() -> None:
    rng = np.random.default_rng(8)
    u = _unit_rows(rng, 1, 128)[0]
    x = _unit_rows(rng, 100, 128)
    x -= np.outer(x @ u, u).astype(np.float32)
    scheme = CancellableHash(KEY, 128, 512, offset=u, offset_removal=1.0)
    shifted = x + np.float32(2.0) * u  # adding the offset direction changes nothing
    diff = np.unpackbits(scheme.protect(x) ^ scheme.protect(shifted)).mean()
    assert diff < 1e-3
    # Partial removal keeps 30% of the u component: the shift then matters, less than without removal.
    partial = CancellableHash(KEY, 128, 512, offset=u, offset_removal=0.7)
    partial_diff = np.unpackbits(partial.protect(x) ^ partial.protect(shifted)).mean()
    plain = CancellableHash(KEY, 128, 512)
    plain_diff = np.unpackbits(plain.protect(x) ^ plain.protect(shifted)).mean()
    assert plain_diff > 0.05
    assert diff < partial_diff < plain_diff
    with pytest.raises(InvalidInputError):
        CancellableHash(KEY, 128, 512, offset=u, offset_removal=0.0)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1001])
def test_multithreaded_equals_single_threaded(n: int) -> None:
    x = _unit_rows(np.random.default_rng(n), n, 512)
    single = CancellableHash(KEY, 512, 1024, n_threads=1).protect(x)
    np.testing.assert_array_equal(CancellableHash(KEY, 512, 1024).protect(x), single)
    np.testing.assert_array_equal(CancellableHash(KEY, 512, 1024, n_threads=2).protect(x), single)
    np.testing.assert_array_equal(CancellableHash(KEY, 512, 1024, n_threads=5).protect(x), single)
    # Row i's code does not depend on the other rows of the batch.
    np.testing.assert_array_equal(CancellableHash(KEY, 512, 1024).protect(x[-1]), single[-1:])


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("bits", [0, 8, 32, 100, 128 + 8, 8192 + 64])
def test_bad_bits_rejected(bits: int) -> None:
    with pytest.raises(InvalidInputError):
        CancellableHash(KEY, DIM, bits)


@pytest.mark.parametrize("bits", [64, 192, 8192])
def test_valid_bits_accepted(bits: int) -> None:
    scheme = CancellableHash(KEY, 8, bits)
    assert scheme.code_size == bits // 8
    assert scheme.protect(np.ones(8, dtype=np.float32)).shape == (1, bits // 8)


@pytest.mark.parametrize("dim", [0, 1, 65537])
def test_bad_dim_rejected(dim: int) -> None:
    with pytest.raises(InvalidInputError):
        CancellableHash(KEY, dim, 64)


def test_short_key_rejected() -> None:
    with pytest.raises(KeyFileError):
        HashKey(b"k" * 15)
    with pytest.raises(InvalidInputError):
        _core.ProjectionHasher(b"k" * 15, DIM, BITS)
    _core.ProjectionHasher(b"k" * 16, DIM, BITS)  # 16 bytes is the minimum


@pytest.mark.parametrize(
    "offset",
    [
        np.full(DIM, 1.0, dtype=np.float32),  # not unit
        np.full(DIM, 0.5 / np.sqrt(DIM), dtype=np.float32),  # norm 0.5
        np.zeros(DIM, dtype=np.float32),
        np.eye(1, DIM + 1, dtype=np.float32)[0],  # wrong length
        np.eye(1, DIM - 1, dtype=np.float32)[0],
        np.eye(1, DIM, dtype=np.float32),  # 2-D
        np.where(np.arange(DIM) == 0, np.nan, 0.0).astype(np.float32),
    ],
    ids=["ones", "half-norm", "zero", "long", "short", "2d", "nan"],
)
def test_bad_offset_rejected(offset: np.ndarray) -> None:
    with pytest.raises(InvalidInputError):
        CancellableHash(KEY, DIM, BITS, offset=offset)


def test_offset_wrong_dtype_rejected() -> None:
    with pytest.raises(DtypeError):
        CancellableHash(KEY, DIM, BITS, offset=np.eye(1, DIM, dtype=np.float64)[0])


def test_nearly_unit_offset_accepted() -> None:
    u = np.eye(1, DIM, dtype=np.float32)[0] * np.float32(1.0004)
    CancellableHash(KEY, DIM, BITS, offset=u)


def test_strided_offset_view_equals_contiguous_copy() -> None:
    rng = np.random.default_rng(4)
    dim = 8
    u = rng.standard_normal(dim).astype(np.float32)
    u /= np.linalg.norm(u)
    backing = np.zeros(2 * dim, dtype=np.float32)
    backing[::2] = u
    backing[1:8:2] = u[4:]  # makes backing[:dim] a (different) unit vector too
    view = backing[::2]
    x = _unit_rows(rng, 50, dim)
    expected = CancellableHash(KEY, dim, 128, offset=np.ascontiguousarray(view)).protect(x)
    try:
        got = CancellableHash(KEY, dim, 128, offset=view).protect(x)
    except InvalidInputError:
        return  # refusing a strided offset would also be correct
    np.testing.assert_array_equal(got, expected)


def test_scheme_metadata(scheme: CancellableHash) -> None:
    assert scheme.scheme == "srp-v2" and scheme.offset_removal == 0.5
    assert scheme.code_size == BITS // 8
    assert scheme.projection_matrix().shape == (DIM, BITS)
    assert scheme.score(0) == pytest.approx(1.0)
    assert scheme.score(BITS // 2) == pytest.approx(0.0, abs=1e-12)
    assert scheme.score(BITS) == pytest.approx(-1.0)
    for d in (0, 1, 17, BITS // 2, BITS - 1, BITS):
        assert scheme.distance_for_score(scheme.score(d)) == d
    with pytest.raises(InvalidInputError):
        scheme.distance_for_score(1.5)
