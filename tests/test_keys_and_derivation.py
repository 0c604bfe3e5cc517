"""Keys and key derivation: SHA-256 / HMAC-SHA256 known answers, pinned derivation,
independence of codes under different keys, and key files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import stat

import numpy as np
import pytest

import fpmatch
from fpmatch import CancellableHash, HashKey, KeyFileError, _core

# --------------------------------------------------------------------------- SHA-256

SHA256_VECTORS = [  # FIPS 180-2, appendix B
    (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    (
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    ),
    (b"a" * 1_000_000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
]


@pytest.mark.parametrize("message, digest", SHA256_VECTORS, ids=["abc", "empty", "448-bit", "million-a"])
def test_sha256_known_answers(message: bytes, digest: str) -> None:
    assert _core.sha256(message).hex() == digest


def test_sha256_matches_hashlib_on_many_lengths() -> None:
    rng = np.random.default_rng(20240601)
    # Every length 0..300 covers the one- and two-block padding cases (55, 56, 63, 64, 119, 120, ...).
    for length in range(0, 301):
        data = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        assert _core.sha256(data) == hashlib.sha256(data).digest(), length


# --------------------------------------------------------------------------- HMAC-SHA256

RFC4231 = [
    # (case, key, data, HMAC-SHA-256)
    (1, b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (2, b"Jefe", b"what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (3, b"\xaa" * 20, b"\xdd" * 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (4, bytes(range(1, 26)), b"\xcd" * 50, "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (
        6,
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    (
        7,
        b"\xaa" * 131,
        b"This is a test using a larger than block-size key and a larger than block-size data. "
        b"The key needs to be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
]


@pytest.mark.parametrize("case, key, data, tag", RFC4231, ids=[f"rfc4231-{c[0]}" for c in RFC4231])
def test_hmac_sha256_rfc4231(case: int, key: bytes, data: bytes, tag: str) -> None:
    assert _core.hmac_sha256(key, data).hex() == tag


def test_hmac_sha256_matches_python_on_random_inputs() -> None:
    rng = np.random.default_rng(4231)
    key_lengths = list(range(0, 201, 7)) + [63, 64, 65, 127, 128, 129, 200]
    msg_lengths = list(range(0, 301, 11)) + [55, 56, 63, 64, 65, 119, 120, 128, 300]
    for i, key_len in enumerate(key_lengths):
        key = rng.integers(0, 256, key_len, dtype=np.uint8).tobytes()
        for msg_len in msg_lengths[i % 3 :: 3] + [0, 64]:
            msg = rng.integers(0, 256, msg_len, dtype=np.uint8).tobytes()
            expected = hmac.new(key, msg, hashlib.sha256).digest()
            assert _core.hmac_sha256(key, msg) == expected, (key_len, msg_len)


def test_derive_subkey_is_hmac_of_purpose_label() -> None:
    master = bytes(range(32))
    for purpose in ("transform", "index-mac", "gallery-mac", ""):
        expected = hmac.new(master, b"fpmatch.subkey.v1." + purpose.encode(), hashlib.sha256).digest()
        assert _core.derive_subkey(master, purpose) == expected
    assert _core.derive_subkey(master, "transform") != _core.derive_subkey(master, "index-mac")


# --------------------------------------------------------------------------- pinned derivation
#
# The values below pin key derivation, the key-stream-to-weight mapping and the
# code layout. THEY MUST NEVER CHANGE: a change re-keys every enrolled gallery
# silently (stored codes stop matching fresh probes). If one of these tests
# fails, the change is a new scheme version, not a fix to these numbers.

FIXED_KEY = bytes(range(32))

PINNED_TRANSFORM_SUBKEY = "4889017654d8a03c1e5ba4cf082f70a42000077533e49bf66ab9a66cd190bc53"
PINNED_INDEX_MAC_SUBKEY = "17ee78594525b5c9f05d2ccd76da48cb165fde7f3e382bf3a7418f59ff99b0aa"
PINNED_KEY_ID = "5726570e9429b7b8"
# ProjectionHasher(FIXED_KEY, dim=16, bits=64).weights().ravel()[:8]
PINNED_WEIGHTS_16x64 = [42907.0, 30590.0, 9926.0, 68126.0, 45107.0, -10711.0, 49109.0, 1045.0]

FIXED_TEMPLATES = np.array(
    [
        [1.0, 0.5, -0.25, -0.75, 1.5, -1.0, 0.3, -0.6],
        [-0.9, 0.2, 1.1, -0.4, 0.05, 0.8, -1.3, 0.7],
        [0.6, -0.1, -1.2, 0.35, 0.9, -0.45, 0.15, 1.05],
        [2.5, 0.4, -0.7, 1.3, -0.2, -1.6, 0.9, 0.45],
    ],
    dtype=np.float32,
)
FIXED_OFFSET = np.array([0.5, -0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)  # unit length

# CancellableHash(HashKey(FIXED_KEY), dim=8, bits=128).protect(FIXED_TEMPLATES)
PINNED_CODES_128 = [
    "acb359498c393e2fb71f3bd949d5fc24",
    "9bc8adb650b46b32e8cac401a462d3b6",
    "e4739e8b4652b4cfc35eafda691be868",
    "ac335acb8e7394cbd7bc2bf9cbd7a808",
]
# The same with offset=FIXED_OFFSET, offset_removal=1.0 (all of the offset removed)
PINNED_CODES_128_OFFSET = [
    "acb35b498c393e2fb71f3bd949d7fc24",
    "9bc8adb650b56b22a8cac401a462d3b6",
    "e4739e8b4653b4cfc35eafda691be868",
    "ac33d84bee5394cf571d2ffa4b9fa809",
]

# The same with offset=FIXED_OFFSET and the default offset_removal=0.7
# srp-v2 (the default scheme), offset removal 0.7.
PINNED_CODES_128_OFFSET_V2 = [
    "ac2153698c999ecbb70f2bb9c97f9e84",
    "7f986df650256b22e86054c120207df6",
    "f073d8070e131453938e0f3ae74fdae8",
    "c843d04bae4b145b979c093b4bef9881",
]
PINNED_WEIGHTS_16x64_V2 = [
    "0x1.6672940000000p-2",
    "0x1.f1960e0000000p-3",
    "0x1.31c96e0000000p-3",
    "0x1.d50ecc0000000p-3",
    "0x1.2226de0000000p-2",
    "0x1.aa2af20000000p-4",
]
PINNED_CODES_128_OFFSET_DEFAULT = [
    "acb35b498c393e2fb71f3bd949d7fc24",
    "9bc8adb650b56b22a8cac401a462d3b6",
    "e4739e8b4653b4cfc35eafda691be868",
    "ac33da4bee7394cf571c2bfb4b97a809",
]


def test_pinned_codes_with_partial_offset_removal() -> None:
    scheme = CancellableHash(
        HashKey(FIXED_KEY), dim=8, bits=128, offset=FIXED_OFFSET, offset_removal=0.7, scheme="srp-v1"
    )
    codes = scheme.protect(FIXED_TEMPLATES)
    assert [row.tobytes().hex() for row in codes] == PINNED_CODES_128_OFFSET_DEFAULT
    reference, margin = _numpy_codes(scheme, FIXED_TEMPLATES, FIXED_OFFSET, 0.7)
    assert margin > 1e-3
    np.testing.assert_array_equal(codes, reference)


def test_pinned_subkeys_and_key_id() -> None:
    assert _core.derive_subkey(FIXED_KEY, "transform").hex() == PINNED_TRANSFORM_SUBKEY
    assert HashKey(FIXED_KEY).subkey("index-mac").hex() == PINNED_INDEX_MAC_SUBKEY
    assert HashKey(FIXED_KEY).key_id == PINNED_KEY_ID


def test_pinned_projection_weights() -> None:
    w = _core.ProjectionHasher(FIXED_KEY, 16, 64, scheme="srp-v1").weights()
    assert w.shape == (16, 64) and w.dtype == np.float32
    assert w.ravel()[:8].tolist() == PINNED_WEIGHTS_16x64
    # Entries are integers: a sum of four 16-bit lanes minus 131070.
    assert np.all(w == np.round(w))
    assert np.all(np.abs(w) <= 131070)


def _numpy_codes(
    scheme: CancellableHash, x: np.ndarray, offset: np.ndarray | None, removal: float = 1.0
) -> tuple[np.ndarray, float]:
    """Reference codes in float64 and the smallest |projection| relative to |x'| |w_j|."""
    w = scheme.projection_matrix().astype(np.float64)
    xs = x.astype(np.float64)
    if offset is not None:
        u = offset.astype(np.float64)
        xs = xs - removal * np.outer(xs @ u, u)
    proj = xs @ w
    margin = np.abs(proj) / (np.linalg.norm(xs, axis=1)[:, None] * np.linalg.norm(w, axis=0)[None, :])
    return np.packbits(proj > 0, axis=1, bitorder="little"), float(margin.min())


