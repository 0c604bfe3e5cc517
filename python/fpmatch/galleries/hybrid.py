"""The ``hybrid`` scheme at the service: a code shortlist, re-scored under encryption by the key holder.

Codes (without their key) give a Hamming shortlist re-ranked by weighted
distance; the ``candidates`` nearest eligible subjects are scored under CKKS
against the rotated probe, and the key holder returns which pass the
threshold, best first. Thresholds are plain cosines.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..edge import EdgeProfile, EnrolmentRecord, ProbeMessage
from ..errors import InvalidInputError, NotCalibratedError
from ..he.context import PublicContext
from ..he.keyholder import ScoreDecider
from ..he.reclaim import reclaim_through
from ..he._packing import same_values
from ..he.rows import CiphertextRows, StagedRows, row_bytes
from ..he.scores import EncryptedScores
from ..index import Index
from .base import ProtectedGallery, Staged, StoredRow, StoredTemplate
from .codes import CodeTable
from .slots import SlotTable
from .hashed import default_shortlist

#: Shortlisted subjects re-scored under encryption per identification.
DEFAULT_CANDIDATES = 32


class HybridSchemeGallery(ProtectedGallery):
    """Codes for the shortlist, packed ciphertexts for exact scores; decisions from the key holder."""

    def __init__(
        self,
        profile: EdgeProfile,
        index: str | Index = "flat",
        *,
        decider: ScoreDecider | None,
        caller: str,
        shortlist: int | None = None,
        candidates: int = DEFAULT_CANDIDATES,
        context: PublicContext | None = None,
        **options: int,
    ) -> None:
        super().__init__(profile)
        assert profile.bits is not None and profile.he_context is not None
        depth = default_shortlist(profile) if shortlist is None else shortlist
        self.codes = CodeTable(profile.bits, index, depth, **options)
        self.ciphertext_rows = CiphertextRows(context or PublicContext(profile.he_context), profile.dim)
        self._reclaim = None if decider is None else partial(reclaim_through, decider, caller, self.ciphertext_rows.context)
        self.candidates = candidates
        self._decider = decider
        self._caller = caller
        self._slot = SlotTable()  # id -> ciphertext slot

    @property
    def index(self) -> Index:
        return self.codes.index

    def stage_add(self, subjects: Sequence[str], records: Sequence[EnrolmentRecord]) -> Staged:
        codes = np.stack([r.code for r in records])
        staged = self.ciphertext_rows.stage(np.stack([r.values for r in records]), self._reclaim)
        rows = {
            row: (row_bytes(staged.c0[i], staged.c1[i]), staged.used[i], staged.refreshes[i])
            for i, row in enumerate(staged.rows)
        }
        change = ("add", list(subjects), codes, vars(staged))
        return Staged([c.tobytes() for c in codes], list(staged.slots), rows, apply=partial(self.replay, change), change=change)

    def stage_remove(self, subjects: Sequence[str]) -> Staged:
        ids = [self.id_of(s) for s in subjects]
        slots = [self._slot[id_] for id_ in ids]
        written, removed = self.ciphertext_rows.stage_erase(slots)
        codes = [code.tobytes() for code in self.codes.index.reconstruct(np.array(ids, dtype=np.int64))]
        rows = {row: (data, self.ciphertext_rows.used[row], self.ciphertext_rows.refreshes[row]) for row, data in written.items()}
        change = ("remove", list(subjects), ids, slots)
        return Staged(rows=rows, erased=codes + removed, apply=partial(self.replay, change), change=change)

    def replay(self, change: Any, ids: Sequence[int]) -> None:
        if change[0] == "add":
            _, subjects, codes, staged = change
            self.codes.add(codes, np.asarray(ids, dtype=np.int64))
            self.ciphertext_rows.apply(StagedRows(**staged))
            self._slot.assign(ids, staged["slots"])
            self._bind(subjects, ids)
        else:
            _, subjects, ids, slots = change
            self.codes.remove(np.array(ids, dtype=np.int64))
            for slot in slots:
                self.ciphertext_rows.erase(slot)
            self._slot.release(ids)
            self._unbind(subjects)

    def restore(self, stored: Sequence[StoredTemplate], rows: Sequence[StoredRow], index: Index | None) -> bool:
        ids = [t.id for t in stored]
        adopted = self.codes.adopt(index)
        if not adopted:
            self.codes.load(ids, [t.code or b"" for t in stored])
        self._slot.reset({t.id: int(t.slot) for t in stored if t.slot is not None})
        self.ciphertext_rows.load(list(rows), set(self._slot.values()))
        self._bind([t.subject for t in stored], ids)
        return adopted

    def decide(self, subject: str, probe: ProbeMessage, threshold: float, *, label: str | None = None) -> bool:
        assert probe.values is not None
        request, _ = self.encrypted_scores([self.id_of(subject)], probe.values)
        (verified,) = self._key_holder().decide(request.to_bytes(), threshold, caller=self._caller, subject=label)
        return bool(verified)

    def search(self, probe: ProbeMessage, k: int, threshold: float, eligible: Callable[[str], bool]) -> list[str]:
        assert probe.code is not None and probe.reliability is not None and probe.values is not None
        ids, request = self.rescored(probe.code, probe.reliability, probe.values, max(k, self.candidates), eligible)
        if request is None:
            return []
        positions = self._key_holder().best(request.to_bytes(), threshold, min(k, len(ids)), caller=self._caller)
        return [self._names[ids[p]] for p in positions]

    def encrypted_scores(self, ids: Sequence[int], values: np.ndarray) -> tuple[EncryptedScores, list[int]]:
        """Encrypted scores of a probe against the subjects stored under ``ids``, and those ids in score order."""
        return self.ciphertext_rows.request(np.array([self._slot[id_] for id_ in ids]), values), list(ids)

    def rescored(
        self,
        code: np.ndarray,
        reliability: np.ndarray,
        values: np.ndarray,
        want: int,
        eligible: Callable[[str], bool] | None = None,
    ) -> tuple[list[int], EncryptedScores | None]:
        """Ids of the ``want`` eligible subjects whose codes are nearest the probe's, nearest first, and
        their encrypted scores (None if there are none).

        Without ``eligible`` (everyone enrolled is), one native call searches, maps ids to slots and
        scores. With it, the shortlist is filtered here before anything is scored, searching deeper
        while ineligible subjects fill it; the kept slots are then scored natively.
        """
        rows = self.ciphertext_rows
        if eligible is None and rows.native:
            return rows.identify(
                self.codes.index.native, code, reliability, want, self.codes.shortlist, self._slot.array, values
            )
        ids = self._shortlist(code, reliability, want, eligible or (lambda name: True))
        return ids, (self.encrypted_scores(ids, values)[0] if ids else None)

    def shortlist_ids(self, probe: ProbeMessage, want: int, eligible: Callable[[str], bool]) -> list[int]:
        """Ids of the ``want`` eligible subjects whose codes are nearest the probe's, nearest first."""
        assert probe.code is not None and probe.reliability is not None
        return self._shortlist(probe.code, probe.reliability, want, eligible)

    def _shortlist(self, code: np.ndarray, reliability: np.ndarray, want: int, eligible: Callable[[str], bool]) -> list[int]:
        """Ids of the ``want`` eligible subjects whose codes are nearest the probe's, nearest first."""
        found = self.codes.nearest(code, reliability, want, lambda id_: self._eligible_id(id_, eligible))
        return [id_ for id_, _ in found]

    def _key_holder(self) -> ScoreDecider:
        if self._decider is None:
            raise InvalidInputError("this gallery was made without a key holder: pass one to decide")
        return self._decider

    def problems(self, stored: Mapping[str, StoredTemplate], rows: Sequence[StoredRow]) -> list[str]:
        problems = self.codes.problems({t.id: t.code or b"" for t in stored.values()})
        if {t.id: t.slot for t in stored.values()} != self._slot.as_dict():
            problems.append("ciphertext slots differ from the database")
        q = self.ciphertext_rows.context.ring.q  # rows of earlier versions hold int64 values: compared as values
        held = [(self.ciphertext_rows.to_bytes(r), self.ciphertext_rows.used[r], self.ciphertext_rows.refreshes[r]) for r in range(self.ciphertext_rows.count)]
        if len(held) != len(rows) or not all(
            (h[1:] == tuple(r[1:])) and same_values(r[0], h[0], q) for h, r in zip(held, rows)
        ):
            problems.append("ciphertext rows in memory differ from the database")
        return problems

    def impostor_scores(self, count: int, rng: np.random.Generator) -> np.ndarray:
        if self.profile.narrow_cone:  # codes of offset-removed templates do not estimate raw cosines
            raise NotCalibratedError(
                "codes of a narrow-cone model do not estimate its cosines: pass "
                "CaptureEdge.calibration(templates, labels, target_fmr) to calibrate()"
            )
        return self.codes.impostor_scores(count, rng)
