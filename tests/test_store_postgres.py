"""What only a PostgreSQL store does, on a throwaway server started by the test session:
withdrawal erases from every file of the server's data directory (heap, TOAST and WAL),
erasures a crashed process left are made final at the next open, several processes
write to one store at once and keep one audit chain and true censuses, a server whose
settings would keep erased rows is refused, and an unreachable server or a lost
connection is a typed error. (The tests shared with SQLite are in test_store.py and
test_store_integrity.py.)"""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from fpmatch import (
    ErasureError,
    ErasureSettingsError,
    InvalidInputError,
    MatchingService,
    PinVerifier,
    StoreFormatError,
    StoreUnavailableError,
)
from fpmatch.audit import AuditEvent
from fpmatch import store_postgres
from fpmatch.store import Store
from fpmatch.store_postgres import PostgresDatabase
from fpmatch.store_scan import PieceFinder

import postgres_support
import service_support
from service_support import (
    SERVICE_KEY,
    ManualClock,
    database_for,
    edge,
    enrol_people,
    grant,
    open_service,
    open_store,
    protected_bytes,
    raw,
    windows,
)


@pytest.fixture
def server(postgres_server: postgres_support.PostgresServer) -> Iterator[postgres_support.PostgresServer]:
    previous = service_support.SERVER
    service_support.SERVER = postgres_server
    try:
        yield postgres_server
    finally:
        service_support.SERVER = previous


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def server_files_holding(server: postgres_support.PostgresServer, parts: list[bytes]) -> list[str]:
    """The files of the server's data directory (tables, TOAST, WAL, everything) holding any
    16-byte window of any of ``parts``. (Every test's stores share the server and the edge key,
    so the subjects searched for have names no other test enrols.)"""
    return sorted({file for holders in files_holding_each(server, parts).values() for file in holders})


def files_holding_each(server: postgres_support.PostgresServer, parts: list[bytes]) -> dict[bytes, list[str]]:
    """For each of ``parts``, the files of the data directory holding any of its windows: one
    pass over the directory, however many parts."""
    owners: dict[bytes, list[bytes]] = {}
    for part in parts:
        for window in windows(part):
            if len(set(window)) > 1:
                owners.setdefault(window, []).append(part)
    finder = PieceFinder(set(owners))
    holding: dict[bytes, list[str]] = {part: [] for part in parts}
    for path in sorted(server.data.rglob("*")):
        if path.is_file():
            for part in {part for piece in finder.pieces_in_file(path) for part in owners[piece]}:
                holding[part].append(str(path.relative_to(server.data)))
    return holding


def admin(server: postgres_support.PostgresServer) -> Any:
    import psycopg

    return psycopg.connect(server.admin, autocommit=True)


# --------------------------------------------------------------------------- erasure


def test_withdrawn_and_expired_templates_leave_no_bytes_in_the_server_files(
    server: postgres_support.PostgresServer, scheme: str, tmp_path: Path, clock: ManualClock
) -> None:
    directory = tmp_path / "store"
    names = [f"erased-{scheme}-{i:02d}" for i in range(40)]
    withdrawn, expired, kept = [names[0], names[20]], names[36:], names[1]
    with open_service(directory, clock) as svc:
        enrol_people(svc, names[:36])
        enrol_people(svc, expired, days=30)
        held = {name: protected_bytes(svc, name) for name in [*withdrawn, *expired, kept]}
        assert svc.store._database().data_directory == server.data  # so the store searches too
    with admin(server) as conn:
        conn.execute("ANALYZE")  # what autovacuum does sooner or later: sample columns into pg_statistic
        conn.execute("CHECKPOINT")  # the tables' pages reach their files
    holding = files_holding_each(server, [part for parts in held.values() for part in parts])
    for name, parts in held.items():  # the search finds every part in the tables' files while it is held
        assert len(parts) == edge().profile.hashed + edge().profile.encrypted
        for part in parts:
            assert any(f.startswith("base/") for f in holding[part]), name

    with open_service(directory, clock) as svc:
        for name in withdrawn:
            assert svc.withdraw(name)
        clock.advance(days=31)
        assert svc.expire() == expired
        with raw(directory) as db:  # the rows are gone from the tables
            gone = [*withdrawn, *expired]
            assert db.execute("SELECT count(*) FROM subjects WHERE subject = ANY(?)", (gone,)).fetchone()[0] == 0
        holding = files_holding_each(server, [part for parts in held.values() for part in parts])
        for name in gone:  # and, after the store's rewrite, from every file of the server
            assert all(holding[part] == [] for part in held[name]), name
        assert svc.check_integrity().ok and kept in svc
    assert all(holding[part] for part in held[kept])


