"""Encrypted templates packed N to a block, by dimension, for scoring a whole gallery.

Layout (as in :mod:`fpmatch.he.encrypted`): block b keeps one ciphertext per
dimension j, whose coefficient t encrypts dimension j of the template in slot
``b * N + t``. A probe scores a block with d integer-scalar multiply-adds of
its ciphertexts; the key holder receives the c1 half of the result (one ring
element per block) and, for each slot asked about, coefficient t of the c0 half.

Storage. A block's c1 halves are stored once, and each slot's d coefficients
of c0 (its "column", the only values that depend on its template) are stored
with its subject, so enrolling one subject writes d numbers and erasing one
deletes them. Columns of empty slots (encryptions of zero) are never stored:
they exist only in the memory of the process that made them, so a copy of the
store taken before an enrolment holds nothing the enrolled column could be
compared with.

Memory and storage hold every value packed in 6 bytes (:mod:`fpmatch.he._packing`): a block
is a (d, 12N) uint8 array, c0 coefficients in its first 6N bytes of each row and c1 NTT values
in the rest, which the kernel scans in place; a stored column is 6d bytes and a block's stored
c1 halves 6dN. Staging works on int64 copies of the few columns it changes.

Reuse. An erased slot, or an empty one whose column this process does not
know (a block restored from the store), decrypts to noise that nobody without
the secret key can cancel. The key holder can (:mod:`fpmatch.he.reclaim`): a
reclaim adds to each of the block's d ciphertexts a fresh encryption that
makes all such positions encrypt zero again. It changes every column of the
block, so enrolled subjects' stored columns are rewritten with the block; a
block is therefore reclaimed only when enrolment needs slots and it offers at
least what is needed or an eighth of a block, and at most ``MAX_REFRESHES``
times in its life (each adds a unit of fresh noise to every template in it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import AuthenticationError, InvalidInputError
from ._kernel import combine
from ._packing import PACKED_BYTES, from_stored, pack, unpack, zero_bytes
from .context import PublicContext
from .errors import CiphertextFormatError
from .params import MAX_REFRESHES
from .rows import Reclaimer
from .scores import EncryptedScores, scores_under


@dataclass(frozen=True)
class StagedBlocks:
    """What enrolling a batch would change, not yet applied."""

    slots: list[int]  # one per template, in order
    columns: list[bytes]  # one per template: its stored c0 column
    blocks: dict[int, np.ndarray]  # blocks created or reclaimed: their whole new (d, 12N) packed data
    written: dict[int, tuple[list[int], np.ndarray]]  # other blocks: positions and their new (d, 6k) packed columns
    used: dict[int, int]  # per touched block: slots used afterwards
    refreshes: dict[int, int]  # per touched block: fresh encryptions absorbed afterwards
    free: dict[int, set[int]]  # per touched block: positions known to encrypt zero afterwards
    resealed: dict[int, bytes]  # enrolled slots of reclaimed blocks: their new stored column


class CiphertextBlocks:
    """Blocks of column-packed ciphertexts under one public context."""

    def __init__(self, context: PublicContext, dim: int) -> None:
        n = context.ring.n
        self.probe_scale_bits = context.params.probe_scale_bits_for(dim)  # checks dim too
        self.context = context
        self.dim = dim
        self.n = n
        self._data: list[np.ndarray] = []  # (d, 12N) uint8 per block, packed: c0 coefficients | c1 NTT values
        self._zero = np.frombuffer(zero_bytes(1, context.ring.q), dtype=np.uint8)  # one packed zero
        self.used: list[int] = []  # per block: one past the highest position ever filled
        self.refreshes: list[int] = []  # per block: fresh encryptions absorbed (1 at creation)
        self._live: list[set[int]] = []  # per block: positions holding a template
        self._free: list[set[int]] = []  # per block: positions whose column is known (in memory) to encrypt zero
        self.n_threads = 0  # scoring threads for a whole gallery (0: every core)

    @property
    def count(self) -> int:
        return len(self._data)

    def arrays(self) -> list[np.ndarray]:
        """The packed (d, 12N) arrays a whole-gallery search scans (for measuring it; do not modify)."""
        return list(self._data)

    @property
    def nbytes(self) -> int:
        """Ciphertext bytes held in memory (every block, live or not)."""
        return sum(data.nbytes for data in self._data)

    def reclaimable(self, block: int) -> set[int]:
        """Positions of a block that hold no template and no known encryption of zero."""
        return set(range(self.n)) - self._live[block] - self._free[block]

    def stage(self, values: np.ndarray, reclaim: Reclaimer | None = None) -> StagedBlocks:
        """Where fixed-point templates (m, d) int64 would go, and everything that would change.

        Known-free positions are filled first; then, with ``reclaim`` (the key
        holder's help), erased or unknown positions of the blocks that have
        most of them, as long as a block offers at least what is needed or an
        eighth of a block; then new blocks.
        """
        n, ring, m = self.n, self.context.ring, len(values)
        q = ring.q
        places: list[tuple[int, int]] = []
        blocks: dict[int, np.ndarray] = {}  # whole new blocks, packed
        free: dict[int, set[int]] = {}

        def take(b: int) -> None:
            chosen = sorted(free[b])[: m - len(places)]
            free[b].difference_update(chosen)
            places.extend((b, t) for t in chosen)

        for b in range(self.count):
            if len(places) < m and self._free[b]:
                free[b] = set(self._free[b])
                take(b)
        if reclaim is not None and len(places) < m:
            dirty = {b: self.reclaimable(b) for b in range(self.count)}
            for b in sorted(dirty, key=lambda b: -len(dirty[b])):
                if self.refreshes[b] >= MAX_REFRESHES:
                    continue
                if len(places) == m or len(dirty[b]) < min(m - len(places), max(1, n // 8)):
                    break
                mask = np.zeros((self.dim, n), dtype=bool)
                mask[:, sorted(dirty[b])] = True
                fresh = reclaim(unpack(self._data[b][:, PACKED_BYTES * n :], q), mask)
                if fresh is None:
                    break
                renewed = np.concatenate(fresh, axis=1) + unpack(self._data[b], q)
                renewed[:, sorted(dirty[b])] = fresh[0][:, sorted(dirty[b])]  # the reclaim cancels c1*s only
                blocks[b] = pack(renewed, q)
                free[b] = free.get(b, set()) | dirty[b]
                take(b)
        fresh: list[int] = []  # new blocks, filled as their encryptions arrive
        while len(places) < m:
            b = self.count + len(fresh)
            fresh.append(b)
            free[b] = set(range(n))
            take(b)
        # Templates go in block by block, all of a block's columns in one step.
        order: dict[int, list[int]] = {}
        for i, (b, _) in enumerate(places):
            order.setdefault(b, []).append(i)
        written: dict[int, tuple[list[int], np.ndarray]] = {}
        columns: list[bytes] = [b""] * m
        values = np.asarray(values)

        def fill(b: int) -> None:
            chosen = order[b]
            positions = [places[i][1] for i in chosen]
            target = (blocks[b] if b in blocks else self._data[b]).reshape(self.dim, 2 * n, PACKED_BYTES)
            at = _as_slice(positions)  # a run of positions (a new block's) is a view, not a gather
            filled = pack(unpack(target[:, at].reshape(self.dim, -1), q) + values[_as_slice(chosen)].T, q)
            if b in blocks:
                target[:, at] = filled.reshape(self.dim, -1, PACKED_BYTES)
            else:
                written[b] = (positions, filled)
            by_column = np.ascontiguousarray(filled.reshape(self.dim, len(positions), PACKED_BYTES).transpose(1, 0, 2))
            width = by_column.shape[1] * PACKED_BYTES
            flat = by_column.tobytes()
            for k, i in enumerate(chosen):
                columns[i] = flat[k * width : (k + 1) * width]

        for b in order:
            if b not in fresh:
                fill(b)

        unfilled = iter(fresh)

        def new_block(c0: np.ndarray, c1: np.ndarray) -> None:
            b = next(unfilled)
            blocks[b] = np.concatenate([c0, c1], axis=1)
            fill(b)

        self.context.encrypt_zero_batches(self.dim, len(fresh), new_block)
        resealed = {
            b * n + t: blocks[b].reshape(self.dim, 2 * n, PACKED_BYTES)[:, t].tobytes()
            for b in blocks
            if b < self.count
            for t in sorted(self._live[b])
        }
        used = {b: self.used[b] if b < self.count else 0 for b in free}
        for b, t in places:
            used[b] = max(used[b], t + 1)
        refreshes = {b: (self.refreshes[b] if b < self.count else 0) + (b in blocks) for b in free}
        return StagedBlocks([b * n + t for b, t in places], columns, blocks, written, used, refreshes, free, resealed)

    def apply(self, staged: StagedBlocks) -> None:
        """Write a staged batch into memory (after the store committed it)."""
        for b in sorted(staged.used):
            if b >= self.count:
                self._data.append(staged.blocks[b])
                self.used.append(0)
                self.refreshes.append(0)
                self._live.append(set())
                self._free.append(set())
            elif b in staged.blocks:
                old, self._data[b] = self._data[b], staged.blocks[b]
                old.fill(0)  # no stale copy in freed memory
            else:
                positions, columns = staged.written[b]
                self._columns(b)[:, positions] = columns.reshape(self.dim, -1, PACKED_BYTES)
            self.used[b] = staged.used[b]
            self.refreshes[b] = staged.refreshes[b]
            self._free[b] = staged.free[b]
        for slot in staged.slots:
            self._live[slot // self.n].add(slot % self.n)

    def column(self, slot: int) -> bytes:
        """The stored form of a slot's c0 column (d packed values)."""
        b, t = self._where(slot)
        return self._columns(b)[:, t].tobytes()

    def c1_bytes(self, block: int) -> bytes:
        """A block's c1 halves as stored (d x N packed values)."""
        return self._data[block][:, PACKED_BYTES * self.n :].tobytes()

    def erase(self, slot: int) -> None:
        """Zero the only coefficients that encrypt the slot's template (stored zero: (q-1)/2)."""
        b, t = self._where(slot)
        self._columns(b)[:, t] = self._zero
        self._live[b].discard(t)

    def load(self, blocks: list[tuple[bytes, int, int]], columns: dict[int, bytes]) -> None:
        """Replace everything with stored blocks (c1 bytes, slots used, refreshes) and slot columns.

        Stored values are packed (6 bytes each); the int64 form of earlier versions (8 bytes
        each, told apart by its length) is read too and packed.
        """
        d, n, q = self.dim, self.n, self.context.ring.q
        data_list, self.used, self.refreshes = [], [], []
        for b, (c1, used, refreshes) in enumerate(blocks):
            if not 0 <= used <= n or not 1 <= refreshes <= MAX_REFRESHES:
                raise AuthenticationError(f"stored ciphertext block {b} has the wrong size")
            data = np.empty((d, 2 * PACKED_BYTES * n), dtype=np.uint8)
            data[:, : PACKED_BYTES * n] = np.tile(self._zero, n)
            data[:, PACKED_BYTES * n :] = _stored_packed(c1, d * n, q, f"stored ciphertext block {b}").reshape(d, -1)
            data_list.append(data)
            self.used.append(int(used))
            self.refreshes.append(int(refreshes))
        self._data = data_list
        self._live, self._free = [set() for _ in blocks], [set() for _ in blocks]
        for slot, column in columns.items():
            b, t = self._where(slot)
            self._columns(b)[:, t] = _stored_packed(column, d, q, f"stored column of slot {slot}").reshape(d, -1)
            self._live[b].add(t)

    def request(self, slots: np.ndarray, weights: np.ndarray) -> EncryptedScores:
        """Encrypted scores of the fixed-point probe ``weights`` (d,) against ``slots``, in order."""
        q, n = self.context.ring.q, self.n
        block_of, coefficient = np.divmod(np.asarray(slots, dtype=np.int64), n)
        blocks, row = np.unique(block_of, return_inverse=True)
        alpha = combine(
            [self._data[b][:, PACKED_BYTES * n :] for b in blocks.tolist()], weights, q, n_threads=self.n_threads
        )
        columns = [self._columns(b)[:, t] for b, t in zip(block_of.tolist(), coefficient.tolist())]
        beta = combine(columns, weights, q)[:, 0]
        return self._scores(alpha, beta, coefficient, row.astype(np.int64).reshape(-1))

    def request_all(self, weights: np.ndarray, live: list[np.ndarray]) -> EncryptedScores:
        """Encrypted scores against the slots ``live[b]`` (coefficients, ascending) of each block b.

        One product of the probe with each block that has a live slot, on every core.
        """
        (scores,) = self.request_all_batch(np.asarray(weights).reshape(1, -1), live)
        return scores

    def request_all_batch(self, weights: np.ndarray, live: list[np.ndarray]) -> list[EncryptedScores]:
        """:meth:`request_all` for each row of ``weights`` (probes, d), in one sweep over the blocks."""
        n = self.n
        chosen = [b for b, slots in enumerate(live) if len(slots)]
        products = combine(
            [self._data[b] for b in chosen], np.ascontiguousarray(weights, dtype=np.int64), self.context.ring.q,
            n_threads=self.n_threads,
        )
        counts = [len(live[b]) for b in chosen]
        index = np.concatenate([live[b] for b in chosen])
        row = np.repeat(np.arange(len(chosen), dtype=np.int64), counts)
        return [
            self._scores(
                np.ascontiguousarray(product[:, n:]),
                np.concatenate([product[i, live[b]] for i, b in enumerate(chosen)]),
                index,
                row,
            )
            for product in products
        ]

    def ciphertexts(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every ciphertext held, block by block, as (c0 coefficients, c1 NTT values), centred int64."""
        q, half = self.context.ring.q, PACKED_BYTES * self.n
        return [(unpack(data[j, :half], q), unpack(data[j, half:], q)) for data in self._data for j in range(self.dim)]

    def _columns(self, block: int) -> np.ndarray:
        """A block's data as (d, 2N, 6): [:, t] is the packed column of coefficient t (a view)."""
        return self._data[block].reshape(self.dim, 2 * self.n, PACKED_BYTES)

    def _scores(self, alpha: np.ndarray, beta: np.ndarray, index: np.ndarray, row: np.ndarray) -> EncryptedScores:
        return scores_under(self.context, self.probe_scale_bits, alpha, beta, index, row)

    def _where(self, slot: int) -> tuple[int, int]:
        b, t = divmod(int(slot), self.n)
        if not 0 <= b < self.count or t >= self.used[b]:
            raise InvalidInputError(f"slot {slot} holds no template")
        return b, t


def _as_slice(positions: list[int]) -> slice | list[int]:
    """Ascending consecutive positions as a slice; others as they are."""
    if positions and positions[-1] - positions[0] == len(positions) - 1 and positions == sorted(positions):
        return slice(positions[0], positions[-1] + 1)
    return positions


def _stored_packed(data: bytes, count: int, q: int, what: str) -> np.ndarray:
    try:
        return from_stored(data, count, q)
    except CiphertextFormatError as exc:
        raise AuthenticationError(f"{what}: {exc}") from None
