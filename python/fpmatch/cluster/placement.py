"""Placement: which shard holds a subject, and which stored row a shard's ciphertext row is.

Subjects go to shards by a keyed hash of their id (HMAC-SHA256 under a
subkey of the service key), so the placement is stable across restarts and
nodes and says nothing to anyone without the key. The shard count is fixed
when a store is first opened by a sharded service and recorded in it.

Packed ciphertext rows (``hybrid``) and blocks (``he``) belong to one shard
and are numbered per shard. One store holds every shard's rows, numbered from
0 without gaps in the order they were first written; :class:`RowLayout` says
which shard and local row each stored row is. It is kept in store settings of
:data:`LAYOUT_CHUNK` rows each (``cluster_rows.0``, ``cluster_rows.1``, ...),
written in the same transaction as the rows: new rows rewrite the last chunk
and add new ones, never the whole layout (10 million ``hybrid`` templates are
1.25 million rows).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable, Sequence

from ..errors import InvalidInputError, StoreFormatError
from ..service import SHARDS_SETTING

#: Store settings ``cluster_rows.<i>``: the (shard, local row) of stored rows ``i * LAYOUT_CHUNK`` onwards,
#: in stored order. A store written before chunks holds the whole layout in ``cluster_rows`` itself.
LAYOUT_SETTING = "cluster_rows"
#: Rows per layout setting.
LAYOUT_CHUNK = 4096
#: Most shards one service places subjects on.
MAX_SHARDS = 4096


def check_count(name: str, value: object, most: int) -> int:
    """A positive integer count (shards, replicas), bounded."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise InvalidInputError(f"{name} must be an integer in [1, {most}], got {value!r}")
    return value


class Placement:
    """Subject id -> shard, under a secret placement key."""

    def __init__(self, key: bytes, shards: int) -> None:
        self._key = key
        self.shards = check_count("shards", shards, MAX_SHARDS)

    def shard_of(self, subject: str) -> int:
        digest = hmac.new(self._key, subject.encode("utf-8"), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "little") % self.shards

    def split(self, subjects: Sequence[str]) -> dict[int, list[int]]:
        """Positions of ``subjects`` per shard (shards in ascending order, positions in order)."""
        parts: dict[int, list[int]] = {}
        for position, subject in enumerate(subjects):
            parts.setdefault(self.shard_of(subject), []).append(position)
        return dict(sorted(parts.items()))


class RowLayout:
    """Stored row number <-> (shard, the shard's own row number)."""

    def __init__(self, entries: Sequence[tuple[int, int]] = (), *, whole_setting: bool = False) -> None:
        self.entries = [(int(s), int(r)) for s, r in entries]
        self._stored = {entry: i for i, entry in enumerate(self.entries)}
        self._whole_setting = whole_setting  # read from the one setting of earlier versions

    @classmethod
    def from_store(cls, meta: Callable[[str], Any], stored_rows: int, shards: int) -> "RowLayout":
        """The layout a store recorded, read by ``meta`` (a store's setting reader)."""
        whole = meta(LAYOUT_SETTING)
        if whole is not None:
            layout = cls.from_setting(whole, stored_rows, shards)
            layout._whole_setting = True
            return layout
        value: list[Any] = []
        while len(value) < stored_rows:
            chunk = meta(f"{LAYOUT_SETTING}.{len(value) // LAYOUT_CHUNK}")
            if chunk is None:
                break
            if not isinstance(chunk, list) or not chunk or len(chunk) > LAYOUT_CHUNK:
                raise StoreFormatError("the store's row layout setting is malformed")
            value += chunk
            if len(chunk) < LAYOUT_CHUNK:
                break
        return cls.from_setting(value or None, stored_rows, shards)

    @classmethod
    def from_setting(cls, value: Any, stored_rows: int, shards: int) -> "RowLayout":
        """The layout a store recorded (None: a store whose rows all belong to shard 0, if one shard)."""
        if value is None:
            if stored_rows and shards != 1:
                raise StoreFormatError(
                    f"this store's {stored_rows} ciphertext rows were written by a single service: "
                    "open it with one shard"
                )
            return cls([(0, r) for r in range(stored_rows)])
        if not isinstance(value, list) or not all(
            isinstance(e, list) and len(e) == 2 and all(isinstance(v, int) and v >= 0 for v in e) for e in value
        ):
            raise StoreFormatError("the store's row layout setting is malformed")
        layout = cls([(s, r) for s, r in value])
        if len(layout.entries) < stored_rows or len(layout._stored) != len(layout.entries):
            raise StoreFormatError("the store's row layout does not cover its ciphertext rows")
        if any(s >= shards for s, _ in layout.entries):
            raise StoreFormatError("the store's row layout names shards this service does not have")
        return layout

    def stored(self, shard: int, local: int) -> int | None:
        return self._stored.get((shard, local))

    def fresh(self, shard: int, locals_: Sequence[int], pending: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
        """The shard's rows among ``locals_`` that neither this layout nor ``pending`` numbers, ascending."""
        known = set(pending)
        return [(shard, r) for r in sorted(set(map(int, locals_))) if (shard, r) not in self._stored and (shard, r) not in known]

    def settings_for(self, pending: Sequence[tuple[int, int]]) -> dict[str, Any]:
        """The settings that record this layout with ``pending`` appended: the chunks the new rows fall
        in (all of them, and the end of the one setting, for a layout read from earlier versions)."""
        first = 0 if self._whole_setting else len(self.entries) // LAYOUT_CHUNK
        tail = [[s, r] for s, r in self.entries[first * LAYOUT_CHUNK :]] + [[s, r] for s, r in pending]
        settings: dict[str, Any] = {
            f"{LAYOUT_SETTING}.{first + i}": tail[i * LAYOUT_CHUNK : (i + 1) * LAYOUT_CHUNK]
            for i in range(-(-len(tail) // LAYOUT_CHUNK))
        }
        if self._whole_setting:
            settings[LAYOUT_SETTING] = None
        return settings

    def append(self, pending: Sequence[tuple[int, int]]) -> None:
        """Number ``pending`` after every row (once the settings of :meth:`settings_for` are committed)."""
        for entry in pending:
            self._stored[entry] = len(self.entries)
            self.entries.append(entry)
        if pending:
            self._whole_setting = False

    def of_shard(self, shard: int, rows: Sequence[Any]) -> list[Any]:
        """The shard's stored rows in its own order (its rows are numbered 0.. without gaps)."""
        return [rows[i] for i in self.numbers_of(shard, len(rows))]

    def numbers_of(self, shard: int, stored_rows: int) -> list[int]:
        """The stored row numbers of the shard's rows, in its own order (of the first ``stored_rows``)."""
        mine = sorted((local, i) for i, (s, local) in enumerate(self.entries[:stored_rows]) if s == shard)
        if [local for local, _ in mine] != list(range(len(mine))):
            raise StoreFormatError(f"the ciphertext rows of shard {shard} are not numbered without gaps")
        return [i for _, i in mine]
