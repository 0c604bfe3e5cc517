"""Searching storage files for pieces of erased codes and ciphertexts.

After an erasure both backends look for what was erased in the files it could
survive in; a partial copy is a copy, so what is looked for is every 16-byte
piece of each erased byte string.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator

import numpy as np

#: Length of the pieces of an erased code searched for (a partial copy is a copy).
PIECE = 16
#: Bytes read and searched at a time (memory stays bounded on large files).
CHUNK = 4 << 20  # larger chunks gain nothing: the passes over one stay in cache


def pieces_of(erased: Iterable[bytes], limit: int | None = None) -> set[bytes]:
    """The aligned 16-byte pieces of each string (of its first ``limit`` bytes when given); runs of
    one byte value are no evidence and are left out."""
    found = set()
    for data in erased:
        end = len(data) if limit is None else min(len(data), limit)
        found.update(data[i : i + PIECE] for i in range(0, end - PIECE + 1, PIECE))
    return {piece for piece in found if len(set(piece)) > 1}


class PieceFinder:
    """Finds any of many 16-byte pieces in a buffer in one pass per byte alignment.

    The first 8 bytes of every position are hashed (multiply-shift) into a bitmap of the
    pieces' hashes; only the few positions that hit are compared in full.
    """

    _BITS = 22
    _MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, pieces: set[bytes]) -> None:
        self.pieces = pieces
        keys = np.array([int.from_bytes(piece[:8], "little") for piece in pieces], dtype=np.uint64)
        self._table = np.zeros(1 << self._BITS, dtype=bool)
        self._table[self._hash(keys)] = True

    def _hash(self, words: np.ndarray) -> np.ndarray:
        return (words * self._MULTIPLIER) >> np.uint64(64 - self._BITS)

    def found(self, data: bytes) -> bool:
        return next(self._hits(data), None) is not None

    def _hits(self, data: bytes) -> Iterator[bytes]:
        for alignment in range(8):
            count = (len(data) - alignment - PIECE) // 8 + 1  # windows that fit whole
            if count <= 0:
                continue
            words = np.frombuffer(data, dtype="<u8", count=count, offset=alignment)
            for hit in np.flatnonzero(self._table[self._hash(words)]).tolist():
                start = alignment + 8 * hit
                if data[start : start + PIECE] in self.pieces:
                    yield data[start : start + PIECE]

    def found_in_file(self, path: str | os.PathLike[str]) -> bool:
        """Whether a piece is in the file."""
        return next(self._hits_in_file(path), None) is not None

    def pieces_in_file(self, path: str | os.PathLike[str]) -> set[bytes]:
        """Every piece that occurs in the file."""
        return set(self._hits_in_file(path))

    def _hits_in_file(self, path: str | os.PathLike[str]) -> Iterator[bytes]:
        """Read in overlapping chunks (a piece may straddle two)."""
        with open(path, "rb") as f:
            tail = b""
            while chunk := f.read(CHUNK):
                yield from self._hits(tail + chunk)
                tail = chunk[-(PIECE - 1) :]


__all__ = ["PIECE", "PieceFinder", "pieces_of"]
