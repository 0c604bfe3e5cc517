"""The hash-chained audit log: what it records (and never records), tamper
detection with the place and kind of each tampering, the keyed head, and
JSON-lines export."""

from __future__ import annotations

import io
import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from fpmatch import AuditEntry, AuditHead, AuditTamperedError, ConsentRequiredError, InvalidInputError
from fpmatch.audit import AuditEvent, dumps_jsonl, export_jsonl, head_mac, make_entry, read_jsonl, verify_chain
from service_support import KEY, ManualClock, calibrate, enrol_people, grant, open_service, raw, sample, stranger

pytestmark = pytest.mark.usefixtures("scheme")  # every test runs for every scheme

MAC_KEY = b"k" * 32


def build(n: int = 10) -> tuple[list[AuditEntry], AuditHead]:
    entries: list[AuditEntry] = []
    head = None
    for i in range(n):
        entry = make_entry(
            head,
            time=f"2026-03-01T09:00:{i:02d}.000000+00:00",
            event=AuditEvent.VERIFY,
            subject=f"p{i}",
            purpose="entry",
            outcome="match" if i % 2 else "no_match",
            detail={"reason": None},
        )
        entries.append(entry)
        head = AuditHead(entry.seq, entry.hash, head_mac(MAC_KEY, entry.seq, entry.hash))
    assert head is not None
    return entries, head


def rehashed(entry: AuditEntry, **changes: object) -> AuditEntry:
    changed = replace(entry, **changes)  # type: ignore[arg-type]
    return replace(changed, hash=changed.computed_hash())


def problem(entries: list[AuditEntry], head: AuditHead | None = None) -> tuple[str | None, int | None]:
    report = verify_chain(entries, head, MAC_KEY if head is not None else None)
    assert report.ok is (report.problem is None) and bool(report) is report.ok
    return report.problem, report.first_bad_seq


# --------------------------------------------------------------------------- the chain


def test_intact_chain_verifies_with_and_without_key() -> None:
    entries, head = build()
    assert [e.seq for e in entries] == list(range(1, 11))
    assert entries[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.hash for a, b in zip(entries, entries[1:]))
    plain = verify_chain(entries)
    assert plain.ok and plain.entries == 10 and not plain.head_checked and "unkeyed" in plain.message
    keyed = verify_chain(entries, head, MAC_KEY)
    assert keyed.ok and keyed.head_checked
    keyed.raise_if_broken()
    assert verify_chain([]).ok


def test_edited_entry_is_detected() -> None:
    entries, head = build()
    entries[4] = replace(entries[4], outcome="match")
    assert problem(entries) == ("edited", 5)
    with pytest.raises(AuditTamperedError, match="entry 5"):
        verify_chain(entries).raise_if_broken()


def test_edited_and_rehashed_entry_is_detected() -> None:
    entries, head = build()
    entries[4] = rehashed(entries[4], outcome="match")
    assert problem(entries) == ("edited", 5)
    entries, head = build()
    entries[-1] = rehashed(entries[-1], outcome="tampered")  # the last one: only the keyed head can tell
    assert problem(entries) == (None, None)
    assert problem(entries, head) == ("edited", 10)


def test_deleted_entry_is_detected() -> None:
    entries, _ = build()
    del entries[4]
    assert problem(entries) == ("deleted", 5)
    entries, _ = build()
    del entries[4:7]
    report = verify_chain(entries)
    assert (report.problem, report.first_bad_seq) == ("deleted", 5) and "5..7" in report.message


def test_deleted_entry_with_renumbering_is_detected() -> None:
    entries, _ = build()
    del entries[4]
    entries[4:] = [replace(e, seq=e.seq - 1) for e in entries[4:]]
    assert problem(entries) == ("deleted", 5)


def test_inserted_entry_is_detected() -> None:
    entries, _ = build()
    forged = make_entry(
        AuditHead(4, entries[3].hash, ""),
        time=entries[3].time,
        event=AuditEvent.VERIFY,
        subject="p3",
        purpose="entry",
        outcome="match",
    )
    assert problem(entries[:4] + [forged] + entries[4:]) == ("inserted", 5)
    renumbered = [replace(e, seq=e.seq + 1) for e in entries[4:]]
    assert problem(entries[:4] + [forged] + renumbered) == ("inserted", 5)


def test_reordered_entries_are_detected() -> None:
    entries, _ = build()
    entries[4], entries[5] = entries[5], entries[4]
    assert problem(entries) == ("reordered", 5)
    entries, _ = build()
    entries[2], entries[7] = entries[7], entries[2]
    assert problem(entries) == ("reordered", 3)
    # Renumbered so the sequence numbers look right (as a database sorted by seq shows them).
    entries, _ = build()
    entries[4], entries[5] = replace(entries[5], seq=5), replace(entries[4], seq=6)
    assert problem(entries) == ("reordered", 5)


