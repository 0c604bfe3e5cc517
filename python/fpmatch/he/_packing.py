"""The packed form of ciphertext values: 6 bytes each, in memory, at rest and in the kernel.

A value x, centred mod q (``[-h, h]`` with ``h = (q - 1) / 2``), is stored as ``u = x + h`` in
``[0, q - 1]``, 48-bit little-endian: a row of k values is ``6k`` bytes (uint8). The data prime is
below 2**48, so every value fits; zero is stored as ``h``. Packing and unpacking are native
(``cpp/packed_values.h``), and the scoring kernel (``cpp/modular_scan.h``) reads this form in
place. Stored bytes holding a value above ``q - 1`` are refused wherever they are read.
"""

from __future__ import annotations

import numpy as np

from .. import _core
from ..errors import InvalidInputError
from .errors import CiphertextFormatError

#: Bytes per stored value.
PACKED_BYTES = 6
#: Stored values must be below this (so the data prime is too).
PACKED_LIMIT = 1 << 48


def pack(values: np.ndarray, q: int) -> np.ndarray:
    """Values mod q (int64, shape (..., k), any representatives: centred, SEAL's residues in
    [0, q), or sums of them) -> their packed bytes (uint8, shape (..., 6k)), in one native pass."""
    values = np.asarray(values, dtype=np.int64)
    shape = values.shape
    rows = np.ascontiguousarray(values.reshape(-1, shape[-1] if shape else 1))
    return _core.pack_values(rows, q).reshape(shape[:-1] + (PACKED_BYTES * (shape[-1] if shape else 1),))


def unpack(packed: np.ndarray | bytes, q: int) -> np.ndarray:
    """Packed bytes -> values centred mod q (int64); a stored value above q - 1 is refused."""
    raw = np.frombuffer(packed, dtype=np.uint8) if isinstance(packed, (bytes, bytearray, memoryview)) else packed
    if raw.shape[-1] % PACKED_BYTES:
        raise CiphertextFormatError(f"packed ciphertext values come in {PACKED_BYTES}-byte units, got {raw.shape[-1]} bytes")
    shape = raw.shape[:-1] + (raw.shape[-1] // PACKED_BYTES,)
    if raw.size == 0:
        return np.zeros(shape, dtype=np.int64)
    rows = raw.reshape(-1, raw.shape[-1])
    if rows.strides[-1] != 1 or (len(rows) > 1 and rows.strides[0] < rows.shape[1]):
        rows = np.ascontiguousarray(rows)
    try:
        return _core.unpack_values(rows, q).reshape(shape)
    except InvalidInputError:
        raise CiphertextFormatError("packed ciphertext values out of range for this modulus") from None


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