@pytest.mark.parametrize(
    "offset, pinned", [(None, PINNED_CODES_128), (FIXED_OFFSET, PINNED_CODES_128_OFFSET)], ids=["plain", "offset"]
)
def test_pinned_codes_and_numpy_reference(offset: np.ndarray | None, pinned: list[str]) -> None:
    scheme = CancellableHash(
        HashKey(FIXED_KEY), dim=8, bits=128, offset=offset, offset_removal=1.0, scheme="srp-v1"
    )
    codes = scheme.protect(FIXED_TEMPLATES)
    assert codes.shape == (4, 16) and codes.dtype == np.uint8
    assert [row.tobytes().hex() for row in codes] == pinned
    # Independent recomputation from the exported projection matrix.
    reference, margin = _numpy_codes(scheme, FIXED_TEMPLATES, offset)
    assert margin > 1e-3  # no projection is close enough to zero for rounding to matter
    np.testing.assert_array_equal(codes, reference)


def _gram_schmidt_groups(w: np.ndarray, depth: int) -> np.ndarray:
    """srp-v2 from srp-v1 weights (dim, bits): columns orthonormalised in groups of ``depth``."""
    out = w.astype(np.float64).T.copy()
    for j in range(len(out)):
        for prev in range(j - j % depth, j):
            out[j] -= (out[j] @ out[prev]) * out[prev]
        out[j] /= np.linalg.norm(out[j])
    return out.T


