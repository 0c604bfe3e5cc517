"""The store, on both backends: layout and settings, one transaction per operation, the
authenticated index cache (rebuilt when missing, stale, tampered or of another
kind), erasure that leaves no byte of a withdrawn code in any file, and probes
that are never written."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import stat
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from fpmatch import (
    ErasureError,
    HashKey,
    InvalidInputError,
    MessageFormatError,
    ProbeMessage,
    ServiceKey,
    KeyFileError,
    KeyMismatchError,
    MatchingService,
    StoreClosedError,
    StoreFormatError,
    StoreLockedError,
    VerificationOutcome,
    load_index,
)
from fpmatch import store_scan, store_sqlite
from fpmatch.store import DATABASE, INDEX_CACHE, Transaction
from fpmatch.store_sqlite import SqliteDatabase
import service_support
from service_support import (
    DIM,
    KEY,
    SERVICE_KEY,
    decider_options,
    edge,
    ManualClock,
    calibrate,
    enrol_people,
    files_containing,
    grant,
    open_service,
    open_store,
    raw,
    store_options,
    protected_bytes,
    sample,
    stranger,
    windows,
)

pytestmark = pytest.mark.usefixtures("scheme", "backend")  # every test runs for every scheme and backend

MATCH = VerificationOutcome.MATCH
NAMES = [f"p{i:03d}" for i in range(24)]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def directory(tmp_path: Path, clock: ManualClock) -> Path:
    """A closed store holding NAMES, calibrated."""
    with open_service(tmp_path / "store", clock) as svc:
        enrol_people(svc, NAMES)
        calibrate(svc)
    return tmp_path / "store"


def found_anywhere(directory: Path, needles: list[bytes]) -> list[bytes]:
    """The needles found in any file under ``directory`` (every file read once)."""
    contents = [path.read_bytes() for path in directory.rglob("*") if path.is_file()]
    return [needle for needle in needles if any(needle in data for data in contents)]


# --------------------------------------------------------------------------- layout and settings


@pytest.mark.sqlite_only
def test_layout_pragmas_and_permissions(directory: Path, clock: ManualClock) -> None:
    files = [DATABASE] + ([INDEX_CACHE] if edge().profile.hashed else [])  # he keeps no code index
    assert sorted(os.listdir(directory)) == sorted(files)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    for name in files:
        assert stat.S_IMODE(os.stat(directory / name).st_mode) == 0o600
    with open_service(directory, clock) as svc:
        conn = svc.store._connection()
        pragmas = {
            p: conn.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("journal_mode", "secure_delete", "synchronous", "locking_mode")
        }
        assert pragmas == {"journal_mode": "wal", "secure_delete": 1, "synchronous": 2, "locking_mode": "exclusive"}
        assert not any(name.endswith("-shm") for name in os.listdir(directory))
        assert svc.store.settings.profile == svc.edge.profile and svc.store.settings.dim == DIM
        assert svc.threshold is not None  # persisted by calibrate
    tables = sqlite3.connect(directory / DATABASE).execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    assert {"meta", "subjects", "he_rows", "consents", "audit"} <= {name for (name,) in tables}


def test_keys_never_live_in_the_store(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    profile = edge().profile
    inside = ServiceKey.load(ServiceKey.generate().save(tmp_path / "store" / "service.key"))
    options = {**decider_options(), **store_options(tmp_path / "store")}
    with pytest.raises(KeyFileError):
        MatchingService.open(tmp_path / "store", inside, edge=profile, **options)
    outside = ServiceKey.load(ServiceKey.generate().save(tmp_path / "service.key"))
    MatchingService.open(tmp_path / "store", outside, edge=profile, **options).close()
    assert files_containing(tmp_path / "store", outside.secret) == []
    assert files_containing(tmp_path / "store", KEY.secret) == []


def test_the_service_refuses_the_transform_key_and_foreign_messages(directory: Path, clock: ManualClock) -> None:
    with pytest.raises(KeyMismatchError, match="transform key"):
        MatchingService.open(directory, KEY, **decider_options(), **store_options(directory))  # type: ignore[arg-type]
    with pytest.raises(KeyFileError, match="hash key"):
        ServiceKey.load(HashKey.generate().save(directory.parent / "edge.key"))
    other_key = edge(key=HashKey(bytes(range(1, 33))))
    other_dim = edge(dim=DIM * 2)
    other_scheme = edge("hash" if service_support.SCHEME != "hash" else "hybrid")
    with open_service(directory, clock) as svc:
        for foreign in (other_key, other_dim, other_scheme):
            with pytest.raises(KeyMismatchError):
                svc.service.verify(NAMES[0], foreign.probe(sample(NAMES[0], 1, foreign.dim)), "entry")
            with pytest.raises(KeyMismatchError):
                svc.service.enrol(NAMES[0], foreign.enrolment(sample(NAMES[0], 1, foreign.dim)))
        record = svc.edge.enrolment(sample("x", 0))
        with pytest.raises(MessageFormatError):
            svc.service.verify(NAMES[0], record, "entry")  # type: ignore[arg-type]  # a record is not a probe
        with pytest.raises(MessageFormatError):
            svc.service.identify(sample(NAMES[0], 1), "entry")  # type: ignore[arg-type]  # floats never reach it
        probe = svc.edge.probe(sample(NAMES[0], 1))
        damaged = probe.to_bytes()
        with pytest.raises(MessageFormatError):
            ProbeMessage.from_bytes(damaged[:-3])
        assert svc.service.verify(NAMES[0], ProbeMessage.from_bytes(damaged), "entry") is MATCH


def test_settings_are_fixed_at_creation(directory: Path, tmp_path: Path) -> None:
    options = {**decider_options(), **store_options(directory)}
    with pytest.raises(KeyMismatchError):
        MatchingService.open(directory, ServiceKey(bytes(32)), **options)
    for other in (edge(dim=DIM + 1), edge(key=HashKey(bytes(32))), edge("hash" if service_support.SCHEME != "hash" else "hybrid")):
        with pytest.raises(KeyMismatchError):
            MatchingService.open(directory, SERVICE_KEY, edge=other.profile, **decider_options(other.scheme), **store_options(directory))
    with pytest.raises(KeyMismatchError):
        MatchingService.open(directory, SERVICE_KEY, scheme="hash" if edge().scheme != "hash" else "he", **options)
    with pytest.raises(InvalidInputError, match="profile"):
        MatchingService.open(tmp_path / "new", SERVICE_KEY, **decider_options(), **store_options(tmp_path / "new"))
    with pytest.raises(InvalidInputError):
        MatchingService.open(directory, SERVICE_KEY, index="lsh", **options)
    with raw(directory) as db:
        db.execute("DELETE FROM meta")
    with pytest.raises(StoreFormatError, match="no store settings"):
        MatchingService.open(directory, SERVICE_KEY, edge=edge().profile, **options)


@pytest.mark.sqlite_only
def test_a_file_that_is_no_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / DATABASE).write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreFormatError):
        MatchingService.open(tmp_path / "junk", SERVICE_KEY, edge=edge().profile, **decider_options())


@pytest.mark.sqlite_only
def test_a_damaged_database_is_refused_never_recreated_empty(directory: Path, tmp_path: Path) -> None:
    options = decider_options()
    truncated = tmp_path / "truncated"
    shutil.copytree(directory, truncated)
    (truncated / DATABASE).write_bytes(b"")  # every subject and consent record would be gone
    for _ in range(2):  # and it stays refused: nothing was made of it
        with pytest.raises(StoreFormatError, match="empty"):
            MatchingService.open(truncated, SERVICE_KEY, edge=edge().profile, **options)
    assert (truncated / DATABASE).stat().st_size == 0
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / DATABASE).mkdir()
    with pytest.raises(StoreFormatError, match="not a regular file"):
        MatchingService.open(tmp_path / "odd", SERVICE_KEY, edge=edge().profile, **options)
    header = tmp_path / "header"
    shutil.copytree(directory, header)
    with open(header / DATABASE, "r+b") as f:
        f.write(b"x" * 16)  # the SQLite magic
    with pytest.raises(StoreFormatError):
        MatchingService.open(header, SERVICE_KEY, edge=edge().profile, **options)


@pytest.mark.parametrize(
    "bad", [{"dim": 0}, {"dim": -3}, {"dim": True}, {"bits": 12}, {"scheme": "lsh"}, {"edge_key_id": "zz"}]
)
def test_a_refused_profile_leaves_the_directory_as_it_was(tmp_path: Path, bad: dict) -> None:
    import dataclasses

    good = edge().profile
    with pytest.raises(InvalidInputError, match="invalid edge profile"):
        profile = dataclasses.replace(good, **bad)
        MatchingService.open(tmp_path / "new", SERVICE_KEY, edge=profile, **decider_options(), **store_options(tmp_path / "new"))
    MatchingService.open(tmp_path / "new", SERVICE_KEY, edge=good, **decider_options(), **store_options(tmp_path / "new")).close()


@pytest.mark.sqlite_only
def test_a_store_whose_creation_fails_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store_sqlite.os, "replace", refuse)
    with pytest.raises(OSError):
        MatchingService.open(tmp_path / "new", SERVICE_KEY, edge=edge().profile, **decider_options())
    assert os.listdir(tmp_path / "new") == []
    monkeypatch.undo()
    MatchingService.open(tmp_path / "new", SERVICE_KEY, edge=edge().profile, **decider_options()).close()


@pytest.mark.sqlite_only
def test_one_process_owns_a_store_and_closed_means_closed(directory: Path, clock: ManualClock) -> None:
    svc = open_service(directory, clock)
    with pytest.raises(StoreLockedError):
        MatchingService.open(directory, SERVICE_KEY, **decider_options())
    svc.close()
    svc.close()  # idempotent
    with pytest.raises(StoreClosedError):
        svc.verify(NAMES[0], sample(NAMES[0], 1), "entry")
    with pytest.raises(StoreClosedError):
        grant(svc, "late")
    for read in (svc.expire, svc.enrolled, lambda: svc.consents(NAMES[0]), lambda: len(svc), lambda: NAMES[0] in svc):
        with pytest.raises(StoreClosedError):
            read()
    MatchingService.open(directory, SERVICE_KEY, **decider_options()).close()


# --------------------------------------------------------------------------- transactions


def failing_audit_on(event: str, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Transaction.audit

    def audit(self: Transaction, time: str, kind: object, **kwargs: object) -> object:
        if getattr(kind, "value", kind) == event:
            raise OSError("disk full")
        return original(self, time, kind, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Transaction, "audit", audit)


def test_a_failed_operation_changes_nothing(
    directory: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_service(directory, clock) as svc:
        before = (svc.store.templates(), svc.store.consents(), svc.store.audit_entries(), svc.store.generation)
        rows = svc.store.rows()
        failing_audit_on("purge", monkeypatch)
        with pytest.raises(OSError):
            svc.withdraw(NAMES[3])
        grant(svc, "late")
        failing_audit_on("enrol", monkeypatch)
        with pytest.raises(OSError):
            svc.enrol("late", sample("late", 0))
        monkeypatch.undo()
        after = (svc.store.templates(), svc.store.consents(), svc.store.audit_entries()[:-1], svc.store.generation)
        assert after[0] == before[0] and after[2] == before[2] and after[3] == before[3]
        assert svc.store.rows() == rows
        assert [c.subject for c in after[1] if c.withdrawn_at is not None] == []
        assert "late" not in svc and NAMES[3] in svc
        assert svc.verify(NAMES[3], sample(NAMES[3], 1), "entry") is MATCH
        assert svc.check_integrity().ok


# --------------------------------------------------------------------------- the index cache


@pytest.fixture
def cached(scheme: str) -> None:
    """For tests of the index cache: the he scheme has no code index, so nothing is cached."""
    if scheme == "he":
        pytest.skip("the he scheme keeps no code index, so it has no index cache")


@pytest.mark.usefixtures("cached")
def test_current_cache_is_loaded(directory: Path, clock: ManualClock) -> None:
    with open_service(directory, clock) as svc:
        assert svc.cache_status == "loaded"
        assert sorted(svc.enrolled()) == NAMES
        assert svc.verify(NAMES[5], sample(NAMES[5], 1), "entry") is MATCH
        assert svc.check_integrity().ok


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def header_only(path: Path) -> None:
    path.write_bytes(b"FPMATCHC")


@pytest.mark.parametrize(
    "damage, status",
    [
        (Path.unlink, "missing"),
        (truncate, "unauthenticated"),
        (flip_a_bit, "unauthenticated"),
        (header_only, "unauthenticated"),
    ],
)
@pytest.mark.usefixtures("cached")
def test_missing_or_tampered_cache_is_rebuilt(
    directory: Path, clock: ManualClock, damage: Callable[[Path], None], status: str
) -> None:
    damage(directory / INDEX_CACHE)
    with open_service(directory, clock) as svc:
        assert svc.cache_status == status
        assert sorted(svc.enrolled()) == NAMES and svc.check_integrity().ok
        assert svc.verify(NAMES[5], sample(NAMES[5], 1), "entry") is MATCH
    with open_service(directory, clock) as svc:
        assert svc.cache_status == "loaded"


@pytest.mark.usefixtures("cached")
def test_cache_of_another_store_is_not_used(directory: Path, tmp_path: Path, clock: ManualClock) -> None:
    other = ServiceKey(bytes(range(1, 33)))
    with open_service(tmp_path / "other", clock, key=other) as svc:
        grant(svc, "x")
        svc.enrol("x", sample("x", 0))
    shutil.copy(tmp_path / "other" / INDEX_CACHE, directory / INDEX_CACHE)
    with open_service(directory, clock) as svc:
        assert svc.cache_status == "unauthenticated" and "x" not in svc and len(svc) == len(NAMES)


@pytest.mark.usefixtures("cached")
def test_stale_cache_never_resurrects_a_withdrawn_subject(directory: Path, tmp_path: Path, clock: ManualClock) -> None:
    victim = NAMES[7]
    shutil.copy(directory / INDEX_CACHE, tmp_path / "old.cache")  # e.g. a backup taken before the withdrawal
    with open_service(directory, clock) as svc:
        old_index = load_index(svc.gallery.index.serialize(b"m" * 32), b"m" * 32)
        svc.withdraw(victim)
        grant(svc, "newcomer")
        svc.enrol("newcomer", sample("newcomer", 0))
    shutil.copy(tmp_path / "old.cache", directory / INDEX_CACHE)
    with open_service(directory, clock) as svc:
        assert svc.cache_status == "stale"
        assert victim not in svc and "newcomer" in svc and svc.check_integrity().ok
        assert svc.verify(victim, sample(victim, 1), "entry") is VerificationOutcome.USE_ALTERNATIVE
    # A cache stamped with the current generation but holding other ids is refused too.
    store = open_store(directory)
    store.write_index_cache(old_index, store.generation)
    store.close()
    with open_service(directory, clock) as svc:
        assert svc.cache_status == "mismatch" and victim not in svc and svc.check_integrity().ok


@pytest.mark.usefixtures("cached")
def test_index_kind_can_change_between_opens(directory: Path, clock: ManualClock) -> None:
    with open_service(directory, clock, index="hnsw") as svc:
        assert svc.cache_status == "mismatch" and type(svc.gallery.index).__name__ == "HNSWIndex"
        assert [c.subject for c in svc.identify(sample(NAMES[2], 1), "entry", k=1)] == [NAMES[2]]
        svc.withdraw(NAMES[2])
    with open_service(directory, clock, index="hnsw") as svc:
        assert svc.cache_status == "loaded" and NAMES[2] not in svc and svc.check_integrity().ok


# --------------------------------------------------------------------------- erasure


@pytest.mark.sqlite_only
def test_withdrawn_and_expired_codes_leave_no_bytes_in_any_file(tmp_path: Path, clock: ManualClock) -> None:
    directory = tmp_path / "store"
    names = [f"s{i:03d}" for i in range(150)]
    with open_service(directory, clock) as svc:
        enrol_people(svc, names[:140])
        enrol_people(svc, names[140:], days=30)  # these expire
        calibrate(svc)
        capture = svc.edge
    withdrawn = [names[0], names[75], names[139]]
    expired = names[140:]
    kept = names[1]
    held = {name: protected_bytes(directory, name) for name in [*withdrawn, *expired, kept]}
    for name, parts in held.items():
        record = capture.enrolment(sample(name, 0))
        assert parts[0] == (record.code.tobytes() if record.code is not None else parts[0])
        assert len(parts) == capture.profile.hashed + capture.profile.encrypted
        # The scan finds them while they are held: codes in the database and the index cache,
        # ciphertexts in the database.
        assert_held(directory, parts, capture.profile.hashed)

    with open_service(directory, clock) as svc:
        for name in withdrawn:
            assert svc.withdraw(name)
        clock.advance(days=31)
        assert svc.expire() == expired
        # Erasure is immediate: nothing left while the service is still running.
        for name in [*withdrawn, *expired]:
            assert all(files_containing(directory, part) == [] for part in held[name]), name
        assert svc.check_integrity().ok
        remaining = svc.enrolled()
    assert sorted(remaining) == sorted(set(names) - set(withdrawn) - set(expired))

    present = sorted(os.listdir(directory))
    assert present == sorted([DATABASE] + ([INDEX_CACHE] if capture.profile.hashed else []))
    for name in [*withdrawn, *expired]:
        for part in held[name]:
            for needle in [part, *windows(part)]:
                assert files_containing(directory, needle) == [], name
        assert files_containing(directory, sample(name, 0).tobytes()) == []  # templates were never stored
    assert_held(directory, held[kept], capture.profile.hashed)


def assert_held(directory: Path, parts: list[bytes], hashed: bool) -> None:
    """A code is found whole in the database and the index cache; a ciphertext, which the
    database may split over overflow pages, is found piece by piece in the database only."""
    if hashed:
        code, *parts = parts
        assert files_containing(directory, code) == sorted([DATABASE, INDEX_CACHE])
    for part in parts:
        pieces = windows(part)
        found = found_anywhere(directory, pieces)
        assert len(found) >= len(pieces) - 2  # a piece may straddle a page boundary
        assert files_containing(directory, found[0]) == [DATABASE]


def count_rebuilds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one each time the store rebuilds its database."""
    rebuilds: list[int] = []
    real_rebuild = store_sqlite._rebuild
    monkeypatch.setattr(store_sqlite, "_rebuild", lambda conn: (rebuilds.append(1), real_rebuild(conn)))
    return rebuilds


