"""Stateful property tests: any sequence of operations agrees with a plain model.

- Indexes: add, remove, re-add, save and load, and search agree with a brute-force Hamming search.
- Galleries: enrol, remove, re-enrol, save and load, and identify agree with scoring every
  enrolled subject one by one.
- The matching service over its store: consent, enrolment, withdrawal, expiry, crash and reopen
  keep the invariants (what is acknowledged is there, no withdrawn or lapsed subject matches,
  the audit chain and the store's integrity check hold).
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fpmatch import CancellableHash, FlatIndex, Gallery, HashKey, IVFIndex, VerificationOutcome, load_index
from service_support import ManualClock, grant, open_service, sample

BITS = 64
MAC = bytes(range(32))
MACHINE = settings(
    max_examples=25, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
codes_of = st.integers(0, 2**BITS - 1).map(lambda v: np.frombuffer(v.to_bytes(8, "little"), np.uint8))


def _hamming(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(np.bitwise_xor(a, b)).sum())


class IndexMachine(RuleBasedStateMachine):
    """An exact index (flat, or IVF probing every list) against a dict of codes."""

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[int, np.ndarray] = {}
        self.index = FlatIndex(BITS)

    @rule(kind=st.sampled_from(["flat", "ivf"]), data=st.data())
    @precondition(lambda self: not self.model)
    def start(self, kind: str, data: st.DataObject) -> None:
        if kind == "ivf":
            self.index = IVFIndex(BITS, nlist=2, nprobe=2, rerank=64)
            self.index.train(np.stack([data.draw(codes_of) for _ in range(4)]))

    @rule(ids=st.lists(st.integers(0, 40), min_size=1, max_size=5, unique=True), data=st.data())
    def add(self, ids: list[int], data: st.DataObject) -> None:
        new = [i for i in ids if i not in self.model]
        if not new:
            return
        codes = np.stack([data.draw(codes_of) for _ in new])
        self.index.add(codes, np.array(new, dtype=np.int64))
        self.model.update(zip(new, codes))

    @rule(data=st.data())
    @precondition(lambda self: self.model)
    def remove(self, data: st.DataObject) -> None:
        gone = data.draw(st.sampled_from(sorted(self.model)))
        assert self.index.remove(np.array([gone], dtype=np.int64)) == 1
        del self.model[gone]

    @rule()
    def save_and_load(self) -> None:
        self.index = load_index(self.index.serialize(MAC), MAC)

    @rule(query=codes_of, k=st.integers(1, 8))
    def search(self, query: np.ndarray, k: int) -> None:
        found = self.index.search(query.reshape(1, -1), k)
        expected = sorted(_hamming(query, code) for code in self.model.values())[:k]
        got = [int(d) for d, label in zip(found.distances[0], found.labels[0]) if label >= 0]
        assert got == expected
        for d, label in zip(found.distances[0], found.labels[0]):
            if label >= 0:
                assert _hamming(query, self.model[int(label)]) == d

    @invariant()
    def same_ids(self) -> None:
        assert sorted(self.index.ids().tolist()) == sorted(self.model)


class GalleryMachine(RuleBasedStateMachine):
    """A hash gallery's identification against verifying every enrolled subject."""

    def __init__(self) -> None:
        super().__init__()
        self.scheme = CancellableHash(HashKey(bytes(range(32))), 16, BITS)
        self.gallery = Gallery(self.scheme, shortlist=64)
        self.model: set[str] = set()
        self.rng = np.random.default_rng(0)
        self.dir = Path(tempfile.mkdtemp(prefix="fpmatch-stateful-"))

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(names=st.lists(st.sampled_from([f"s{i}" for i in range(20)]), min_size=1, max_size=4, unique=True))
    def enrol(self, names: list[str]) -> None:
        new = [n for n in names if n not in self.model]
        if new:
            self.gallery.enrol(new, self.rng.standard_normal((len(new), 16)).astype(np.float32))
            self.model.update(new)

    @rule(data=st.data())
    @precondition(lambda self: self.model)
    def remove(self, data: st.DataObject) -> None:
        gone = data.draw(st.sampled_from(sorted(self.model)))
        self.gallery.remove(gone)
        self.model.discard(gone)

    @rule()
    def save_and_load(self) -> None:
        path = self.dir / "gallery.fpg"
        self.gallery.save(path)
        self.gallery = Gallery.load(path, self.scheme.key)
        self.gallery.shortlist = 64

    @rule(k=st.integers(1, 6))
    def identify(self, k: int) -> None:
        probe = self.rng.standard_normal(16).astype(np.float32)
        found = self.gallery.identify(probe, k=k, threshold=-1.0)
        scores = sorted((self.gallery.verify(name, probe, threshold=-1.0).score for name in self.model), reverse=True)
        assert [c.score for c in found] == pytest.approx(scores[:k])
        for candidate in found:
            assert candidate.subject in self.model
            assert self.gallery.verify(candidate.subject, probe, threshold=-1.0).score == pytest.approx(candidate.score)

    @invariant()
    def same_subjects(self) -> None:
        assert sorted(self.gallery.subjects()) == sorted(self.model)


