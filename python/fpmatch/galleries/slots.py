"""Which ciphertext slot holds each stored id: a mapping, mirrored in an array the native core reads.

The hybrid path's native call (:meth:`fpmatch.he.rows.CiphertextRows.identify`)
turns the index's shortlisted ids into slots itself, with the GIL released, so
the table is also kept as an int64 array indexed by id (-1: no slot). Ids are
store ids, dense from 0, so the array stays about the size of the gallery.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import numpy as np

from ..errors import InvalidInputError


class SlotTable:
    """id -> slot, as a mapping and as an int64 array (``array[id]``, -1 where the id holds nothing)."""

    def __init__(self) -> None:
        self._slots: dict[int, int] = {}
        self._array = np.full(0, -1, dtype=np.int64)

    @property
    def array(self) -> np.ndarray:
        """The table indexed by id (read it only: the mapping owns it)."""
        return self._array

    def __getitem__(self, id_: int) -> int:
        return self._slots[id_]

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[int]:
        return iter(self._slots)

    def values(self) -> Iterable[int]:
        return self._slots.values()

    def as_dict(self) -> dict[int, int]:
        return dict(self._slots)

    def assign(self, ids: Iterable[int], slots: Iterable[int]) -> None:
        """Place each id in its slot."""
        pairs = [(int(i), int(s)) for i, s in zip(ids, slots)]
        if not pairs:
            return
        if min(i for i, _ in pairs) < 0:
            raise InvalidInputError("store ids are non-negative")
        top = max(i for i, _ in pairs)
        if top >= len(self._array):  # grow by doubling: enrolment is amortised O(1) per id
            grown = np.full(max(top + 1, 2 * len(self._array), 1024), -1, dtype=np.int64)
            grown[: len(self._array)] = self._array
            self._array = grown
        for id_, slot in pairs:
            self._slots[id_] = slot
            self._array[id_] = slot

    def release(self, ids: Iterable[int]) -> None:
        """Forget each id's slot."""
        for id_ in ids:
            del self._slots[int(id_)]
            self._array[int(id_)] = -1

    def reset(self, slots: Mapping[int, int]) -> None:
        """Replace the whole table."""
        self._slots = {}
        self._array = np.full(0, -1, dtype=np.int64)
        self.assign(slots.keys(), slots.values())