def plant_stale_copy(directory: Path, piece: bytes) -> None:
    """Write ``piece`` into the unused space of a page of the subjects table, as SQLite leaves the
    bytes of a cell it moved when it rebalances pages (secure_delete does not cover that space;
    seen with SQLite 3.40). The database stays valid: nothing reads unused space."""
    db = sqlite3.connect(directory / DATABASE)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    pages = [n for (n,) in db.execute("SELECT pageno FROM dbstat WHERE name = 'subjects' AND pagetype = 'leaf'")]
    db.close()
    with open(directory / DATABASE, "r+b") as f:
        for number in pages:
            f.seek((number - 1) * page_size)
            page = f.read(page_size)
            header = 100 if number == 1 else 0
            cells = int.from_bytes(page[header + 3 : header + 5], "big")
            gap_start = header + 8 + 2 * cells
            gap_end = int.from_bytes(page[header + 5 : header + 7], "big") or 65536
            if gap_end - gap_start >= len(piece) + 8:
                f.seek((number - 1) * page_size + gap_start + 4)
                f.write(piece)
                return
    raise AssertionError("no page of the subjects table has room for the piece")


def _withdraw_with_a_stale_copy(directory: Path, clock: ManualClock) -> tuple[Path, bytes]:
    with open_service(directory, clock) as svc:
        enrol_people(svc, NAMES)
        calibrate(svc)
        code = protected_bytes(svc, NAMES[5])[0]
    plant_stale_copy(directory, code[32:48])
    with open_service(directory, clock) as svc:
        assert svc.verify(NAMES[5], sample(NAMES[5], 1), "entry") is MATCH  # the database is intact
        svc.withdraw(NAMES[5])
    return directory, code