@pytest.mark.parametrize("dim, bits", [(8, 128), (16, 64), (200, 256)])
def test_srp_v2_is_srp_v1_orthonormalised_in_groups(dim: int, bits: int) -> None:
    v1 = _core.ProjectionHasher(FIXED_KEY, dim, bits, scheme="srp-v1").weights()
    v2 = _core.ProjectionHasher(FIXED_KEY, dim, bits).weights()
    depth = min(dim, 128)
    np.testing.assert_allclose(v2, _gram_schmidt_groups(v1, depth), atol=1e-6)
    for start in range(0, bits, depth):
        group = v2[:, start : start + depth].astype(np.float64)
        np.testing.assert_allclose(group.T @ group, np.eye(group.shape[1]), atol=1e-5)


def test_pinned_srp_v2_codes_and_weights() -> None:
    scheme = CancellableHash(HashKey(FIXED_KEY), dim=8, bits=128, offset=FIXED_OFFSET, offset_removal=0.7)
    assert scheme.scheme == "srp-v2"
    assert [row.tobytes().hex() for row in scheme.protect(FIXED_TEMPLATES)] == PINNED_CODES_128_OFFSET_V2
    w = _core.ProjectionHasher(FIXED_KEY, 16, 64).weights()
    assert [float(v).hex() for v in w.ravel()[:6]] == PINNED_WEIGHTS_16x64_V2
    reference, margin = _numpy_codes(scheme, FIXED_TEMPLATES, FIXED_OFFSET, 0.7)
    assert margin > 1e-3
    np.testing.assert_array_equal(scheme.protect(FIXED_TEMPLATES), reference)


def test_reliabilities_are_normalised_projection_magnitudes() -> None:
    scheme = CancellableHash(HashKey(FIXED_KEY), dim=8, bits=128, offset=FIXED_OFFSET, offset_removal=0.7)
    codes, reliability = scheme.protect_with_reliability(FIXED_TEMPLATES)
    np.testing.assert_array_equal(codes, scheme.protect(FIXED_TEMPLATES))
    w = scheme.projection_matrix().astype(np.float64)
    x = FIXED_TEMPLATES.astype(np.float64)
    u = FIXED_OFFSET.astype(np.float64)
    proj = np.abs((x - 0.7 * np.outer(x @ u, u)) @ w)
    np.testing.assert_allclose(reliability, proj / proj.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-7)
    assert reliability.dtype == np.float32 and reliability.shape == (4, 128)


