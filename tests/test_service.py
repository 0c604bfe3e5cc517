"""MatchingService end to end: lifecycle, persisted thresholds, partial withdrawal,
expiry purged on open, subject access reports, and concurrent readers while a
writer enrols and withdraws."""

from __future__ import annotations

import base64
import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from fpmatch import (
    ConsentRequiredError,
    IdConflictError,
    InvalidInputError,
    NotCalibratedError,
    VerificationOutcome,
)
from service_support import (
    ManualClock,
    calibrate,
    enrol_people,
    grant,
    labelled_set,
    open_service,
    protected_bytes,
    sample,
    stranger,
    windows,
)

pytestmark = pytest.mark.usefixtures("scheme")  # every test runs for every scheme

MATCH = VerificationOutcome.MATCH
NO_MATCH = VerificationOutcome.NO_MATCH
USE_ALTERNATIVE = VerificationOutcome.USE_ALTERNATIVE


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.mark.usefixtures("backend")
def test_lifecycle_grant_enrol_match_withdraw_reconsent(tmp_path: Path, clock: ManualClock) -> None:
    with open_service(tmp_path / "store", clock) as svc:
        enrol_people(svc, [f"p{i}" for i in range(10)])
        calibrate(svc)
        grant(svc, "rita", ["payment", "entry"])
        svc.enrol("rita", sample("rita", 0))
        assert len(svc) == 11 and "rita" in svc and "rita" in svc.enrolled()
        with pytest.raises(IdConflictError):
            svc.enrol("rita", sample("rita", 1))
        assert svc.verify("rita", sample("rita", 1), "payment") is MATCH
        assert [c.subject for c in svc.identify(sample("rita", 2), "entry", k=3)][:1] == ["rita"]
        first_id = svc.gallery.id_of("rita")

        assert svc.withdraw("rita") is True
        assert "rita" not in svc and "rita" not in svc.store.subject_ids()
        assert all(c.withdrawn_at == clock.now for c in svc.consents("rita"))
        assert svc.withdraw("rita") is False  # nothing left to erase
        with pytest.raises(ConsentRequiredError):
            svc.enrol("rita", sample("rita", 0))

        clock.advance(days=1)
        grant(svc, "rita", ["entry"])
        svc.enrol("rita", sample("rita", 0))
        assert svc.gallery.id_of("rita") > first_id  # ids are never reused
        assert svc.verify("rita", sample("rita", 1), "entry") is MATCH
        assert svc.verify("rita", sample("rita", 1), "payment") is USE_ALTERNATIVE
        assert svc.check_integrity().ok


def test_input_checks(tmp_path: Path, clock: ManualClock) -> None:
    with open_service(tmp_path / "store", clock) as svc:
        enrol_people(svc, ["a", "b"])
        two = sample("a", 0)[None, :].repeat(2, axis=0)
        with pytest.raises(InvalidInputError):
            svc.verify("a", two, "entry")
        with pytest.raises(InvalidInputError):
            svc.identify(sample("a", 1), "entry", k=0)
        grant(svc, "c")
        with pytest.raises(InvalidInputError):
            svc.enrol("c", two)
        with pytest.raises(InvalidInputError):
            svc.enrol("c", sample("c", 0) * 0)  # zero vector
        with pytest.raises(InvalidInputError):
            svc.withdraw("a", consent_id="no-such-consent")
        assert "c" not in svc


@pytest.mark.usefixtures("backend")
def test_threshold_is_persisted_and_calibrated_lazily(tmp_path: Path, clock: ManualClock) -> None:
    directory = tmp_path / "store"
    with open_service(directory, clock) as svc:
        enrol_people(svc, [f"p{i}" for i in range(24)])
        # No threshold yet: subjects without consent still get the alternative, not an error.
        assert svc.verify("stranger", sample("p1", 1), "entry") is USE_ALTERNATIVE
        with pytest.raises(NotCalibratedError):  # 276 impostor pairs cannot support FMR 1e-4
            svc.verify("p1", sample("p1", 1), "entry")
        threshold = calibrate(svc)
    with open_service(directory, clock) as svc:
        assert svc.threshold == threshold and svc.target_fmr == 1e-3
    with open_service(directory, clock, target_fmr=0.05) as svc:
        assert svc.threshold is None  # another target: recalibrated on first use, from the gallery
        if svc.scheme == "he":  # no codes to estimate it from: only the edge calibrates
            with pytest.raises(NotCalibratedError, match="capture edge"):
                svc.verify("p1", sample("p1", 1), "entry")
            svc.calibrate(0.05, *labelled_set())
        assert svc.verify("p1", sample("p1", 1), "entry") is MATCH
        lenient = svc.threshold
        assert lenient is not None and lenient < threshold
        assert svc.store.audit_entries()[-2].event == "calibrate"
    with open_service(directory, clock) as svc:
        assert svc.threshold == lenient


