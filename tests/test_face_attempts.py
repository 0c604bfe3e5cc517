"""The daily limit of failed face verifications per subject (the outside attacker's budget)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fpmatch import InvalidInputError, VerificationOutcome
from fpmatch.he import KeyHolderUnavailable
from fpmatch.service.attempts import DEFAULT_FACE_FAILURES, FaceAttempts
from service_support import ManualClock, calibrate, enrol_people, open_service, sample, stranger

MATCH = VerificationOutcome.MATCH
NO_MATCH = VerificationOutcome.NO_MATCH
USE_ALTERNATIVE = VerificationOutcome.USE_ALTERNATIVE
PEOPLE = [f"p{i}" for i in range(12)]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def _reasons(svc, subject: str) -> list[str | None]:
    entries = svc.store.audit_entries(svc.pseudonym(subject))
    return [e.detail.get("reason", e.outcome) for e in entries if e.event == "verify"]


@pytest.mark.usefixtures("scheme")
def test_failed_tries_lock_the_subject_for_a_day_and_survive_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    with open_service(tmp_path / "s", clock) as svc:
        enrol_people(svc, PEOPLE)
        calibrate(svc)
        before = svc.gallery._decider.usage("matching-service").requests if svc.profile.encrypted else 0
        outcomes = [svc.verify("p0", stranger(i), "entry") for i in range(DEFAULT_FACE_FAILURES)]
        assert outcomes == [NO_MATCH] * DEFAULT_FACE_FAILURES
        # Spent: even the subject's own face is routed to the alternative, and nothing is decided.
        assert svc.verify("p0", sample("p0", 1), "entry") is USE_ALTERNATIVE
        if svc.profile.encrypted:
            assert svc.gallery._decider.usage("matching-service").requests == before + DEFAULT_FACE_FAILURES
        assert svc.verify("p1", sample("p1", 1), "entry") is MATCH  # other subjects are not affected
        assert _reasons(svc, "p0")[-1] == "face_attempts"
    clock.advance(hours=23)
    with open_service(tmp_path / "s", clock) as svc:  # the count is rebuilt from the audit log
        assert svc.verify("p0", sample("p0", 1), "entry") is USE_ALTERNATIVE
        clock.advance(hours=1, seconds=1)  # the first failures are a day old now
        assert svc.verify("p0", sample("p0", 1), "entry") is MATCH


def test_a_face_match_does_not_clear_failures_but_the_alternative_does(tmp_path: Path, clock: ManualClock) -> None:
    with open_service(tmp_path / "s", clock) as svc:
        enrol_people(svc, PEOPLE)
        calibrate(svc)
        svc.enrol_alternative("p0", "4711")
        for i in range(DEFAULT_FACE_FAILURES - 1):
            assert svc.verify("p0", stranger(i), "entry") is NO_MATCH
        assert svc.verify("p0", sample("p0", 1), "entry") is MATCH
        assert svc.verify("p0", stranger(99), "entry") is NO_MATCH  # the fifth failure of the day
        assert svc.verify("p0", sample("p0", 2), "entry") is USE_ALTERNATIVE
        assert svc.verify_alternative("p0", "0000", "entry") is NO_MATCH
        assert svc.verify("p0", sample("p0", 2), "entry") is USE_ALTERNATIVE
        assert svc.verify_alternative("p0", "4711", "entry") is MATCH
        assert svc.verify("p0", sample("p0", 2), "entry") is MATCH
    with open_service(tmp_path / "s", clock) as svc:  # the alternative's MATCH is in the log too
        assert svc.verify("p0", sample("p0", 3), "entry") is MATCH


def test_concurrent_tries_cannot_overrun_the_limit(tmp_path: Path, clock: ManualClock) -> None:
    with open_service(tmp_path / "s", clock, max_face_failures=3) as svc:
        enrol_people(svc, PEOPLE)
        calibrate(svc)
        probes = [svc.edge.probe(stranger(i)) for i in range(24)]
        decide = svc.gallery.decide

        def slow_decide(*args, **kwargs):  # many tries in flight at once
            time.sleep(0.02)
            return decide(*args, **kwargs)

        svc.gallery.decide = slow_decide
        outcomes: list[VerificationOutcome] = []
        start = threading.Barrier(8)

        def attacker(part: int) -> None:
            start.wait()
            for probe in probes[part::8]:
                outcomes.append(svc.service.verify("p0", probe, "entry"))

        threads = [threading.Thread(target=attacker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count(NO_MATCH) == 3 and outcomes.count(USE_ALTERNATIVE) == 21


@pytest.mark.parametrize("scheme", ["hybrid"], indirect=True)
def test_a_try_without_a_decision_is_given_back(tmp_path: Path, clock: ManualClock, scheme: str) -> None:
    class Down:
        def __getattr__(self, name: str):
            def fail(*args, **kwargs):
                raise KeyHolderUnavailable("the key holder is down")

            return fail

    with open_service(tmp_path / "s", clock, max_face_failures=2) as svc:
        enrol_people(svc, PEOPLE)
        calibrate(svc)
        decider, svc.gallery._decider = svc.gallery._decider, Down()
        for i in range(4):
            with pytest.raises(KeyHolderUnavailable):
                svc.verify("p0", stranger(i), "entry")
        svc.gallery._decider = decider
        assert [svc.verify("p0", stranger(i), "entry") for i in range(3)] == [NO_MATCH, NO_MATCH, USE_ALTERNATIVE]


@pytest.mark.usefixtures("scheme")
def test_no_limit_when_asked_and_bad_limits_refused(tmp_path: Path, clock: ManualClock) -> None:
    with open_service(tmp_path / "s", clock, max_face_failures=None) as svc:
        enrol_people(svc, PEOPLE[:3])
        calibrate(svc)
        assert all(svc.verify("p0", stranger(i), "entry") is NO_MATCH for i in range(DEFAULT_FACE_FAILURES + 3))
    for bad in (0, -1, 2.5, True, "5"):
        with pytest.raises(InvalidInputError, match="max_face_failures"):
            FaceAttempts(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="max_face_failures"):
            open_service(tmp_path / "s", clock, max_face_failures=bad)