@pytest.mark.sqlite_only
def test_erased_codes_are_searched_for_and_stale_copies_rebuilt_away(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patched:  # without the search, the copy outlives the erasure
        patched.setattr(SqliteDatabase, "copies_left", lambda self, codes: False)
        directory, code = _withdraw_with_a_stale_copy(tmp_path / "unchecked", clock)
    assert found_anywhere(directory, [code[32:48]]) == [code[32:48]]

    rebuilds = count_rebuilds(monkeypatch)
    directory, code = _withdraw_with_a_stale_copy(tmp_path / "checked", clock)
    assert len(rebuilds) == 1  # found once, rebuilt once
    assert found_anywhere(directory, windows(code) + [code[32:48]]) == []
    with open_service(directory, clock) as svc:
        assert svc.check_integrity().ok and sorted(svc.enrolled()) == sorted(set(NAMES) - {NAMES[5]})


@pytest.mark.sqlite_only
def test_a_large_batch_of_erasures_is_rebuilt_at_once(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "store"
    names = [f"b{i:03d}" for i in range(store_sqlite._SEARCHED_ERASURES + 6)]
    rebuilds = count_rebuilds(monkeypatch)
    searches = []
    real_search = SqliteDatabase.copies_left
    monkeypatch.setattr(SqliteDatabase, "copies_left", lambda self, codes: (searches.append(1), real_search(self, codes))[1])
    with open_service(directory, clock) as svc:
        enrol_people(svc, names[:3])
        enrol_people(svc, names[3:], days=30)
        held = {name: protected_bytes(svc, name) for name in names[3:]}
        clock.advance(days=31)
        assert svc.expire() == names[3:]
        assert rebuilds == [1] and searches == []
    for name in names[3:]:
        assert all(files_containing(directory, part) == [] for part in held[name]), name


@pytest.mark.sqlite_only
def test_a_store_left_by_a_crash_is_rebuilt_on_open(
    directory: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    rebuilds = count_rebuilds(monkeypatch)
    with open_service(directory, clock):
        pass
    assert rebuilds == []  # a clean close leaves no WAL behind
    (directory / f"{DATABASE}-wal").write_bytes(b"")  # what a killed owner leaves
    with open_service(directory, clock) as svc:
        assert rebuilds == [1] and sorted(svc.enrolled()) == sorted(NAMES)
    assert not (directory / f"{DATABASE}-wal").exists()


@pytest.mark.sqlite_only
def test_a_copy_that_survives_the_rebuild_is_an_error(
    directory: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SqliteDatabase, "copies_left", lambda self, codes: True)
    svc = open_service(directory, clock)
    with pytest.raises(ErasureError, match="still in"):
        svc.withdraw(NAMES[0])
    monkeypatch.undo()
    assert NAMES[0] not in svc.enrolled()  # the erasure itself was committed
    svc.close()
    with open_service(directory, clock) as svc:
        assert NAMES[0] not in svc.enrolled() and svc.check_integrity().ok


def test_probes_are_never_written(directory: Path, clock: ManualClock) -> None:
    probe = stranger(42)
    with open_service(directory, clock) as svc:
        message = svc.edge.probe(probe)
        parts = [part for part in (message.code, message.reliability, message.values) if part is not None]
        before = (svc.store.templates(), svc.store.consents(), svc.store.audit_entries())
        assert svc.identify(probe, "entry") == []
        assert svc.verify(NAMES[0], probe, "entry") is VerificationOutcome.NO_MATCH
        after = (svc.store.templates(), svc.store.consents(), svc.store.audit_entries())
        assert after[:2] == before[:2]
        new = after[2][len(before[2]) :]
        assert [(e.event, e.outcome) for e in new] == [("identify", "no_match"), ("verify", "no_match")]
        assert new[0].subject is None and new[0].detail == {"k": 5, "matched": []}
        assert new[1].detail == {}
        needles = [probe.tobytes()] + [w for part in parts for w in windows(part.tobytes())]
        assert found_anywhere(directory, needles) == []
    assert found_anywhere(directory, needles) == []


@pytest.mark.sqlite_only
def test_the_erasure_search_finds_a_piece_at_any_offset() -> None:
    rng = np.random.default_rng(8)
    pieces = {rng.bytes(16) for _ in range(300)}
    finder = store_scan.PieceFinder(pieces)
    noise = rng.bytes(100_000)
    assert not finder.found(noise) and not finder.found(b"") and not finder.found(noise[:15])
    piece = sorted(pieces)[7]
    for offset in [*range(9), 50_001, len(noise) - 16]:
        assert finder.found(noise[:offset] + piece + noise[offset + 16 :]), offset
    assert not finder.found(noise[:500] + piece[:15] + noise[515:])  # a partial piece is not a piece


@pytest.mark.sqlite_only
def test_the_file_search_finds_a_piece_across_the_boundary_of_two_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_scan, "CHUNK", 4096)
    rng = np.random.default_rng(9)
    pieces = {rng.bytes(16) for _ in range(50)}
    finder = store_scan.PieceFinder(pieces)
    noise, piece = rng.bytes(20_000), sorted(pieces)[3]
    path = tmp_path / "file"
    for start in (4096 - 8, 4096 - 15, 3 * 4096 - 1, 0, len(noise) - 16):
        path.write_bytes(noise[:start] + piece + noise[start + 16 :])
        assert finder.found_in_file(path), start
    path.write_bytes(noise)
    assert not finder.found_in_file(path)


def test_reads_of_some_subjects_and_rows_return_exactly_those(directory: Path) -> None:
    from fpmatch import StoreIntegrityError

    store = open_store(directory)
    try:
        everything = store.templates()
        ids = [t.id for t in everything][::3]
        assert store.templates(ids[::-1]) == [t for t in everything if t.id in set(ids)]  # in id order
        assert store.templates([10**9]) == []  # not enrolled: nothing
        rows = store.rows()
        assert store.row_count() == len(rows) and (len(rows) > 0) == edge().profile.encrypted
        numbers = list(range(len(rows)))[::-1]
        assert store.rows(numbers) == rows[::-1]  # in the order asked
        with pytest.raises(StoreIntegrityError, match="rows are missing"):
            store.rows([len(rows)])
    finally:
        store.close()
