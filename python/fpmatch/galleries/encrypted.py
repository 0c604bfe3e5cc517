"""The ``he`` scheme at the service: every template encrypted, every one scored on each search.

The service receives a template rotated by the edge's secret rotation, as
integers, and encrypts it into a block at once (:mod:`fpmatch.he.blocks`); it
keeps ciphertexts only. A probe (also rotated) scores every eligible slot
under encryption and the key holder returns the best that pass the threshold.
Thresholds are plain cosines, calibrated at the capture edge.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..edge import EdgeProfile, EnrolmentRecord, ProbeMessage
from ..he.blocks import CiphertextBlocks, StagedBlocks
from ..he._packing import PACKED_BYTES, same_values
from ..he.context import PublicContext
from ..errors import InvalidInputError
from ..he.keyholder import ScoreDecider
from ..he.reclaim import reclaim_through
from ..he.scores import EncryptedScores
from ..index import Index
from .base import ProtectedGallery, Staged, StoredRow, StoredTemplate


class EncryptedSchemeGallery(ProtectedGallery):
    """Column-packed ciphertext blocks; decisions from the key holder."""

    def __init__(
        self,
        profile: EdgeProfile,
        index: str = "flat",
        *,
        decider: ScoreDecider | None,
        caller: str,
        context: PublicContext | None = None,
    ) -> None:
        super().__init__(profile)
        assert profile.he_context is not None
        self.blocks = CiphertextBlocks(context or PublicContext(profile.he_context), profile.dim)
        self._reclaim = None if decider is None else partial(reclaim_through, decider, caller, self.blocks.context)
        self._decider = decider
        self._caller = caller
        self._slot: dict[int, int] = {}  # id -> slot
        self._ids_at: dict[int, int] = {}  # slot -> id

    def stage_add(self, subjects: Sequence[str], records: Sequence[EnrolmentRecord]) -> Staged:
        staged = self.blocks.stage(np.stack([r.values for r in records]), self._reclaim)
        n = self.blocks.n
        rows = {
            b: (
                staged.blocks[b][:, PACKED_BYTES * n :].tobytes() if b in staged.blocks else self.blocks.c1_bytes(b),
                used,
                staged.refreshes[b],
            )
            for b, used in staged.used.items()
        }
        resealed = {self._ids_at[slot]: column for slot, column in staged.resealed.items()}
        change = ("add", list(subjects), vars(staged))
        return Staged(
            [None] * len(records),
            list(staged.slots),
            rows,
            sealed=list(staged.columns),
            resealed=resealed,
            apply=partial(self.replay, change),
            change=change,
        )

    def stage_remove(self, subjects: Sequence[str]) -> Staged:
        ids = [self.id_of(s) for s in subjects]
        slots = [self._slot[id_] for id_ in ids]
        erased = [self.blocks.column(slot) for slot in slots]
        change = ("remove", list(subjects), ids, slots)
        return Staged(erased=erased, apply=partial(self.replay, change), change=change)

    def replay(self, change: Any, ids: Sequence[int]) -> None:
        if change[0] == "add":
            _, subjects, staged = change
            self.blocks.apply(StagedBlocks(**staged))
            for id_, slot in zip(ids, staged["slots"]):
                self._slot[id_], self._ids_at[slot] = slot, id_
            self._bind(subjects, ids)
        else:
            _, subjects, ids, slots = change
            for id_, slot in zip(ids, slots):
                self.blocks.erase(slot)
                del self._slot[id_], self._ids_at[slot]
            self._unbind(subjects)

    def restore(self, stored: Sequence[StoredTemplate], rows: Sequence[StoredRow], index: Index | None) -> bool:
        self.blocks.load(list(rows), {int(t.slot): t.sealed or b"" for t in stored if t.slot is not None})
        self._slot = {t.id: int(t.slot) for t in stored if t.slot is not None}
        self._ids_at = {slot: id_ for id_, slot in self._slot.items()}
        self._bind([t.subject for t in stored], [t.id for t in stored])
        return False

    def decide(self, subject: str, probe: ProbeMessage, threshold: float, *, label: str | None = None) -> bool:
        assert probe.values is not None
        request, _ = self.encrypted_scores([self.id_of(subject)], probe.values)
        (verified,) = self._key_holder().decide(request.to_bytes(), threshold, caller=self._caller, subject=label)
        return bool(verified)

    def search(self, probe: ProbeMessage, k: int, threshold: float, eligible: Callable[[str], bool]) -> list[str]:
        assert probe.values is not None
        chosen = [id_ for name, id_ in self._ids.items() if eligible(name)]
        if not chosen:
            return []
        request, order = self.encrypted_scores(chosen, probe.values)
        positions = self._key_holder().best(request.to_bytes(), threshold, min(k, len(order)), caller=self._caller)
        return [self._names[order[p]] for p in positions]

    def encrypted_scores(self, ids: Sequence[int], values: np.ndarray) -> tuple[EncryptedScores, list[int]]:
        """Encrypted scores of a probe against the subjects stored under ``ids``, and those ids in score order
        (the order of their slots)."""
        request, slots = self._request_for(sorted(self._slot[id_] for id_ in ids), values)
        return request, [self._ids_at[int(s)] for s in slots]

    def _request_for(self, chosen: Sequence[int], weights: np.ndarray) -> tuple[EncryptedScores, np.ndarray]:
        """Encrypted scores against the slots ``chosen`` (ascending), and those slots in score order."""
        if len(chosen) == 1:  # one subject (1:1): its column only, not its whole block
            slots = np.asarray(chosen, dtype=np.int64)
            return self.blocks.request(slots, weights), slots
        (request,), slots = self._requests_for(chosen, np.asarray(weights).reshape(1, -1))
        return request, slots

    def _requests_for(self, chosen: Sequence[int], weights: np.ndarray) -> tuple[list[EncryptedScores], np.ndarray]:
        """:meth:`_request_for` for each row of ``weights`` (probes, d), in one sweep over the blocks."""
        n = self.blocks.n
        slots = np.asarray(chosen, dtype=np.int64)
        bounds = np.searchsorted(slots // n, np.arange(self.blocks.count + 1))
        live = [slots[bounds[b] : bounds[b + 1]] % n for b in range(self.blocks.count)]
        return self.blocks.request_all_batch(weights, live), slots

    def _key_holder(self) -> ScoreDecider:
        if self._decider is None:
            raise InvalidInputError("this gallery was made without a key holder: pass one to decide")
        return self._decider

    def problems(self, stored: Mapping[str, StoredTemplate], rows: Sequence[StoredRow]) -> list[str]:
        problems = []
        if {t.id: t.slot for t in stored.values()} != self._slot:
            problems.append("ciphertext slots differ from the database")
        q = self.blocks.context.ring.q  # rows of earlier versions hold int64 values: compared as values
        held = [(self.blocks.c1_bytes(b), self.blocks.used[b], self.blocks.refreshes[b]) for b in range(self.blocks.count)]
        if len(held) != len(rows) or not all(
            (h[1:] == tuple(r[1:])) and same_values(r[0], h[0], q) for h, r in zip(held, rows)
        ):
            problems.append("ciphertext blocks in memory differ from the database")
        bad = [
            t.subject
            for t in stored.values()
            if t.slot is not None and t.slot in self._ids_at and not same_values(t.sealed or b"", self.blocks.column(t.slot), q)
        ]
        if bad:
            problems.append(f"ciphertexts in memory differ from the database for {bad[:5]}")
        return problems
