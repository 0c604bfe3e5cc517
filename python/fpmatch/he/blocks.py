"""Encrypted templates packed N to a block, by dimension, for scoring a whole gallery.

Layout (as in :mod:`fpmatch.he.encrypted`): block b keeps one ciphertext per
dimension j, whose coefficient t encrypts dimension j of the template in slot
``b * N + t``. A probe scores a block with d integer-scalar multiply-adds of
its ciphertexts; the key holder receives the c1 half of the result (one ring
element per block) and, for each slot asked about, coefficient t of the c0 half.

Storage. A block's c1 halves are stored once, and each slot's d coefficients
of c0 (its "column", the only values that depend on its template) are stored
with its subject, so enrolling one subject writes d numbers and erasing one
deletes them. Columns of empty slots (fresh encryptions of zero) are never
stored: they exist only in the memory of the process that created the block, so
a copy of the store taken before an enrolment holds nothing the enrolled column
could be compared with. Without them, an empty slot of a block restored from
the store decrypts to noise that no one without the secret key can cancel, so a
restored block takes no more templates: enrolment opens a new block, and at most
one partly filled block is left per restart. Erased slots are not reused either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import AuthenticationError, InvalidInputError
from ._kernel import combine
from .context import PublicContext
from .scores import EncryptedScores


@dataclass(frozen=True)
class StagedBlocks:
    """What enrolling a batch would change, not yet applied."""

    slots: list[int]  # one per template, in order
    columns: list[bytes]  # one per template: its stored c0 column
    blocks: dict[int, np.ndarray]  # blocks created: their whole (d, 2N) data
    used: dict[int, int]  # slots filled in each touched block afterwards
    filled: dict[int, np.ndarray]  # block -> (d, k) values written into slots ``fill_slots[block]``
    fill_slots: dict[int, list[int]]


class CiphertextBlocks:
    """Blocks of column-packed ciphertexts under one public context."""

    def __init__(self, context: PublicContext, dim: int) -> None:
        n = context.ring.n
        self.probe_scale_bits = context.params.probe_scale_bits_for(dim)  # checks dim too
        self.context = context
        self.dim = dim
        self.n = n
        self._data: list[np.ndarray] = []  # (d, 2N) int64 per block, centred: c0 coefficients | c1 NTT values
        self.used: list[int] = []
        self._columns_known = False  # whether the last block's empty columns exist in this process

    @property
    def count(self) -> int:
        return len(self._data)

    def stage(self, values: np.ndarray) -> StagedBlocks:
        """Where fixed-point templates (m, d) int64 would go, and everything that would change."""
        n, ring = self.n, self.context.ring
        m = len(values)
        blocks: dict[int, np.ndarray] = {}
        used: dict[int, int] = {}
        filled: dict[int, np.ndarray] = {}
        fill_slots: dict[int, list[int]] = {}
        slots: list[int] = []
        done = 0
        last = self.count - 1
        if last >= 0 and self.used[last] < n and self._columns_known:
            take = min(n - self.used[last], m)
            start = self.used[last]
            filled[last] = values[:take].T
            fill_slots[last] = list(range(start, start + take))
            used[last] = start + take
            done = take
        position = self.count
        while done < m:
            take = min(n, m - done)
            blocks[position] = self._fresh()
            filled[position] = values[done : done + take].T
            fill_slots[position] = list(range(take))
            used[position] = take
            done += take
            position += 1
        columns = []
        for b, ts in fill_slots.items():
            data = blocks[b] if b in blocks else self._data[b]
            written = ring.centre(data[:, ts] + filled[b])
            if b in blocks:
                blocks[b][:, ts] = written
            columns += [np.ascontiguousarray(written[:, i], dtype="<i8").tobytes() for i in range(len(ts))]
            slots += [b * n + t for t in ts]
        return StagedBlocks(slots, columns, blocks, used, filled, fill_slots)

    def apply(self, staged: StagedBlocks) -> None:
        """Write a staged batch into memory (after the store committed it)."""
        for b in sorted(set(staged.used)):
            if b in staged.blocks:
                self._data.append(staged.blocks[b])
                self.used.append(0)
            else:
                ts = staged.fill_slots[b]
                self._data[b][:, ts] = self.context.ring.centre(self._data[b][:, ts] + staged.filled[b])
            self.used[b] = staged.used[b]
        self._columns_known = True

    def column(self, slot: int) -> bytes:
        """The stored form of a slot's c0 column."""
        b, t = self._where(slot)
        return np.ascontiguousarray(self._data[b][:, t], dtype="<i8").tobytes()

    def c1_bytes(self, block: int) -> bytes:
        """A block's c1 halves as stored (d x N int64 little-endian)."""
        return np.ascontiguousarray(self._data[block][:, self.n :], dtype="<i8").tobytes()

    def erase(self, slot: int) -> None:
        """Zero the only coefficients that encrypt the slot's template."""
        b, t = self._where(slot)
        self._data[b][:, t] = 0

    def load(self, blocks: list[tuple[bytes, int, int]], columns: dict[int, bytes]) -> None:
        """Replace everything with stored blocks (c1 bytes, slots used, 1) and slot columns."""
        d, n, half_q = self.dim, self.n, self.context.ring.q // 2
        self._data, self.used = [], []
        for b, (c1, used, _) in enumerate(blocks):
            if len(c1) != 8 * d * n or not 0 <= used <= n:
                raise AuthenticationError(f"stored ciphertext block {b} has the wrong size")
            data = np.zeros((d, 2 * n), dtype=np.int64)
            data[:, n:] = np.frombuffer(c1, dtype="<i8").reshape(d, n)
            self._data.append(data)
            self.used.append(int(used))
        for slot, column in columns.items():
            b, t = self._where(slot)
            if len(column) != 8 * d:
                raise AuthenticationError(f"stored column of slot {slot} has the wrong size")
            self._data[b][:, t] = np.frombuffer(column, dtype="<i8")
        if any((np.abs(data) > half_q).any() for data in self._data):
            raise AuthenticationError("stored ciphertexts hold values out of range")
        self._columns_known = False

    def request(self, slots: np.ndarray, weights: np.ndarray) -> EncryptedScores:
        """Encrypted scores of the fixed-point probe ``weights`` (d,) against ``slots``, in order."""
        q, n = self.context.ring.q, self.n
        block_of, coefficient = np.divmod(np.asarray(slots, dtype=np.int64), n)
        blocks, row = np.unique(block_of, return_inverse=True)
        alpha = combine([self._data[b][:, n:] for b in blocks.tolist()], weights, q)
        columns = [self._data[b][:, t : t + 1] for b, t in zip(block_of.tolist(), coefficient.tolist())]
        beta = combine(columns, weights, q)[:, 0]
        return self._scores(alpha, beta, coefficient, row.astype(np.int64).reshape(-1))

    def request_all(self, weights: np.ndarray, live: list[np.ndarray]) -> EncryptedScores:
        """Encrypted scores against the slots ``live[b]`` (coefficients, ascending) of each block b.

        One product of the probe with each block that has a live slot, on every core.
        """
        n = self.n
        chosen = [b for b, slots in enumerate(live) if len(slots)]
        product = combine([self._data[b] for b in chosen], weights, self.context.ring.q)
        counts = [len(live[b]) for b in chosen]
        return self._scores(
            np.ascontiguousarray(product[:, n:]),
            np.concatenate([product[i, live[b]] for i, b in enumerate(chosen)]),
            np.concatenate([live[b] for b in chosen]),
            np.repeat(np.arange(len(chosen), dtype=np.int64), counts),
        )

    def ciphertexts(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every ciphertext held, block by block, as (c0 coefficients, c1 NTT values)."""
        return [(data[j, : self.n], data[j, self.n :]) for data in self._data for j in range(self.dim)]

    def _fresh(self) -> np.ndarray:
        c0, c1 = self.context.encrypt_zeros(self.dim)
        return np.concatenate([c0, c1], axis=1)

    def _scores(self, alpha: np.ndarray, beta: np.ndarray, index: np.ndarray, row: np.ndarray) -> EncryptedScores:
        params = self.context.params
        return EncryptedScores(
            key_id=self.context.key_id,
            scale_bits=params.template_scale_bits + self.probe_scale_bits,
            q=self.context.ring.q,
            a=alpha,
            b=np.asarray(beta, dtype=np.int64),
            index=np.asarray(index, dtype=np.int64),
            row=np.asarray(row, dtype=np.int64),
        )

    def _where(self, slot: int) -> tuple[int, int]:
        b, t = divmod(int(slot), self.n)
        if not 0 <= b < self.count or t >= self.used[b]:
            raise InvalidInputError(f"slot {slot} holds no template")
        return b, t