def test_truncation_and_rewrite_need_the_keyed_head() -> None:
    entries, head = build()
    assert problem(entries[:8]) == (None, None)  # the documented limit of a plain chain
    assert problem(entries[:8], head) == ("deleted", 9)
    rewritten, _ = build(10)
    rewritten = [rehashed(rewritten[0], outcome="match")]
    for e in build(10)[0][1:]:
        rewritten.append(rehashed(e, prev_hash=rewritten[-1].hash))
    assert problem(rewritten) == (None, None)
    assert problem(rewritten, head) == ("edited", 10)
    forged_head = AuditHead(10, rewritten[-1].hash, head_mac(b"x" * 32, 10, rewritten[-1].hash))
    assert problem(rewritten, forged_head) == ("head", 10)
    extra = make_entry(head, time="t", event=AuditEvent.VERIFY, outcome="match")
    assert problem(entries + [extra], head) == ("inserted", 11)


@pytest.mark.parametrize("value", [0.73, np.float32(0.5), b"\x01\x02", np.zeros(4), {"nested": 1}, [1.5], [b"x"]])
def test_detail_refuses_scores_bytes_and_arrays(value: object) -> None:
    with pytest.raises(InvalidInputError):
        make_entry(None, time="t", event=AuditEvent.IDENTIFY, detail={"x": value})
    with pytest.raises(InvalidInputError):
        make_entry(None, time="t", event=AuditEvent.IDENTIFY, detail={1: "x"})  # type: ignore[dict-item]


def test_jsonl_export_round_trips_and_exposes_edits(tmp_path: Path) -> None:
    entries, head = build()
    path = tmp_path / "audit.jsonl"
    assert export_jsonl(entries, path) == 10
    lines = path.read_text().splitlines()
    assert len(lines) == 10 and all(json.loads(line)["seq"] == i for i, line in enumerate(lines, 1))
    assert read_jsonl(path) == entries and dumps_jsonl(entries) == path.read_text()
    assert verify_chain(read_jsonl(path), head, MAC_KEY).ok
    lines[6] = lines[6].replace('"outcome":"no_match"', '"outcome":"match"')
    assert problem(read_jsonl(io.StringIO("\n".join(lines))), head) == ("edited", 7)
    lines[6] = lines[6].replace('{"reason":null}', '{"reason":NaN}')
    assert problem(read_jsonl(io.StringIO("\n".join(lines))), head) == ("edited", 7)
    lines[6] = lines[6].replace('{"reason":NaN}', "[1.5]")
    with pytest.raises(InvalidInputError, match="line 7"):
        read_jsonl(io.StringIO("\n".join(lines)))
    with pytest.raises(InvalidInputError, match="line 2"):
        read_jsonl(io.StringIO(lines[0] + "\n{not json\n"))
    with pytest.raises(InvalidInputError):
        read_jsonl(io.StringIO('{"seq": 1}\n'))


# --------------------------------------------------------------------------- the service's log


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store_dir(tmp_path: Path, clock: ManualClock, backend: str) -> Iterator[Path]:
    """A closed store with a full lifecycle in its log (on each store backend)."""
    directory = tmp_path / "store"
    with open_service(directory, clock) as svc:
        enrol_people(svc, [f"p{i}" for i in range(12)])
        calibrate(svc)
        grant(svc, "short", days=2)
        svc.enrol("short", sample("short", 0))
        assert svc.verify("p1", sample("p1", 1), "entry").value == "match"
        svc.verify("p2", sample("p3", 1), "entry")
        svc.verify("p4", sample("p4", 1), "payment")
        svc.identify(sample("p5", 1), "entry")
        svc.identify(stranger(1), "entry")
        svc.withdraw("p6")
        clock.advance(days=3)
        svc.expire()
        with pytest.raises(ConsentRequiredError):
            svc.enrol("ghost", sample("ghost", 0))
    yield directory


def test_every_kind_of_event_is_logged_without_biometric_data(store_dir: Path, clock: ManualClock) -> None:
    with open_service(store_dir, clock) as svc:
        entries = svc.store.audit_entries()
        events = [e.event for e in entries]
        for kind in ("consent.granted", "enrol", "verify", "identify", "consent.withdrawn", "purge", "enrol.refused"):
            assert kind in events, kind
        verify_outcomes = [e.outcome for e in entries if e.event == "verify"]
        assert verify_outcomes == ["match", "no_match", "use_alternative"]
        identify = [e for e in entries if e.event == "identify"]
        assert [e.outcome for e in identify] == ["match", "no_match"]
        assert identify[0].detail["matched"] == [svc.pseudonym("p5")] and identify[1].detail["matched"] == []
        purges = [(e.subject, e.detail["reason"]) for e in entries if e.event == "purge"]
        assert purges == [(svc.pseudonym("p6"), "withdrawn"), (svc.pseudonym("short"), "expired")]
        for entry in entries:
            text = entry.to_json()
            assert not any(word in text for word in ("score", "distance", "threshold_distance"))
            assert "p6" not in (entry.subject or "") and '"p6"' not in text  # pseudonyms, not names
            for value in entry.detail.values():
                assert not isinstance(value, float)
        report = svc.audit_verify()
        assert report.ok and report.head_checked and report.entries == len(entries)


