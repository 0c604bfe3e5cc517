"""Encrypted templates packed g = N // d to a ciphertext ("row"), for scoring a few at a time.

Template p of a row sits in coefficients ``p*d .. p*d + d - 1`` of the row's
ciphertext (c0 kept as coefficients, c1 as NTT values, both centred mod q).
Slot ``row * g + p`` names it. A probe w scores one template with the ring
element P(X) = sum_i w_i X^-i: coefficient ``p*d`` of c * P is the inner
product, so the key holder receives c1 * P (NTT values) per row and, per
template, only that coefficient of c0 * P, computed here as d multiply-adds.
The core builds requests (``cpp/hybrid_rescore.h``: the probe's NTT, both
halves, and for the hybrid path the shortlist too, in one call); the Python
assembly over SEAL's NTT stays as the fallback and the reference.

Placing templates first fills erased slots (with the key holder's help, see
:mod:`fpmatch.he.reclaim`), then the last row's free positions, then new
rows. Each row it touches gets a fresh encryption (of zero, or the reclaim
one), so two copies taken before and after do not differ by the plain
template values. Erasing a slot zeroes its d coefficients of c0, the only ones
that depend on its template: no ciphertext left decrypts to it, even with the
secret key. A row stops taking templates after ``MAX_REFRESHES`` fresh
encryptions, which bounds the noise they add.

Every value is held packed in 6 bytes (:mod:`fpmatch.he._packing`): a row is
6N bytes of c0 and 6N of c1, in memory and stored. Stored, a row is c1 then c0: a database may leave a stale copy of the first
bytes of a record in a page it rebalanced, and c1 carries no template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import _core
from ..errors import AuthenticationError, InvalidInputError
from ._kernel import combine, multiply, using_reference
from ._packing import PACKED_BYTES, from_stored, int64_form, pack, unpack, zero_bytes
from .context import PublicContext
from .errors import CiphertextFormatError
from .params import MAX_REFRESHES
from .scores import EncryptedScores, scores_under


@dataclass(frozen=True)
class StagedRows:
    """Rows that placing a batch would write, not yet applied."""

    rows: list[int]  # rows written, ascending
    c0: np.ndarray  # (r, 6N) packed coefficients, one per written row
    c1: np.ndarray  # (r, 6N) packed NTT values
    slots: list[int]  # one per template, in order
    used: list[int]  # templates placed in each written row afterwards
    refreshes: list[int]  # fresh encryptions each written row has absorbed afterwards


#: Fresh ciphertexts that cancel the secret product on a mask: (c1 rows, mask) -> (c0, c1), or None.
Reclaimer = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray] | None"]


class CiphertextRows:
    """Rows of packed ciphertexts under one public context."""

    def __init__(self, context: PublicContext, dim: int) -> None:
        n = context.ring.n
        self.probe_scale_bits = context.params.probe_scale_bits_for(dim)  # checks dim too
        self.context = context
        self.dim = dim
        self.group = n // dim
        self._c0 = np.zeros((0, PACKED_BYTES * n), dtype=np.uint8)  # packed rows
        self._c1 = np.zeros((0, PACKED_BYTES * n), dtype=np.uint8)
        self._zero = np.frombuffer(zero_bytes(dim, context.ring.q), dtype=np.uint8)  # an erased window
        self.count = 0  # rows in use
        self.used: list[int] = []  # templates placed in each row (erased ones included)
        self.refreshes: list[int] = []
        self.erased: set[int] = set()  # slots erased and not yet reclaimed
        self.n_threads = 0  # scoring threads per probe (0: every core)
        ring = context.ring  # the native re-scoring needs the core's NTT to agree with SEAL's
        self._rescorer = _core.HybridRescorer(n, dim, ring.q, ring.psi) if ring.native_ntt else None

    @property
    def row_bytes(self) -> int:
        return 2 * PACKED_BYTES * self.context.ring.n

    def stage(self, values: np.ndarray, reclaim: Reclaimer | None = None) -> StagedRows:
        """Where a batch of fixed-point templates (m, d) int64 would go and the rows it would write.

        With ``reclaim`` (the key holder's help), erased slots are filled
        first; then the last row's free positions, then new rows.
        """
        g, d, n, q = self.group, self.dim, self.context.ring.n, self.context.ring.q
        m = len(values)
        reused = sorted(s for s in self.erased if self.refreshes[s // g] < MAX_REFRESHES)[:m] if reclaim else []
        reclaimed = {row: i for i, row in enumerate(sorted({s // g for s in reused}))}  # row -> reclaim reply row
        fresh = None
        if reclaimed:
            mask = np.zeros((len(reclaimed), n), dtype=bool)
            for s in reused:
                row, p = divmod(s, g)
                mask[reclaimed[row], p * d : (p + 1) * d] = True
            fresh = reclaim(unpack(self._c1[list(reclaimed)], q), mask)  # type: ignore[misc]
        if fresh is None:
            reused, reclaimed = [], {}
        places = [divmod(s, g) for s in reused]
        last = self.count - 1
        if len(places) < m and last >= 0 and self.used[last] < g and self.refreshes[last] < MAX_REFRESHES:
            places += [(last, p) for p in range(self.used[last], min(g, self.used[last] + m - len(places)))]
        places += [(self.count + i // g, i % g) for i in range(m - len(places))]
        rows = sorted({row for row, _ in places})
        at = {row: i for i, row in enumerate(rows)}
        # Every written row absorbs one fresh encryption: the reclaim reply, or one of zero.
        z0, z1 = self.context.encrypt_zeros(len(rows) - len(reclaimed))
        plain = iter(range(len(z0)))
        c0, c1 = np.empty((len(rows), n), dtype=np.int64), np.empty((len(rows), n), dtype=np.int64)
        for i, row in enumerate(rows):
            if row in reclaimed:
                c0[i], c1[i] = fresh[0][reclaimed[row]], fresh[1][reclaimed[row]]  # type: ignore[index]
            else:
                j = next(plain)
                c0[i], c1[i] = z0[j], z1[j]
        base0 = np.array([unpack(self._c0[row], q) if row < self.count else np.zeros(n, dtype=np.int64) for row in rows])
        for s in reused:  # an earlier re-randomisation left noise in erased windows: the reclaim cancels c1*s only
            row, p = divmod(s, g)
            base0[at[row], p * d : (p + 1) * d] = 0
        c0 += base0
        for row in rows:
            if row < self.count:
                c1[at[row]] += unpack(self._c1[row], q)
        used = [self.used[row] if row < self.count else 0 for row in rows]
        for (row, p), value in zip(places, values):
            c0[at[row], p * d : (p + 1) * d] += value
            used[at[row]] = max(used[at[row]], p + 1)
        refreshes = [(self.refreshes[row] if row < self.count else 0) + 1 for row in rows]
        ring = self.context.ring
        packed0, packed1 = pack(c0, q), pack(c1, q)
        return StagedRows(rows, packed0, packed1, [r * g + p for r, p in places], used, refreshes)

    def apply(self, staged: StagedRows) -> None:
        """Write staged rows into memory (after the store committed them)."""
        end = max(self.count, staged.rows[-1] + 1) if staged.rows else self.count
        self._ensure_capacity(end)
        self.used += [0] * (end - self.count)
        self.refreshes += [0] * (end - self.count)
        for i, row in enumerate(staged.rows):
            self._c0[row] = staged.c0[i]
            self._c1[row] = staged.c1[i]
            self.used[row] = staged.used[i]
            self.refreshes[row] = staged.refreshes[i]
        self.count = end
        self.erased.difference_update(staged.slots)

    def stage_erase(self, slots: list[int]) -> tuple[dict[int, bytes], list[bytes]]:
        """The rows as they are once ``slots`` are erased, and the bytes erasure removes (packed, and
        in the int64 form a row stored by an earlier version held)."""
        changed: dict[int, np.ndarray] = {}
        removed = []
        for slot in slots:
            row, window = self._window(slot)
            c0 = changed.setdefault(row, self._c0[row].copy())
            removed += [c0[window].tobytes(), int64_form(c0[window].tobytes(), self.context.ring.q)]
            c0[window] = self._zero
        return {row: row_bytes(c0, self._c1[row]) for row, c0 in changed.items()}, removed

    def erase(self, slot: int) -> None:
        """Zero the only coefficients that encrypt the slot's template."""
        row, window = self._window(slot)
        self._c0[row, window] = self._zero
        self.erased.add(int(slot))

    def to_bytes(self, row: int) -> bytes:
        """One row as stored: c1 then c0, packed."""
        return row_bytes(self._c0[row], self._c1[row])

    def load(self, rows: list[tuple[bytes, int, int]], occupied: set[int]) -> None:
        """Replace every row with stored ones: (bytes, templates placed, refreshes) each.

        Placed slots not in ``occupied`` count as erased. Rows stored by earlier versions
        (int64 values, 16N bytes) are read too and packed.
        """
        n, q = self.context.ring.n, self.context.ring.q
        self._ensure_capacity(len(rows))
        for r, (data, used, refreshes) in enumerate(rows):
            if not 0 <= used <= self.group:
                raise AuthenticationError(f"stored ciphertext row {r} has the wrong size")
            try:
                packed = from_stored(data, 2 * n, q)
            except CiphertextFormatError as exc:
                raise AuthenticationError(f"stored ciphertext row {r}: {exc}") from None
            self._c1[r], self._c0[r] = packed.reshape(2, -1)
        self.count = len(rows)
        self.used = [int(u) for _, u, _ in rows]
        self.refreshes = [int(f) for _, _, f in rows]
        g = self.group
        self.erased = {r * g + p for r in range(self.count) for p in range(self.used[r])} - set(occupied)

    @property
    def native(self) -> bool:
        """Whether requests are built by the core (else in Python over SEAL's NTT)."""
        return self._rescorer is not None and not using_reference()

    def request(self, slots: np.ndarray, weights: np.ndarray) -> EncryptedScores:
        """Encrypted scores of the fixed-point probe ``weights`` (d,) against ``slots``, in order."""
        if not self.native:
            return self.request_reference(slots, weights)
        parts = self._rescorer.score(  # type: ignore[union-attr]
            self._c0, self._c1, self.count, np.asarray(slots, dtype=np.int64), weights, n_threads=self.n_threads
        )
        return self._scores(*parts)

    def identify(
        self,
        index: _core.ProtectedIndex,
        code: np.ndarray,
        reliability: np.ndarray,
        want: int,
        hamming: int,
        slot_of_id: np.ndarray,
        weights: np.ndarray,
    ) -> tuple[list[int], EncryptedScores | None]:
        """Up to ``want`` ids with a slot nearest the probe's code, nearest first, and their encrypted
        scores (None if none): one native call, the GIL released throughout (needs :attr:`native`).

        ``index`` is searched as :meth:`fpmatch.galleries.codes.CodeTable.nearest` searches it (weighted
        re-ranking of a Hamming shortlist of ``max(hamming, depth)``); ``slot_of_id`` maps ids to slots.
        """
        if self._rescorer is None:
            raise InvalidInputError("the core's NTT disagrees with SEAL's here: build requests with request()")
        ids, _, *parts = self._rescorer.identify(
            index, code, reliability, want, hamming, slot_of_id, self._c0, self._c1, self.count, weights,
            n_threads=self.n_threads,
        )
        return ids.tolist(), (self._scores(*parts) if len(ids) else None)

    def request_reference(self, slots: np.ndarray, weights: np.ndarray) -> EncryptedScores:
        """:meth:`request` assembled in Python over SEAL's own NTT: the path where the core's NTT
        disagrees with SEAL's, and the reference the native one is pinned to."""
        ring = self.context.ring
        d, n = self.dim, ring.n
        # P(X) = sum_i w_i X^-i, and X^-i = -X^(N-i) in Z_q[X]/(X^N + 1).
        poly = np.zeros(n, dtype=np.int64)
        poly[0] = weights[0]
        poly[n - np.arange(1, d)] = -weights[1:]
        p_hat = ring.seal_ntt(poly)
        row_of_slot, position = np.divmod(np.asarray(slots, dtype=np.int64), self.group)
        rows, row_index = np.unique(row_of_slot, return_inverse=True)
        alpha = multiply(self._c1[rows], p_hat, ring.q)
        offsets = position * d
        width = PACKED_BYTES * d
        windows = [
            self._c0[r, PACKED_BYTES * o : PACKED_BYTES * o + width].reshape(d, PACKED_BYTES)
            for r, o in zip(row_of_slot.tolist(), offsets.tolist())
        ]
        beta = combine(windows, weights, ring.q, n_threads=self.n_threads)[:, 0]
        return self._scores(alpha, beta, offsets, row_index.astype(np.int64).reshape(-1))

    def _scores(self, alpha: np.ndarray, beta: np.ndarray, index: np.ndarray, row: np.ndarray) -> EncryptedScores:
        return scores_under(self.context, self.probe_scale_bits, alpha, beta, index, row)

    def ciphertexts(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every row in use as (c0 coefficients, c1 NTT values), centred int64."""
        q = self.context.ring.q
        return [(unpack(self._c0[r], q), unpack(self._c1[r], q)) for r in range(self.count)]

    def _window(self, slot: int) -> tuple[int, slice]:
        row, p = divmod(int(slot), self.group)
        if not 0 <= row < self.count or p >= self.used[row]:
            raise InvalidInputError(f"slot {slot} holds no template")
        return row, slice(PACKED_BYTES * p * self.dim, PACKED_BYTES * (p + 1) * self.dim)  # bytes

    def _ensure_capacity(self, rows: int) -> None:
        if rows <= len(self._c0):
            return
        size = max(rows, 2 * len(self._c0), 16)
        for name in ("_c0", "_c1"):
            old = getattr(self, name)
            grown = np.zeros((size, old.shape[1]), dtype=np.uint8)
            grown[: self.count] = old[: self.count]
            old.fill(0)  # a withdrawal must not find a stale copy in freed memory
            setattr(self, name, grown)


def row_bytes(c0: np.ndarray, c1: np.ndarray) -> bytes:
    """A row as stored: c1 (NTT values) first, then c0 (coefficients), both packed (uint8 rows)."""
    return c1.tobytes() + c0.tobytes()
