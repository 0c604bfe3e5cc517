"""The non-biometric alternative: subjects without consent are routed to it (never
rejected), and the reference PIN verifier salts, slow-hashes, compares in
constant time and locks after repeated failures."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from fpmatch import (
    AlternativeVerifier,
    InvalidInputError,
    MatchingService,
    PinVerifier,
    TooManyAttemptsError,
    VerificationOutcome,
)
from service_support import (
    ManualClock,
    calibrate,
    enrol_people,
    files_containing,
    grant,
    open_service,
    sample,
)

pytestmark = pytest.mark.usefixtures("scheme")  # every test runs for every scheme

FAST = 2**10  # scrypt cost for tests; the default is 2**14


def test_pin_verifier_implements_the_interface() -> None:
    verifier = PinVerifier(cost=FAST)
    assert isinstance(verifier, AlternativeVerifier) and verifier.method == "pin"


def test_right_pin_matches_wrong_pin_and_unknown_subject_do_not() -> None:
    verifier = PinVerifier(cost=FAST)
    verifier.enrol_secret("alice", "482913")
    assert "alice" in verifier and "bob" not in verifier
    assert verifier.verify("alice", "482913")
    assert not verifier.verify("alice", "482914")
    assert not verifier.verify("alice", "48291")
    assert not verifier.verify("bob", "482913")
    verifier.enrol_secret("alice", "1111")  # replacing the PIN
    assert verifier.verify("alice", "1111") and not verifier.verify("alice", "482913")
    verifier.remove("alice")
    assert not verifier.verify("alice", "1111")


@pytest.mark.parametrize("pin", ["123", "1234567890123", "12a4", "", " 1234", "１２３４"])
def test_malformed_pins_are_refused_at_enrolment(pin: str) -> None:
    with pytest.raises(InvalidInputError):
        PinVerifier(cost=FAST).enrol_secret("alice", pin)


def test_pins_are_salted_slow_hashed_and_never_stored_in_plain(tmp_path: Path) -> None:
    path = tmp_path / "pins.sqlite"
    verifier = PinVerifier(path, cost=FAST)
    verifier.enrol_secret("alice", "482913")
    verifier.enrol_secret("bob", "482913")
    verifier.close()
    rows = dict(
        (subject, (salt, digest))
        for subject, salt, digest in sqlite3.connect(path).execute("SELECT subject, salt, digest FROM pins")
    )
    assert rows["alice"][0] != rows["bob"][0] and rows["alice"][1] != rows["bob"][1]  # per-subject salt
    assert len(rows["alice"][0]) == 16 and len(rows["alice"][1]) == 32
    assert files_containing(tmp_path, b"482913") == []
    reopened = PinVerifier(path, cost=FAST)
    assert reopened.verify("bob", "482913")
    peppered = PinVerifier(tmp_path / "peppered.sqlite", pepper=b"p" * 32, cost=FAST)
    peppered.enrol_secret("alice", "482913")
    peppered.close()
    assert not PinVerifier(tmp_path / "peppered.sqlite", pepper=b"q" * 32, cost=FAST).verify("alice", "482913")
    assert PinVerifier(tmp_path / "peppered.sqlite", pepper=b"p" * 32, cost=FAST).verify("alice", "482913")


def test_repeated_failures_lock_the_subject_for_a_while() -> None:
    clock = ManualClock()
    verifier = PinVerifier(cost=FAST, max_attempts=3, lockout=timedelta(minutes=10), clock=clock)
    verifier.enrol_secret("alice", "2468")
    assert not verifier.verify("alice", "0000") and not verifier.verify("alice", "0001")
    assert verifier.verify("alice", "2468")  # success resets the count
    for _ in range(3):
        assert not verifier.verify("alice", "9999")
    with pytest.raises(TooManyAttemptsError) as info:
        verifier.verify("alice", "2468")  # even the right PIN, while locked
    assert isinstance(info.value, PermissionError)
    clock.advance(minutes=10)
    assert verifier.verify("alice", "2468")


def test_bad_settings_are_refused() -> None:
    for kwargs in ({"cost": 1000}, {"cost": 512}, {"max_attempts": 0}, {"lockout": timedelta(0)}, {"pepper": b"x"}):
        with pytest.raises(InvalidInputError):
            PinVerifier(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- through the service


def test_subject_without_consent_is_routed_to_the_alternative(tmp_path: Path) -> None:
    clock = ManualClock()
    with open_service(tmp_path / "store", clock) as svc:
        enrol_people(svc, [f"p{i}" for i in range(10)])
        calibrate(svc)
        probe = sample("p1", 1)
        grant(svc, "nina", ["payment"])
        outcomes = {
            "never consented": svc.verify("olga", probe, "entry"),
            "consented, not enrolled": svc.verify("nina", probe, "payment"),
            "other purpose": svc.verify("p1", probe, "payment"),
        }
        svc.withdraw("p2")
        outcomes["withdrawn"] = svc.verify("p2", sample("p2", 1), "entry")
        assert set(outcomes.values()) == {VerificationOutcome.USE_ALTERNATIVE}
        reasons = [e.detail.get("reason") for e in svc.store.audit_entries() if e.event == "verify"]
        assert reasons == ["no_consent", "not_enrolled", "no_consent", "no_consent"]

        svc.enrol_alternative("olga", "735100")
        assert svc.verify_alternative("olga", "735100", "entry") is VerificationOutcome.MATCH
        assert svc.verify_alternative("olga", "000000", "entry") is VerificationOutcome.NO_MATCH
        last = svc.store.audit_entries()[-1]
        assert (last.event, last.purpose, last.outcome, last.detail) == (
            "alternative.verify",
            "entry",
            "no_match",
            {"method": "pin"},
        )
        for _ in range(4):
            svc.verify_alternative("olga", "000000", "entry")
        with pytest.raises(TooManyAttemptsError):
            svc.verify_alternative("olga", "735100", "entry")
        assert svc.store.audit_entries()[-1].outcome == "locked"
        assert svc.audit_verify().ok


class OneTimeCodes:
    """A service's own alternative: codes it sent out of band, each usable once."""

    method = "one-time-code"

    def __init__(self) -> None:
        self.codes: dict[str, str] = {}

    def enrol_secret(self, subject: str, secret: str) -> None:
        self.codes[subject] = secret

    def verify(self, subject: str, secret: str) -> bool:
        return self.codes.pop(subject, None) == secret

    def remove(self, subject: str) -> None:
        self.codes.pop(subject, None)


