"""The packed form of ciphertext values: 6 bytes each, in memory, at rest and in the kernel.

A value x, centred mod q (``[-h, h]`` with ``h = (q - 1) / 2``), is stored as ``u = x + h`` in
``[0, q - 1]``, 48-bit little-endian: a row of k values is ``6k`` bytes (uint8). The data prime is
below 2**48, so every value fits; zero is stored as ``h``. The native kernel
(``cpp/modular_scan.h``) reads this form directly. Stored bytes holding a value above ``q - 1``
are refused wherever they are read.
"""

from __future__ import annotations

import numpy as np

from .errors import CiphertextFormatError

#: Bytes per stored value.
PACKED_BYTES = 6
#: Stored values must be below this (so the data prime is too).
PACKED_LIMIT = 1 << 48


def pack(centred: np.ndarray, q: int) -> np.ndarray:
    """Values centred mod q (int64, shape (..., k)) -> their packed bytes (uint8, shape (..., 6k))."""
    return _stored_bytes(np.asarray(centred, dtype=np.int64) + q // 2)


def pack_residues(residues: np.ndarray, q: int) -> np.ndarray:
    """Values in [0, q) (as SEAL holds them) -> packed bytes, centring on the way."""
    stored = np.asarray(residues, dtype=np.int64) + q // 2
    stored[stored >= q] -= q
    return _stored_bytes(stored)


def _stored_bytes(stored: np.ndarray) -> np.ndarray:
    """Stored values (int64 in [0, 2**48)) -> their low 6 bytes, little-endian."""
    as_bytes = stored.astype("<u8", copy=False).reshape(stored.shape + (1,)).view(np.uint8)[..., :PACKED_BYTES]
    return np.ascontiguousarray(as_bytes).reshape(stored.shape[:-1] + (stored.shape[-1] * PACKED_BYTES,))


def stored_values(packed: np.ndarray | bytes) -> np.ndarray:
    """The stored ``u`` of packed bytes (uint8 (..., 6k) array or bytes), as uint64 (..., k)."""
    raw = np.frombuffer(packed, dtype=np.uint8) if isinstance(packed, (bytes, bytearray, memoryview)) else packed
    if raw.shape[-1] % PACKED_BYTES:
        raise CiphertextFormatError(f"packed ciphertext values come in {PACKED_BYTES}-byte units, got {raw.shape[-1]} bytes")
    shape = raw.shape[:-1] + (raw.shape[-1] // PACKED_BYTES,)
    flat = np.ascontiguousarray(raw).reshape(-1)
    total = flat.size // PACKED_BYTES
    out = np.empty(total, dtype="<u8")
    if total:
        # Each value but the last read as the 8 bytes starting at it, the 2 past it masked off.
        overlapping = np.ndarray((total - 1,), dtype="<u8", buffer=flat, strides=(PACKED_BYTES,))
        np.bitwise_and(overlapping, np.uint64(PACKED_LIMIT - 1), out=out[:-1])
        out[-1] = int.from_bytes(flat[-PACKED_BYTES:].tobytes(), "little")
    return out.reshape(shape)


def unpack(packed: np.ndarray | bytes, q: int) -> np.ndarray:
    """Packed bytes -> values centred mod q (int64); a stored value above q - 1 is refused."""
    stored = stored_values(packed)
    if stored.size and int(stored.max()) > q - 1:
        raise CiphertextFormatError("packed ciphertext values out of range for this modulus")
    return stored.astype(np.int64) - q // 2


def zero_bytes(count: int, q: int) -> bytes:
    """The packed form of ``count`` zeros (what erasure writes)."""
    return pack(np.zeros(count, dtype=np.int64), q).tobytes()


def from_stored(data: bytes, count: int, q: int) -> np.ndarray:
    """``count`` stored values as packed bytes (uint8 (6 * count,)).

    Packed bytes are checked and kept as they are; the int64 form of earlier file and store
    versions (8 bytes a value, centred, told apart by its length) is checked and packed.
    Anything else, or a value out of range, raises :class:`CiphertextFormatError`.
    """
    if len(data) == PACKED_BYTES * count:
        packed = np.frombuffer(data, dtype=np.uint8)
        unpack(packed, q)  # checks the range
        return packed
    if len(data) == 8 * count:
        values = np.frombuffer(data, dtype="<i8")
        if (np.abs(values) > q // 2).any():
            raise CiphertextFormatError("stored ciphertext values out of range for this modulus")
        return pack(values, q)
    raise CiphertextFormatError(
        f"{len(data)} bytes of ciphertext where {count} values take {PACKED_BYTES * count} (packed) "
        f"or {8 * count} (int64, earlier versions)"
    )


def same_values(stored: bytes, held: bytes, q: int) -> bool:
    """Whether stored bytes (packed, or int64 from an earlier version) hold the values of packed ``held``."""
    if stored == held:
        return True
    try:
        return from_stored(stored, len(held) // PACKED_BYTES, q).tobytes() == held
    except CiphertextFormatError:
        return False


def int64_form(packed: bytes, q: int) -> bytes:
    """Packed values in the int64 form of earlier versions (what an older store row held)."""
    return unpack(packed, q).astype("<i8").tobytes()
