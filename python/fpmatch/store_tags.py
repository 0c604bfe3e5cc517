"""Authentication of the store's rows: a tag per row and a census per table.

Each row that decides what the service does (subjects, ciphertext rows,
consent records, settings) carries an HMAC-SHA256 tag under a key derived
from the service key, over the table name, the row's id and every field, and
over a random identifier of its store. A row edited, moved to another id or
copied from another store under the same key no longer verifies.

A tag cannot show that a row was deleted, so each table also has a census:
its row count and the XOR of its rows' tags, kept in the (tagged) settings
and updated in the same transaction as the rows. Tags are outputs of a keyed
function, so no set of rows other than the real one gives the same census to
someone without the key. A whole database rolled back to an older copy of
itself still verifies; the audit head kept outside the store detects that.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Iterable, Union

Field = Union[None, int, str, bytes]
TAG_BYTES = 32
_DOMAIN = b"fpmatch.store-row.v1\x00"
#: Tables whose rows carry tags and have a census, with the column that identifies a row.
TAGGED_TABLES = {"subjects": "id", "he_rows": "row", "consents": "consent_id"}


def _encode(value: Field) -> bytes:
    """Typed and length-prefixed, so that no two different field lists encode alike."""
    if value is None:
        return b"n"
    if isinstance(value, bool):
        raise TypeError("a tagged field is never a bool")
    if isinstance(value, int):
        raw, kind = str(value).encode(), b"i"
    elif isinstance(value, str):
        raw, kind = value.encode("utf-8", "surrogatepass"), b"s"
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw, kind = bytes(value), b"b"
    else:
        raise TypeError(f"cannot tag a field of type {type(value).__name__}")
    return kind + len(raw).to_bytes(8, "big") + raw


class RowTagger:
    """Tags rows of one store: its key and its identifier."""

    def __init__(self, key: bytes, store_id: bytes) -> None:
        self._key = key
        self._prefix = _DOMAIN + _encode(store_id)

    def tag(self, table: str, row_id: Field, fields: Iterable[Field]) -> bytes:
        mac = hmac.new(self._key, self._prefix, hashlib.sha256)
        mac.update(_encode(table) + _encode(row_id))
        for value in fields:
            mac.update(_encode(value))
        return mac.digest()

    def verify(self, table: str, row_id: Field, fields: Iterable[Field], tag: object) -> bool:
        if not isinstance(tag, bytes) or len(tag) != TAG_BYTES:
            return False
        return hmac.compare_digest(self.tag(table, row_id, fields), tag)


@dataclass
class Census:
    """Row count and XOR of row tags of one table."""

    count: int = 0
    digest: bytes = bytes(TAG_BYTES)

    def add(self, tag: bytes) -> None:
        self.count += 1
        self._fold(tag)

    def remove(self, tag: bytes) -> None:
        self.count -= 1
        self._fold(tag)

    def _fold(self, tag: bytes) -> None:
        folded = int.from_bytes(self.digest, "big") ^ int.from_bytes(tag[:TAG_BYTES], "big")
        self.digest = folded.to_bytes(TAG_BYTES, "big")

    def to_json(self) -> list[object]:
        return [self.count, self.digest.hex()]

    @classmethod
    def from_json(cls, value: object) -> "Census":
        if not (isinstance(value, list) and len(value) == 2 and type(value[0]) is int and isinstance(value[1], str)):
            raise ValueError(f"not a table census: {value!r}")
        digest = bytes.fromhex(value[1])
        if len(digest) != TAG_BYTES:
            raise ValueError("a table census digest is 32 bytes")
        return cls(value[0], digest)

    @classmethod
    def of(cls, tags: Iterable[object]) -> "Census":
        census = cls()
        for tag in tags:
            census.add(bytes(tag) if isinstance(tag, (bytes, memoryview)) else b"")
        return census


__all__ = ["Census", "RowTagger", "TAGGED_TABLES", "TAG_BYTES"]