def test_export_verifies_offline_with_the_head(store_dir: Path, clock: ManualClock, tmp_path: Path) -> None:
    with open_service(store_dir, clock) as svc:
        n = svc.export_audit(tmp_path / "log.jsonl")
        head = svc.audit_head()
        mac_key = svc.store.audit_key
    assert head is not None and n == head.seq
    assert verify_chain(read_jsonl(tmp_path / "log.jsonl"), head, mac_key).ok
    assert verify_chain(read_jsonl(tmp_path / "log.jsonl"), head, KEY.subkey("something-else")).problem == "head"


def tamper(store_dir: Path, *statements: str) -> None:
    with raw(store_dir) as db:
        for statement in statements:
            db.execute(statement)


def verify_after(store_dir: Path, clock: ManualClock) -> tuple[str | None, int | None]:
    with open_service(store_dir, clock) as svc:
        report = svc.audit_verify()
        integrity = svc.check_integrity()
    assert integrity.ok is report.ok
    return report.problem, report.first_bad_seq


def test_tampering_in_the_database_is_located(store_dir: Path, clock: ManualClock) -> None:
    assert verify_after(store_dir, clock) == (None, None)
    tamper(store_dir, "UPDATE audit SET outcome = 'match' WHERE seq = 30")
    assert verify_after(store_dir, clock) == ("edited", 30)


def test_unreadable_detail_in_the_database_is_located(store_dir: Path, clock: ManualClock) -> None:
    tamper(store_dir, "UPDATE audit SET detail = '{broken' WHERE seq = 9")
    assert verify_after(store_dir, clock) == ("edited", 9)


def test_deletion_in_the_database_is_located(store_dir: Path, clock: ManualClock) -> None:
    tamper(store_dir, "DELETE FROM audit WHERE seq = 12")
    assert verify_after(store_dir, clock) == ("deleted", 12)


def test_reordering_in_the_database_is_located(store_dir: Path, clock: ManualClock) -> None:
    tamper(
        store_dir,
        "UPDATE audit SET seq = -1 WHERE seq = 20",
        "UPDATE audit SET seq = 20 WHERE seq = 21",
        "UPDATE audit SET seq = 21 WHERE seq = -1",
    )
    assert verify_after(store_dir, clock) == ("reordered", 20)


def test_truncation_in_the_database_is_detected_and_stays_visible(store_dir: Path, clock: ManualClock) -> None:
    with open_service(store_dir, clock) as svc:
        last = svc.audit_head()
    assert last is not None
    tamper(store_dir, f"DELETE FROM audit WHERE seq > {last.seq - 3}")
    assert verify_after(store_dir, clock) == ("deleted", last.seq - 2)
    with open_service(store_dir, clock) as svc:  # new entries chain from the signed head: the gap stays
        svc.verify("p1", sample("p1", 2), "entry")
        assert (svc.audit_verify().problem, svc.audit_verify().first_bad_seq) == ("deleted", last.seq - 2)


def test_a_removed_or_forged_head_is_never_re_signed(store_dir: Path, clock: ManualClock) -> None:
    tamper(store_dir, "DELETE FROM meta WHERE name = 'audit_head'")
    assert verify_after(store_dir, clock)[0] == "head"
    with open_service(store_dir, clock) as svc:
        svc.verify("p1", sample("p1", 2), "entry")
        svc.identify(sample("p2", 2), "entry")
        report = svc.audit_verify()
    assert report.problem == "head" and not report.ok
    with pytest.raises(AuditTamperedError):
        report.raise_if_broken()


@pytest.mark.usefixtures("backend")
def test_concurrent_match_requests_share_audit_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit: appends arriving together take one transaction (one fsync), none is lost."""
    from fpmatch.store import Store

    commits: list[int] = []
    real = Store.transaction

    def counted(self: Store):  # type: ignore[no-untyped-def]
        commits.append(1)
        return real(self)

    with open_service(tmp_path / "store", ManualClock()) as svc:
        enrol_people(svc, ["ann"])
        monkeypatch.setattr(Store, "transaction", counted)
        errors: list[BaseException] = []

        def requests() -> None:
            try:
                for _ in range(40):
                    svc.verify("nobody", sample("ann", 1), "entry")  # no consent: audited, nothing decided
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=requests) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        monkeypatch.undo()
        assert errors == []
        entries = svc.store.audit_entries()
        assert sum(1 for e in entries if e.event == "verify") == 320
        assert len(commits) < 320  # grouped
        report = svc.audit_verify()
        assert report.ok, report.message
