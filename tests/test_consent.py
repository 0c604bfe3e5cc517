"""Consent records and consent-bound enrolment and matching: no consent, wrong
purpose, expired, withdrawn, pending and bundled consents are all refused."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from fpmatch import (
    BundledConsentError,
    ConsentRecord,
    ConsentRequiredError,
    InvalidConsentError,
    InvalidInputError,
    MatchingService,
    VerificationOutcome,
)
from service_support import START, ManualClock, calibrate, enrol_people, grant, identity, open_service, sample, unit

pytestmark = pytest.mark.usefixtures("scheme")  # every test runs for every scheme

MATCH = VerificationOutcome.MATCH
NO_MATCH = VerificationOutcome.NO_MATCH
USE_ALTERNATIVE = VerificationOutcome.USE_ALTERNATIVE


def record(**overrides: object) -> ConsentRecord:
    fields: dict[str, object] = {
        "subject": "alice",
        "purposes": {"payment", "entry"},
        "granted_at": START,
        "expires_at": START + timedelta(days=30),
        "notice_version": "notice-2026-01",
        "evidence_ref": "form-0042",
        "method": "signed-form",
        "separate": True,
    }
    fields.update(overrides)
    return ConsentRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def service(tmp_path: Path, clock: ManualClock) -> Iterator[MatchingService]:
    svc = open_service(tmp_path / "store", clock)
    enrol_people(svc, [f"person-{i}" for i in range(20)])
    calibrate(svc)
    yield svc
    svc.close()


# --------------------------------------------------------------------------- the record


def test_record_holds_every_field_and_normalises() -> None:
    r = record(purposes=["payment", "entry", "entry"], granted_at=START.astimezone(timezone(timedelta(hours=8))))
    assert r.purposes == frozenset({"payment", "entry"})
    assert r.granted_at == START and r.granted_at.tzinfo == timezone.utc
    assert (r.notice_version, r.evidence_ref, r.method, r.separate) == (
        "notice-2026-01",
        "form-0042",
        "signed-form",
        True,
    )
    assert len(r.consent_id) == 32 and r.withdrawn_at is None
    assert ConsentRecord.from_dict(r.to_dict()) == r
    with pytest.raises(AttributeError):
        r.purposes = frozenset({"x"})  # type: ignore[misc]


def test_bundled_consent_is_refused() -> None:
    with pytest.raises(BundledConsentError, match="separately"):
        record(separate=False)
    with pytest.raises(InvalidConsentError):  # a truthy non-bool is not a separate consent either
        record(separate=1)


@pytest.mark.parametrize(
    "overrides",
    [
        {"purposes": set()},
        {"purposes": "payment"},
        {"purposes": {"Payment"}},
        {"purposes": {"pay ment"}},
        {"purposes": {"x" * 65}},
        {"purposes": {""}},
        {"purposes": {3}},
        {"subject": ""},
        {"granted_at": datetime(2026, 3, 1)},  # naive: its zone would be a guess
        {"expires_at": START},
        {"expires_at": START - timedelta(seconds=1)},
        {"notice_version": ""},
        {"evidence_ref": "  "},
        {"method": None},
    ],
)
def test_malformed_records_are_refused(overrides: dict) -> None:
    with pytest.raises(InvalidConsentError) as info:
        record(**overrides)
    assert isinstance(info.value, ValueError)


def test_active_window_expiry_and_withdrawal() -> None:
    r = record()
    assert r.status(START - timedelta(seconds=1)) == "pending" and not r.active(START - timedelta(seconds=1))
    assert r.active(START) and r.covers("payment", START) and r.covers("entry", START)
    assert not r.covers("marketing", START)
    end = START + timedelta(days=30)
    assert r.active(end - timedelta(microseconds=1))
    assert not r.active(end) and r.status(end) == "expired"  # the term is half-open
    w = r.withdrawn(START + timedelta(days=1))
    assert w.active(START + timedelta(hours=1))  # withdrawal is not retroactive
    assert not w.active(START + timedelta(days=2)) and w.status(START + timedelta(days=2)) == "withdrawn"
    assert w.withdrawn(START + timedelta(days=5)).withdrawn_at == w.withdrawn_at
    with pytest.raises(InvalidInputError):
        r.active(datetime(2026, 3, 2))


# --------------------------------------------------------------------------- enrolment needs consent


def test_enrolment_without_consent_is_refused_and_audited(service: MatchingService) -> None:
    with pytest.raises(ConsentRequiredError) as info:
        service.enrol("nobody", sample("nobody", 0))
    assert isinstance(info.value, PermissionError)
    assert "nobody" not in service and "nobody" not in service.store.subject_ids()
    last = service.store.audit_entries()[-1]
    assert (last.event, last.outcome, last.subject) == (
        "enrol.refused",
        "no_active_consent",
        service.pseudonym("nobody"),
    )


def test_enrolment_with_expired_withdrawn_or_pending_consent_is_refused(
    service: MatchingService, clock: ManualClock
) -> None:
    grant(service, "expired", days=1)
    grant(service, "withdrawn")
    service.withdraw("withdrawn")
    service.grant_consent(
        "pending",
        ["entry"],
        notice_version="n",
        evidence_ref="e",
        method="m",
        separate=True,
        granted_at=clock.now + timedelta(days=2),
        retention=timedelta(days=30),
    )
    clock.advance(days=1)
    for name in ("expired", "withdrawn", "pending"):
        with pytest.raises(ConsentRequiredError):
            service.enrol(name, sample(name, 0))
        assert name not in service
    clock.advance(days=1)
    service.enrol("pending", sample("pending", 0))  # its term has begun
    assert "pending" in service


def test_bundled_consent_at_the_service_is_refused_and_audited(service: MatchingService) -> None:
    with pytest.raises(BundledConsentError):
        grant(service, "bob", separate=False)
    assert service.consents("bob") == ()
    assert service.store.consents("bob") == []
    last = service.store.audit_entries()[-1]
    assert (last.event, last.outcome) == ("consent.refused", "bundled")
    with pytest.raises(ConsentRequiredError):
        service.enrol("bob", sample("bob", 0))


def test_grant_needs_exactly_one_term(service: MatchingService, clock: ManualClock) -> None:
    common: dict[str, Any] = {"notice_version": "n", "evidence_ref": "e", "method": "m", "separate": True}
    with pytest.raises(InvalidConsentError):
        service.grant_consent("carol", ["entry"], **common)
    with pytest.raises(InvalidConsentError):
        service.grant_consent(
            "carol", ["entry"], expires_at=clock.now + timedelta(days=1), retention=timedelta(days=1), **common
        )
    with pytest.raises(InvalidConsentError):
        service.grant_consent("carol", "entry", retention=timedelta(days=1), **common)
    r = service.grant_consent("carol", ["entry"], expires_at=clock.now + timedelta(days=3), **common)
    assert r.expires_at == clock.now + timedelta(days=3) and r.granted_at == clock.now


# --------------------------------------------------------------------------- purpose binding


def test_verify_only_for_consented_purposes(service: MatchingService) -> None:
    grant(service, "dave", ["payment"])
    service.enrol("dave", sample("dave", 0))
    probe = sample("dave", 1)
    assert service.verify("dave", probe, "payment") is MATCH
    assert service.verify("dave", probe, "entry") is USE_ALTERNATIVE  # wrong purpose: never a rejection
    assert service.verify("dave", sample("person-3", 1), "payment") is NO_MATCH
    assert service.verify("person-3", probe, "payment") is USE_ALTERNATIVE
    with pytest.raises(InvalidInputError):
        service.verify("dave", probe, "Payment!")


def test_identify_never_returns_a_subject_without_consent_for_the_purpose(service: MatchingService) -> None:
    grant(service, "erin", ["entry"])
    service.enrol("erin", sample("erin", 0))
    probe = sample("erin", 1)
    assert [c.subject for c in service.identify(probe, "entry")] == ["erin"]
    assert service.identify(probe, "payment") == []  # erin is the nearest neighbour, but not for payments
    last = service.store.audit_entries()[-1]
    assert (last.event, last.purpose, last.outcome, last.detail["matched"]) == ("identify", "payment", "no_match", [])


def test_identify_searches_past_ineligible_neighbours(service: MatchingService) -> None:
    rng = np.random.default_rng(5)
    centre = identity("crowd")
    near = [unit(0.93 * centre + 0.37 * unit(rng.standard_normal(centre.shape))) for _ in range(40)]
    for i, template in enumerate(near):  # 40 close look-alikes, consented for entry only
        grant(service, f"lookalike-{i}", ["entry"])
        service.enrol(f"lookalike-{i}", template)
    grant(service, "frank", ["payment", "entry"])
    service.enrol("frank", unit(0.8 * centre + 0.6 * unit(rng.standard_normal(centre.shape))))
    found = service.identify(centre, "payment", k=1)
    assert [(c.subject, c.rank) for c in found] == [("frank", 1)]
    everyone = service.identify(centre, "entry", k=50)
    assert len(everyone) == 41 and "frank" in [c.subject for c in everyone]
    assert [c.rank for c in everyone] == list(range(1, 42))
    assert everyone[-1].subject == "frank"  # the look-alikes are nearer the probe


def test_withdrawn_and_expired_subjects_are_not_matched(service: MatchingService, clock: ManualClock) -> None:
    grant(service, "gina", days=10)
    service.enrol("gina", sample("gina", 0))
    probe = sample("gina", 1)
    assert service.verify("gina", probe, "entry") is MATCH
    clock.advance(days=10)
    # Expired: no longer matched even before the purge runs.
    assert "gina" in service
    assert service.verify("gina", probe, "entry") is USE_ALTERNATIVE
    assert "gina" not in [c.subject for c in service.identify(probe, "entry", k=20)]
    assert service.verify("person-1", sample("person-1", 1), "entry") is MATCH
    service.withdraw("person-1")
    assert service.verify("person-1", sample("person-1", 1), "entry") is USE_ALTERNATIVE
    assert "person-1" not in [c.subject for c in service.identify(sample("person-1", 1), "entry", k=20)]


def test_batch_consent_and_enrolment_are_all_or_nothing(service: MatchingService, clock: ManualClock) -> None:
    def record(name: str, **changes: Any) -> ConsentRecord:
        fields: dict[str, Any] = dict(
            subject=name, purposes={"entry"}, granted_at=clock.now, expires_at=clock.now + timedelta(days=30),
            notice_version="v1", evidence_ref=f"migrated-{name}", method="signed-form", separate=True,
        )  # fmt: skip
        fields.update(changes)
        return ConsentRecord(**fields)

    names = [f"batch-{i}" for i in range(300)]
    entries = len(service.store.audit_entries())
    good = [record(name) for name in names]
    withdrawn = record("late", withdrawn_at=clock.now)
    with pytest.raises(InvalidConsentError):
        service.grant_consents([*good[:5], withdrawn])
    with pytest.raises(InvalidConsentError):
        service.grant_consents([good[0], good[0]])
    assert service.consents(names[0]) == () and len(service.store.audit_entries()) == entries
    service.grant_consents(good)
    assert all(service.consents(name) == (rec,) for name, rec in zip(names, good))

    templates = np.stack([sample(name, 0) for name in names])
    with pytest.raises(ConsentRequiredError, match="nobody in this batch"):
        service.enrol_many([*names[:10], "no-consent"], np.concatenate([templates[:10], sample("x", 0)[None]]))
    assert not any(name in service for name in names[:10])
    service.enrol_many(names, templates)
    assert all(name in service for name in names) and service.check_integrity().ok
    assert service.verify(names[7], sample(names[7], 1), "entry") is MATCH