def test_numpy_reference_on_random_inputs() -> None:
    rng = np.random.default_rng(99)
    scheme = CancellableHash(HashKey(FIXED_KEY), dim=64, bits=256)
    x = rng.standard_normal((200, 64)).astype(np.float32)
    codes = scheme.protect(x)
    w = scheme.projection_matrix().astype(np.float64)
    proj = x.astype(np.float64) @ w
    rel = np.abs(proj) / (np.linalg.norm(x, axis=1)[:, None] * np.linalg.norm(w, axis=0)[None, :])
    reference = np.packbits(proj > 0, axis=1, bitorder="little")
    bits = np.unpackbits(codes, axis=1, bitorder="little").astype(bool)
    ref_bits = np.unpackbits(reference, axis=1, bitorder="little").astype(bool)
    safe = rel > 1e-4
    assert safe.mean() > 0.99
    np.testing.assert_array_equal(bits[safe], ref_bits[safe])


def test_projection_depends_on_dim_and_key() -> None:
    w8 = _core.ProjectionHasher(FIXED_KEY, 8, 64).weights()
    w16 = _core.ProjectionHasher(FIXED_KEY, 16, 64).weights()
    other = _core.ProjectionHasher(bytes(range(1, 33)), 16, 64).weights()
    assert not np.array_equal(w8, w16[:8])
    assert not np.any(np.all(w16 == other, axis=0))


@pytest.mark.parametrize("offset", [None, FIXED_OFFSET], ids=["plain", "offset"])
def test_longer_code_extends_shorter(offset: np.ndarray | None) -> None:
    key = HashKey(FIXED_KEY)
    rng = np.random.default_rng(5)
    x = np.vstack([FIXED_TEMPLATES, rng.standard_normal((50, 8)).astype(np.float32)])
    c128 = CancellableHash(key, 8, 128, offset=offset).protect(x)
    c256 = CancellableHash(key, 8, 256, offset=offset).protect(x)
    c1024 = CancellableHash(key, 8, 1024, offset=offset).protect(x)
    np.testing.assert_array_equal(c256[:, :16], c128)
    np.testing.assert_array_equal(c1024[:, :32], c256)
    w128 = CancellableHash(key, 8, 128).projection_matrix()
    w1024 = CancellableHash(key, 8, 1024).projection_matrix()
    np.testing.assert_array_equal(w1024[:, :128], w128)


