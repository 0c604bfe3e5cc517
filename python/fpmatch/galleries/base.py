"""One gallery interface for every scheme the matching service runs.

The service holds one :class:`ProtectedGallery` and no per-scheme branches
(as FAISS holds one ``Index``). A gallery keeps protected templates only:
codes without their key, ciphertexts without their secret key. It receives
capture-edge messages, never floats, and answers with decisions.

Writes are two-phase so that the store stays the source of truth: ``stage_*``
computes everything a change writes (codes, ciphertext rows, the bytes that
erasure must remove) without touching memory; the service commits that to the
store, then calls :meth:`Staged.apply`. Reads may run from several threads;
the service runs writes one at a time and never beside reads.

A staged change also carries ``change``: plain data (numbers, bytes, arrays)
from which :meth:`ProtectedGallery.replay` makes the same change on another
copy of the gallery in the same state, bit for bit (replicas of a shard).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..edge import EdgeProfile, EnrolmentRecord, ProbeMessage
from ..errors import AttestedModeError, NotCalibratedError, UnknownSubjectError
from ..index import Index

#: A row of packed ciphertexts as stored: (bytes, templates placed, refreshes).
StoredRow = tuple[bytes, int, int]


@dataclass
class Staged:
    """A change computed but not applied: what the store must commit first."""

    codes: list[bytes | None] = field(default_factory=list)  # per added subject
    slots: list[int | None] = field(default_factory=list)  # per added subject
    rows: dict[int, StoredRow] = field(default_factory=dict)  # ciphertext rows (or blocks) to write
    sealed: list[bytes | None] = field(default_factory=list)  # per added subject: its own ciphertext part
    resealed: dict[int, bytes] = field(default_factory=dict)  # store id -> new ciphertext part of an enrolled subject
    erased: list[bytes] = field(default_factory=list)  # bytes that must survive nowhere
    apply: Callable[[Sequence[int]], None] = lambda ids: None  # the store's ids of added subjects
    change: Any = None  # plain data for replay() on a copy of the gallery
    settings: dict[str, Any] = field(default_factory=dict)  # store settings the change rewrites (in its transaction)


@dataclass(frozen=True)
class StoredTemplate:
    """What the store holds of one subject for its gallery."""

    subject: str
    id: int
    code: bytes | None
    slot: int | None
    sealed: bytes | None = None  # the subject's own ciphertext part (he: its c0 column)


class ProtectedGallery(ABC):
    """Protected templates of enrolled subjects under one scheme."""

    def __init__(self, profile: EdgeProfile) -> None:
        self.profile = profile
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}

    # -- membership -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, subject: object) -> bool:
        return subject in self._ids

    def subjects(self) -> list[str]:
        return list(self._ids)

    def id_of(self, subject: str) -> int:
        """The store id of an enrolled subject."""
        try:
            return self._ids[subject]
        except (KeyError, TypeError):
            raise UnknownSubjectError(f"subject {subject!r} is not enrolled") from None

    def holds_id(self, id_: int) -> bool:
        """Whether an enrolled subject is stored under ``id_``."""
        return id_ in self._names

    def subject_of(self, id_: int) -> str:
        """The enrolled subject stored under ``id_``."""
        return self._names[id_]

    def _eligible_id(self, id_: int, eligible: Callable[[str], bool]) -> bool:
        """Whether the subject stored under ``id_`` is still enrolled and ``eligible``."""
        name = self._names.get(id_)
        return name is not None and eligible(name)

    def _bind(self, names: Sequence[str], ids: Sequence[int]) -> None:
        for name, id_ in zip(names, ids):
            self._names[id_] = name
            self._ids[name] = id_

    def _unbind(self, names: Sequence[str]) -> None:
        for name in names:
            del self._names[self._ids.pop(name)]

    # -- the scheme ---------------------------------------------------------------

    @property
    def decider(self) -> Any:
        """The key holder that decides for this gallery (None for schemes without one)."""
        return getattr(self, "_decider", None)

    @property
    def caller(self) -> str:
        """How the key holder names this gallery's service."""
        return str(getattr(self, "_caller", ""))

    @property
    def index(self) -> Index | None:
        """The code index, for schemes that have one (it is cached beside the store)."""
        return None

    @abstractmethod
    def stage_add(self, subjects: Sequence[str], records: Sequence[EnrolmentRecord]) -> Staged:
        """Enrolment of checked records for new subjects."""

    @abstractmethod
    def stage_remove(self, subjects: Sequence[str]) -> Staged:
        """Erasure of enrolled subjects."""

    @abstractmethod
    def replay(self, change: Any, ids: Sequence[int]) -> None:
        """Apply a change staged on another copy of this gallery in the same state (its ``Staged.change``)."""

    @abstractmethod
    def restore(self, stored: Sequence[StoredTemplate], rows: Sequence[StoredRow], index: Index | None) -> bool:
        """Load everything from the store, with the cached index if it fits (returns whether it did)."""

    @abstractmethod
    def decide(self, subject: str, probe: ProbeMessage, threshold: float, *, label: str | None = None) -> bool:
        """1:1: does the probe reach ``threshold`` against the subject?

        ``label`` (the service's pseudonym of the subject) goes to the key holder,
        which counts per-subject budgets under it; it never learns the name.
        """

    @abstractmethod
    def search(
        self, probe: ProbeMessage, k: int, threshold: float, eligible: Callable[[str], bool]
    ) -> list[str]:
        """1:N: up to ``k`` eligible subjects reaching ``threshold``, best first.

        Ineligible subjects are passed over before any score is computed or
        decided, so they can neither appear nor push an eligible one out.
        """

    def shortlist_ids(self, probe: ProbeMessage, want: int, eligible: Callable[[str], bool]) -> list[int]:
        """Ids of the ``want`` eligible subjects whose codes are nearest the probe's, nearest first: the
        shortlist an attested identification sends (``hybrid`` galleries only)."""
        raise AttestedModeError(f"a {self.profile.scheme} gallery has no code shortlist to send a key holder")

    @abstractmethod
    def problems(self, stored: Mapping[str, StoredTemplate], rows: Sequence[StoredRow]) -> list[str]:
        """Where memory and store disagree (empty: they agree)."""

    def impostor_scores(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Scores of pairs of distinct enrolled subjects, in threshold units (code-only calibration)."""
        raise NotCalibratedError(
            f"the {self.profile.scheme} scheme is calibrated at the capture edge: pass "
            "CaptureEdge.calibration(templates, labels, target_fmr) to calibrate()"
        )