def test_withdrawing_one_of_two_consents_keeps_the_template(tmp_path: Path, clock: ManualClock) -> None:
    with open_service(tmp_path / "store", clock) as svc:
        enrol_people(svc, [f"p{i}" for i in range(10)])
        calibrate(svc)
        entry = grant(svc, "sam", ["entry"])
        payment = grant(svc, "sam", ["payment"])
        svc.enrol("sam", sample("sam", 0))
        assert svc.withdraw("sam", consent_id=payment.consent_id) is False
        assert "sam" in svc
        assert svc.verify("sam", sample("sam", 1), "payment") is USE_ALTERNATIVE
        assert svc.verify("sam", sample("sam", 1), "entry") is MATCH
        assert svc.withdraw("sam", consent_id=entry.consent_id) is True
        assert "sam" not in svc and svc.verify("sam", sample("sam", 1), "entry") is USE_ALTERNATIVE


@pytest.mark.usefixtures("backend")
def test_expired_subjects_are_purged_when_the_service_reopens(tmp_path: Path, clock: ManualClock) -> None:
    directory = tmp_path / "store"
    with open_service(directory, clock) as svc:
        enrol_people(svc, [f"p{i}" for i in range(10)])
        enrol_people(svc, ["tess", "uma"], days=10)
        calibrate(svc)
        assert svc.verify("tess", sample("tess", 1), "entry") is MATCH
    clock.advance(days=10, seconds=1)
    with open_service(directory, clock, purge_on_open=False) as svc:
        assert "tess" in svc  # still stored, but its term is over: not matched
        assert svc.verify("tess", sample("tess", 1), "entry") is USE_ALTERNATIVE
        assert not svc.check_integrity().ok  # and flagged as awaiting its purge
    with open_service(directory, clock) as svc:
        assert "tess" not in svc and "uma" not in svc and len(svc) == 10
        purges = [e for e in svc.store.audit_entries() if e.event == "purge"]
        assert {e.subject for e in purges} == {svc.pseudonym("tess"), svc.pseudonym("uma")}
        assert all(e.detail == {"reason": "expired"} for e in purges)
        assert svc.check_integrity().ok


def test_subject_report_lists_consents_and_events_but_no_code(tmp_path: Path, clock: ManualClock) -> None:
    with open_service(tmp_path / "store", clock) as svc:
        enrol_people(svc, [f"p{i}" for i in range(10)])
        calibrate(svc)
        grant(svc, "vera", ["entry", "payment"], evidence_ref="form-77")
        svc.enrol("vera", sample("vera", 0))
        held = protected_bytes(svc, "vera")
        svc.verify("vera", sample("vera", 1), "payment")
        svc.identify(sample("vera", 2), "entry")
        svc.identify(stranger(3), "entry")  # does not concern vera
        clock.advance(hours=1)
        report = svc.subject_report("vera")
        assert report.enrolled and report.enrolled_at is not None
        assert [c.evidence_ref for c in report.consents] == ["form-77"]
        assert [(e.event, e.outcome) for e in report.events] == [
            ("consent.granted", "granted"),
            ("enrol", "enrolled"),
            ("verify", "match"),
            ("identify", "match"),
            ("subject.report", "provided"),
        ]
        as_json = json.dumps(report.to_dict())
        assert json.loads(as_json)["consents"][0]["status"] == "active"
        for part in held:
            for encoded in (part.hex(), base64.b64encode(part).decode(), repr(part)):
                assert encoded not in as_json
        svc.withdraw("vera")
        after = svc.subject_report("vera")
        assert not after.enrolled and after.consents[0].status(clock.now) == "withdrawn"
        assert [e.event for e in after.events][-4:] == [
            "subject.report",
            "consent.withdrawn",
            "purge",
            "subject.report",
        ]
        nobody = svc.subject_report("nobody")
        assert nobody.consents == () and [e.event for e in nobody.events] == ["subject.report"]