# --------------------------------------------------------------------------- key independence


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_different_keys_give_unrelated_codes() -> None:
    rng = np.random.default_rng(11)
    x = _unit_rows(rng, 2000, 512)
    key_a = HashKey(bytes(range(32)))
    key_b = HashKey(bytes(range(100, 132)))
    bits_a = np.unpackbits(CancellableHash(key_a, 512, 1024).protect(x), axis=1, bitorder="little")
    bits_b = np.unpackbits(CancellableHash(key_b, 512, 1024).protect(x), axis=1, bitorder="little")

    differing = (bits_a != bits_b).mean(axis=1)
    assert abs(differing.mean() - 0.5) < 0.02
    assert differing.min() > 0.35 and differing.max() < 0.65  # no template keeps its code

    # Per-bit agreement: bit j under key A vs bit j under key B across templates.
    a = bits_a.astype(np.float64) - bits_a.mean(axis=0)
    b = bits_b.astype(np.float64) - bits_b.mean(axis=0)
    corr = (a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    assert abs(corr.mean()) < 0.01
    assert np.abs(corr).mean() < 0.03  # about 1/sqrt(2000) for independent bits
    assert np.abs(corr).max() < 0.15

    # Distances between templates are preserved under each key but not across keys:
    # the code of x under A says nothing about which template produced a code under B.
    pos = np.arange(200)
    d_same = (bits_a[pos] != bits_a[pos[::-1]]).sum(axis=1)
    d_cross = (bits_a[pos] != bits_b[pos]).sum(axis=1)
    assert abs(d_cross.mean() - d_same.mean()) < 20  # own template under B is as far as a stranger


def test_same_key_gives_identical_codes() -> None:
    rng = np.random.default_rng(12)
    x = _unit_rows(rng, 300, 512)
    one = CancellableHash(HashKey(bytes(range(32))), 512, 1024).protect(x)
    two = CancellableHash(HashKey(bytes(range(32))), 512, 1024).protect(x.copy())
    np.testing.assert_array_equal(one, two)
    # A one-byte change of the key changes the codes.
    changed = bytearray(range(32))
    changed[31] ^= 1
    three = CancellableHash(HashKey(bytes(changed)), 512, 1024).protect(x)
    assert abs((np.unpackbits(one ^ three).mean()) - 0.5) < 0.02


# --------------------------------------------------------------------------- key files


def test_generated_keys_are_random_and_ids_stable() -> None:
    a, b = HashKey.generate(), HashKey.generate()
    assert len(a.secret) == 32 and a.secret != b.secret
    assert a.key_id != b.key_id
    for key in (a, b, HashKey(FIXED_KEY)):
        assert re.fullmatch(r"[0-9a-f]{16}", key.key_id)
        assert key.key_id == key.key_id  # stable between calls
        assert key.key_id == hmac.new(key.secret, b"fpmatch.key-id.v1", hashlib.sha256).hexdigest()[:16]
    assert a.secret.hex() not in repr(a)


def test_key_save_load_round_trip(tmp_path) -> None:
    key = HashKey.generate()
    path = key.save(tmp_path / "hash.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = HashKey.load(path)
    assert loaded.secret == key.secret
    assert loaded.key_id == key.key_id
    assert loaded == key  # the path does not take part in comparison
    assert loaded.path == path.resolve()
    body = json.loads(path.read_text())
    assert body["key_id"] == key.key_id
    # Codes under the reloaded key are the codes under the original key.
    x = _unit_rows(np.random.default_rng(3), 5, 32)
    np.testing.assert_array_equal(CancellableHash(loaded, 32, 256).protect(x), CancellableHash(key, 32, 256).protect(x))
    with pytest.raises(FileExistsError):
        key.save(path)  # never overwrites a key file


def _write_variant(path, body) -> None:
    path.write_text(body if isinstance(body, str) else json.dumps(body))


@pytest.mark.parametrize(
    "tamper",
    [
        "flip-secret",
        "flip-key-id",
        "short-secret",
        "bad-base64",
        "wrong-format",
        "wrong-version",
        "missing-secret",
        "truncated-json",
        "empty",
        "not-utf8",
    ],
)
def test_tampered_key_file_raises(tmp_path, tamper: str) -> None:
    key = HashKey(FIXED_KEY)
    path = key.save(tmp_path / "hash.key")
    body = json.loads(path.read_text())
    if tamper == "flip-secret":
        secret = bytearray(base64.b64decode(body["secret"]))
        secret[0] ^= 0x01
        body["secret"] = base64.b64encode(bytes(secret)).decode()
    elif tamper == "flip-key-id":
        body["key_id"] = ("0" if body["key_id"][0] != "0" else "1") + body["key_id"][1:]
    elif tamper == "short-secret":
        short = bytes(8)
        body["secret"] = base64.b64encode(short).decode()
        body["key_id"] = hmac.new(short, b"fpmatch.key-id.v1", hashlib.sha256).hexdigest()[:16]
    elif tamper == "bad-base64":
        body["secret"] = "!!not base64!!"
    elif tamper == "wrong-format":
        body["format"] = "something-else"
    elif tamper == "wrong-version":
        body["version"] = 2
    elif tamper == "missing-secret":
        del body["secret"]
    if tamper == "truncated-json":
        path.write_text(path.read_text()[:-10])
    elif tamper == "empty":
        path.write_text("")
    elif tamper == "not-utf8":
        path.write_bytes(b"\xff\xfe\x00garbage")
    else:
        _write_variant(path, body)
    with pytest.raises(KeyFileError):
        HashKey.load(path)


@pytest.mark.parametrize("content", ["[1, 2]", "null"])
def test_key_file_with_non_object_json_raises_key_file_error(tmp_path, content: str) -> None:
    path = HashKey(FIXED_KEY).save(tmp_path / "hash.key")
    path.write_text(content)
    with pytest.raises(KeyFileError):
        HashKey.load(path)


def test_missing_key_file_raises_key_file_error(tmp_path) -> None:
    with pytest.raises(KeyFileError):
        HashKey.load(tmp_path / "absent.key")


@pytest.mark.parametrize("secret", [b"", b"x" * 15, "a" * 32, bytearray(32)])
def test_short_or_non_bytes_key_rejected(secret) -> None:
    with pytest.raises(KeyFileError):
        HashKey(secret)


def test_key_error_types_are_value_errors() -> None:
    assert issubclass(KeyFileError, ValueError) and issubclass(KeyFileError, fpmatch.FpmatchError)
