"""The ``hash`` scheme at the service: keyed codes searched without their key."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..edge import EdgeProfile, EnrolmentRecord, ProbeMessage
from ..index import Index
from .base import ProtectedGallery, Staged, StoredRow, StoredTemplate
from .codes import CodeTable, weighted_score


def default_shortlist(profile: EdgeProfile) -> int:
    """Hamming neighbours re-ranked per probe: more for narrow-cone models (noisier Hamming ranks)."""
    return 1024 if profile.narrow_cone else 128


class HashSchemeGallery(ProtectedGallery):
    """Codes in a binary index; scores are probe-weighted code scores (estimated cosines)."""

    def __init__(
        self, profile: EdgeProfile, index: str | Index = "flat", *, shortlist: int | None = None, **options: int
    ) -> None:
        super().__init__(profile)
        assert profile.bits is not None
        depth = default_shortlist(profile) if shortlist is None else shortlist
        self.codes = CodeTable(profile.bits, index, depth, **options)

    @property
    def index(self) -> Index:
        return self.codes.index

    def stage_add(self, subjects: Sequence[str], records: Sequence[EnrolmentRecord]) -> Staged:
        codes = np.stack([r.code for r in records])
        change = ("add", list(subjects), codes)
        return Staged(
            codes=[c.tobytes() for c in codes],
            slots=[None] * len(records),
            apply=partial(self.replay, change),
            change=change,
        )

    def stage_remove(self, subjects: Sequence[str]) -> Staged:
        ids = np.array([self.id_of(s) for s in subjects], dtype=np.int64)
        erased = [code.tobytes() for code in self.codes.index.reconstruct(ids)]
        change = ("remove", list(subjects), ids)
        return Staged(erased=erased, apply=partial(self.replay, change), change=change)

    def replay(self, change: Any, ids: Sequence[int]) -> None:
        kind, subjects, data = change
        if kind == "add":
            self.codes.add(data, np.asarray(ids, dtype=np.int64))
            self._bind(subjects, ids)
        else:
            self.codes.remove(data)
            self._unbind(subjects)

    def restore(self, stored: Sequence[StoredTemplate], rows: Sequence[StoredRow], index: Index | None) -> bool:
        ids = [t.id for t in stored]
        adopted = self.codes.adopt(index)
        if not adopted:
            self.codes.load(ids, [t.code or b"" for t in stored])
        self._bind([t.subject for t in stored], ids)
        return adopted

    def decide(self, subject: str, probe: ProbeMessage, threshold: float, *, label: str | None = None) -> bool:
        assert probe.code is not None and probe.reliability is not None
        distance = self.codes.distance(self.id_of(subject), probe.code, probe.reliability)
        return bool(weighted_score(distance) >= threshold)

    def search(self, probe: ProbeMessage, k: int, threshold: float, eligible: Callable[[str], bool]) -> list[str]:
        assert probe.code is not None and probe.reliability is not None
        found = self.codes.nearest(probe.code, probe.reliability, k, lambda id_: self._eligible_id(id_, eligible))
        return [self._names[id_] for id_, d in found if weighted_score(d) >= threshold]

    def problems(self, stored: Mapping[str, StoredTemplate], rows: Sequence[StoredRow]) -> list[str]:
        return self.codes.problems({t.id: t.code or b"" for t in stored.values()})

    def impostor_scores(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return self.codes.impostor_scores(count, rng)