def test_concurrent_readers_stay_correct_while_a_writer_enrols(tmp_path: Path, clock: ManualClock) -> None:
    residents = [f"r{i}" for i in range(40)]
    newcomers = [f"n{i}" for i in range(40)]
    # Each resident meets many impostor probes: the daily limit of failed tries would answer for them.
    with open_service(tmp_path / "store", clock, max_face_failures=None) as svc:
        enrol_people(svc, residents)
        calibrate(svc)
        genuine = [(name, sample(name, 1)) for name in residents]
        impostors = [(residents[i], sample(residents[(i + 1) % 40], 1)) for i in range(40)]
        assert all(svc.verify(n, p, "entry") is MATCH for n, p in genuine)
        impostors = [(n, p) for n, p in impostors if svc.verify(n, p, "entry") is NO_MATCH]
        assert len(impostors) >= 35

        withdrawn: set[str] = set()
        errors: list[str] = []
        done = threading.Event()

        def writer() -> None:
            try:
                for i, name in enumerate(newcomers):
                    grant(svc, name)
                    svc.enrol(name, sample(name, 0))
                    if i % 4 == 3:
                        gone = newcomers[i - 2]
                        svc.withdraw(gone)
                        withdrawn.add(gone)  # only after withdraw() returned
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(f"writer: {exc!r}")
            finally:
                done.set()

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            checks = 0
            while not done.is_set() or checks < 20:
                checks += 1
                name, probe = genuine[rng.randrange(len(genuine))]
                if (got := svc.verify(name, probe, "entry")) is not MATCH:
                    errors.append(f"genuine {name}: {got}")
                found = svc.identify(probe, "entry", k=1)
                if [c.subject for c in found] != [name]:
                    errors.append(f"identify {name}: {found}")
                claimed, probe = impostors[rng.randrange(len(impostors))]
                if (got := svc.verify(claimed, probe, "entry")) is not NO_MATCH:
                    errors.append(f"impostor {claimed}: {got}")
                newcomer = newcomers[rng.randrange(len(newcomers))]
                was_withdrawn = newcomer in withdrawn
                got = svc.verify(newcomer, sample(newcomer, 1), "entry")
                if got is NO_MATCH or (was_withdrawn and got is not USE_ALTERNATIVE):
                    errors.append(f"newcomer {newcomer} (withdrawn={was_withdrawn}): {got}")
                hits = [c.subject for c in svc.identify(sample(newcomer, 1), "entry", k=1)]
                if was_withdrawn and newcomer in hits:  # others may match at the calibrated FMR
                    errors.append(f"withdrawn {newcomer} identified: {hits}")

        threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert sorted(svc.enrolled()) == sorted(set(residents) | set(newcomers) - withdrawn)
        integrity = svc.check_integrity()
        assert integrity.ok, integrity.problems
        assert integrity.audit.entries > 40 * 2 + 3 * 20 * 5


def test_open_refuses_unknown_index(tmp_path: Path, clock: ManualClock) -> None:
    with pytest.raises(InvalidInputError):
        open_service(tmp_path / "store", clock, index="lsh")
    assert not (tmp_path / "store").exists()


@pytest.mark.usefixtures("backend")
def test_withdrawn_slots_are_reused_after_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    """Packed slots freed by withdrawal take new templates (the key holder reclaims them), and
    nothing of the withdrawn templates survives the reuse."""
    directory = tmp_path / "store"
    with open_service(directory, clock) as svc:
        if not svc.edge.profile.encrypted:
            pytest.skip("the hash scheme packs nothing into shared slots")
        enrol_people(svc, [f"p{i}" for i in range(8)])
        calibrate(svc)
        leaving = ["p1", "p4", "p6"]
        freed = slots_of(svc, leaving)
        held = [piece for name in leaving for part in protected_bytes(svc, name) for piece in windows(part)]
        for name in leaving:
            assert svc.withdraw(name)
    with open_service(directory, clock) as svc:  # he: a restored block's empty columns are unknown too
        newcomers = ["n0", "n1", "n2"]
        enrol_people(svc, newcomers)
        reused = slots_of(svc, newcomers)
        assert reused == freed
        for name in newcomers + ["p0", "p2", "p7"]:
            assert svc.verify(name, sample(name, 1), "entry") is MATCH
            assert [m.subject for m in svc.identify(sample(name, 2), "entry", k=1)] == [name]
        assert svc.verify("n1", sample("p3", 1), "entry") is NO_MATCH
        assert svc.check_integrity().ok
    with open_service(directory, clock) as svc:  # and the reclaimed blocks or rows were stored whole
        assert svc.check_integrity().ok
        assert svc.verify("n2", sample("n2", 3), "entry") is MATCH
    contents = [path.read_bytes() for path in directory.rglob("*") if path.is_file()]  # SQLite: the database too
    assert not [piece for piece in held if any(piece in data for data in contents)]


def slots_of(svc: Any, subjects: list[str]) -> list[tuple[int]]:
    with svc.store._reading() as db:
        marks = ",".join("?" * len(subjects))
        return sorted(tuple(row) for row in db.execute(f"SELECT slot FROM subjects WHERE subject IN ({marks})", subjects).fetchall())