def test_a_service_can_plug_in_its_own_alternative(tmp_path: Path) -> None:
    codes = OneTimeCodes()
    assert isinstance(codes, AlternativeVerifier)
    with open_service(tmp_path / "store", ManualClock(), alternative=codes) as svc:
        svc.enrol_alternative("pavel", "K7Q2")
        assert svc.verify_alternative("pavel", "K7Q2", "entry") is VerificationOutcome.MATCH
        assert svc.verify_alternative("pavel", "K7Q2", "entry") is VerificationOutcome.NO_MATCH  # used up
        assert svc.store.audit_entries()[-1].detail == {"method": "one-time-code"}
    assert not (tmp_path / "store" / "alternative.sqlite").exists()


def test_default_alternative_is_a_peppered_pin_store_beside_the_database(tmp_path: Path) -> None:
    with open_service(tmp_path / "store", ManualClock(), alternative=None) as svc:
        assert isinstance(svc.alternative, PinVerifier)
        svc.enrol_alternative("quinn", "90210")
    with open_service(tmp_path / "store", ManualClock(), alternative=None) as svc:
        assert svc.verify_alternative("quinn", "90210", "payment") is VerificationOutcome.MATCH
    assert not PinVerifier(tmp_path / "store" / "alternative.sqlite").verify("quinn", "90210")  # no pepper


def test_a_damaged_or_odd_pin_database_is_a_typed_error(tmp_path: Path) -> None:
    from fpmatch import StoreFormatError

    damaged = tmp_path / "alternative.sqlite"
    damaged.write_bytes(b"garbage" * 200)
    (tmp_path / "folder").mkdir()
    for path in (damaged, tmp_path / "folder"):
        with pytest.raises(StoreFormatError, match="not a PIN database"):
            PinVerifier(path)