class ServiceMachine(RuleBasedStateMachine):
    """The matching service over its store, with crashes, restarts and the clock moving."""

    PEOPLE = [f"p{i}" for i in range(8)]

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="fpmatch-stateful-service-"))
        self.clock = ManualClock()
        self.svc = open_service(self.dir / "store", self.clock, max_face_failures=None)
        self.svc.service.calibrate(calibration=self.svc.edge.calibration(*_calibration_set(), 1e-3))
        self.consent_until: dict[str, object] = {}  # subject -> expiry of their consent
        self.enrolled: set[str] = set()

    def teardown(self) -> None:
        self.svc.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _active(self, name: str) -> bool:
        until = self.consent_until.get(name)
        return until is not None and self.clock.now < until  # type: ignore[operator]

    @rule(name=st.sampled_from(PEOPLE), days=st.sampled_from([1, 30]))
    def consent(self, name: str, days: int) -> None:
        grant(self.svc.service, name, days=days)
        until = self.clock.now + timedelta(days=days)
        self.consent_until[name] = max(until, self.consent_until.get(name, until))  # type: ignore[type-var]

    @rule(name=st.sampled_from(PEOPLE))
    def enrol(self, name: str) -> None:
        if name in self.enrolled or not self._active(name):
            return
        self.svc.enrol(name, sample(name, 0))
        self.enrolled.add(name)

    @rule(name=st.sampled_from(PEOPLE))
    def withdraw(self, name: str) -> None:
        if name not in self.consent_until:
            return
        self.svc.withdraw(name)
        del self.consent_until[name]
        self.enrolled.discard(name)

    @rule(days=st.sampled_from([0.5, 2, 31]))
    def time_passes(self, days: float) -> None:
        self.clock.advance(days=days)
        self.svc.expire()
        for name in list(self.enrolled):
            if not self._active(name):
                self.enrolled.discard(name)

    @rule(clean=st.booleans())
    def restart(self, clean: bool) -> None:
        if clean:
            self.svc.close()
        else:  # a crash: the database connection dies with nothing flushed or checkpointed
            self.svc.service.store._connection().close()
        self.svc = open_service(self.dir / "store", self.clock, max_face_failures=None)
        for name in list(self.enrolled):  # lapsed while down: purged at open
            if not self._active(name):
                self.enrolled.discard(name)

    @invariant()
    def acknowledged_and_nothing_else(self) -> None:
        assert sorted(self.svc.enrolled()) == sorted(self.enrolled)
        for name in self.PEOPLE:
            outcome = self.svc.verify(name, sample(name, 1), "entry")
            expected = VerificationOutcome.MATCH if name in self.enrolled else VerificationOutcome.USE_ALTERNATIVE
            assert outcome is expected, (name, outcome)
        assert self.svc.audit_verify().ok
        assert self.svc.check_integrity().ok


def _calibration_set() -> tuple[np.ndarray, np.ndarray]:
    from service_support import labelled_set

    return labelled_set()


TestIndexSequences = IndexMachine.TestCase
TestIndexSequences.settings = MACHINE
TestGallerySequences = GalleryMachine.TestCase
TestGallerySequences.settings = MACHINE
TestServiceSequences = ServiceMachine.TestCase
TestServiceSequences.settings = settings(MACHINE, max_examples=10, stateful_step_count=12)