def test_erasures_a_crashed_process_committed_are_made_final_at_the_next_open(
    server: postgres_support.PostgresServer, tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "store"
    with open_service(directory, clock, "hash") as svc:
        enrol_people(svc, ["crash-ann", "crash-bob", "crash-cat"])
        code = protected_bytes(svc, "crash-bob")[0]
    monkeypatch.setattr(PostgresDatabase, "scrub", lambda self, erased: True)  # dies before making it final
    with open_service(directory, clock, "hash") as svc:
        svc.withdraw("crash-bob")
    monkeypatch.undo()
    assert server_files_holding(server, [code]) != []  # committed, not yet final
    with raw(directory) as db:
        assert db.execute("SELECT value FROM meta WHERE name = 'erasures_pending'").fetchone() == ("1",)
    open_store(directory).close()
    assert server_files_holding(server, [code]) == []
    with raw(directory) as db:
        assert db.execute("SELECT value FROM meta WHERE name = 'erasures_pending'").fetchone() == ("0",)


def test_a_copy_left_after_the_rewrite_is_an_error(
    server: postgres_support.PostgresServer, tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "store"
    svc = open_service(directory, clock, "hash")
    enrol_people(svc, ["ann", "bob"])
    monkeypatch.setattr(PostgresDatabase, "_copies_left", lambda self, erased: "pg_wal/000000010000000000000001")
    with pytest.raises(ErasureError, match="still in"):
        svc.withdraw("ann")
    monkeypatch.undo()
    assert "ann" not in svc.store.subject_ids()  # the erasure itself was committed
    svc.close()


def test_an_erasure_waits_for_snapshots_older_than_it(
    server: postgres_support.PostgresServer, tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    directory = tmp_path / "store"
    svc = open_service(directory, clock, "hash")
    enrol_people(svc, ["wait-ann", "wait-bob", "wait-cat"])
    codes = {name: protected_bytes(svc, name)[0] for name in ("wait-ann", "wait-bob")}
    reader = psycopg.connect(database_for(directory), autocommit=True)  # another node, in the middle of a read
    reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT 1").fetchone()  # its snapshot is taken (and it locks no table)
    monkeypatch.setattr(store_postgres, "SNAPSHOT_WAIT_SECONDS", 0.5)
    with pytest.raises(ErasureError, match="older than the erasure"):
        svc.withdraw("wait-bob")
    assert "wait-bob" not in svc.store.subject_ids()  # committed, but not final:
    with admin(server) as conn:  # a rewrite now copies the row, which the old snapshot may still read
        conn.execute(f"VACUUM FULL {database_for(directory).rpartition('=')[2]}.subjects")
        conn.execute("CHECKPOINT")
    assert reader.execute("SELECT count(*) FROM subjects WHERE subject = 'wait-bob'").fetchone() == (1,)
    assert server_files_holding(server, [codes["wait-bob"]]) != []
    reader.execute("ROLLBACK")
    monkeypatch.undo()
    reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT 1").fetchone()
    ends = threading.Timer(0.5, reader.execute, ("ROLLBACK",))  # this read ends while the scrub waits
    ends.start()
    assert svc.withdraw("wait-ann")  # waits for it, then makes both erasures final
    ends.join()
    reader.close()
    assert server_files_holding(server, [codes["wait-bob"]]) == [] and server_files_holding(server, [codes["wait-ann"]]) == []
    svc.close()


# --------------------------------------------------------------------------- several processes


def test_several_processes_write_at_once_and_keep_one_chain_and_true_censuses(
    server: postgres_support.PostgresServer, tmp_path: Path, clock: ManualClock
) -> None:
    workers, count = 4, 12
    with open_service(tmp_path / "store", clock, "hash"):
        pass
    database = database_for(tmp_path / "store")
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(workers)
    processes = [
        context.Process(
            target=postgres_support.grant_and_append, args=(database, str(tmp_path / f"node{w}"), w, count, start)
        )
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
    assert [p.exitcode for p in processes] == [0] * workers
    with open_service(tmp_path / "store", clock, "hash") as svc:
        report = svc.audit_verify()
        assert report.ok, report.message
        entries = svc.store.audit_entries()
        assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
        granted = [e for e in entries if e.event == AuditEvent.CONSENT_GRANTED.value]
        assert len(granted) == workers * count
        assert sum(e.event == AuditEvent.IDENTIFY.value for e in entries) == workers * count
        assert svc.store.verify() == [] and len(svc.store.consents()) == workers * count
        owner = {svc.pseudonym(f"w{w}-{i}"): w for w in range(workers) for i in range(count)}
        order = [owner[e.subject] for e in granted]
        assert sum(a != b for a, b in zip(order, order[1:])) >= workers - 1  # each took turns


def test_two_services_share_one_store(server: postgres_support.PostgresServer, tmp_path: Path, clock: ManualClock) -> None:
    with open_service(tmp_path / "a", clock, "hash") as first:
        enrol_people(first, ["ann"])
        second = MatchingService.open(
            tmp_path / "b", SERVICE_KEY, database=database_for(tmp_path / "a"), clock=clock,
            alternative=PinVerifier(cost=2**10, clock=clock),
        )
        try:
            assert first.store.shared and second.store.shared
            assert "ann" in second
            grant(second, "bob")
            assert [c.subject for c in first.store.consents("bob")] == ["bob"]  # written by the other
            assert first.audit_verify().ok and second.audit_verify().ok
        finally:
            second.close()


# --------------------------------------------------------------------------- the server


def _reload(server: postgres_support.PostgresServer, setting: str, value: str | None) -> None:
    with admin(server) as conn:
        if value is None:
            conn.execute(f"ALTER SYSTEM RESET {setting}")
        else:
            conn.execute(f"ALTER SYSTEM SET {setting} = {value}")
        conn.execute("SELECT pg_reload_conf()")
    for _ in range(100):  # the reload is a signal: wait until new sessions see it
        with admin(server) as conn:
            if conn.execute(f"SHOW {setting}").fetchone()[0] == (value or "off"):
                return
        time.sleep(0.05)
    raise AssertionError(f"{setting} was not reloaded")


def test_a_server_that_would_keep_erased_rows_is_refused(
    server: postgres_support.PostgresServer, tmp_path: Path
) -> None:
    profile = edge("hash").profile
    _reload(server, "wal_recycle", "on")
    try:
        with pytest.raises(ErasureSettingsError, match="wal_recycle is on"):
            open_store(tmp_path / "recycling", profile=profile)
    finally:
        _reload(server, "wal_recycle", None)
    with admin(server) as conn:
        conn.execute("DROP ROLE IF EXISTS fpmatch_plain")
        conn.execute("CREATE ROLE fpmatch_plain LOGIN")
    plain = f"host={server.root} user=fpmatch_plain dbname=postgres"
    with pytest.raises(ErasureSettingsError, match="pg_checkpoint") as caught:
        Store.open(tmp_path / "plain", SERVICE_KEY, profile=profile, database=plain)
    assert "pg_switch_wal" in str(caught.value) and "pg_read_all_stats" in str(caught.value)
    shared = open_store(tmp_path / "shared", profile=profile)  # made by the server's superuser
    shared.close()
    schema = database_for(tmp_path / "shared").rpartition("search_path=")[2]
    with admin(server) as conn:
        conn.execute("GRANT pg_checkpoint, pg_read_all_stats TO fpmatch_plain")
        conn.execute("GRANT EXECUTE ON FUNCTION pg_switch_wal() TO fpmatch_plain")
        conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO fpmatch_plain")
        conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO fpmatch_plain")
    with pytest.raises(ErasureSettingsError, match="does not own"):
        Store.open(tmp_path / "plain", SERVICE_KEY, database=f"{plain} options=-csearch_path={schema}")
    open_store(tmp_path / "fine", profile=profile).close()  # the server as it was is fine again


def test_a_directory_of_a_sqlite_store_is_not_mistaken_for_a_postgresql_one(
    server: postgres_support.PostgresServer, tmp_path: Path
) -> None:
    profile = edge("hash").profile
    sqlite_store = Store.open(tmp_path / "s", SERVICE_KEY, profile=profile)
    assert not sqlite_store.shared
    sqlite_store.close()
    with pytest.raises(StoreFormatError, match="holds a SQLite store"):
        Store.open(tmp_path / "s", SERVICE_KEY, profile=profile, database=database_for(tmp_path / "other"))


def test_an_unreachable_server_or_database_is_a_typed_error(
    server: postgres_support.PostgresServer, tmp_path: Path
) -> None:
    profile = edge("hash").profile
    nowhere = f"host={tmp_path} user=postgres dbname=postgres connect_timeout=2"  # no server listens there
    with pytest.raises(StoreUnavailableError, match="cannot open the PostgreSQL store"):
        Store.open(tmp_path / "a", SERVICE_KEY, profile=profile, database=nowhere)
    with pytest.raises(StoreUnavailableError, match="does not exist"):
        Store.open(tmp_path / "a", SERVICE_KEY, profile=profile, database=server.admin.replace("dbname=postgres", "dbname=absent"))
    with pytest.raises(InvalidInputError, match="connection string"):
        Store.open(tmp_path / "a", SERVICE_KEY, profile=profile, database="not a connection string")
    store = open_store(tmp_path / "b", profile=profile)
    with admin(server) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (store._connection().info.backend_pid,))
    with pytest.raises(StoreUnavailableError):
        store.templates()
    with pytest.raises(StoreUnavailableError):
        store.close()
    assert store.closed
