"""Store authentication: every subject, ciphertext row, consent record and setting is tagged
under the service key, bound to its row and its store; each table has a census. A row or
setting changed, moved, deleted or copied from another store is refused at open with an error
that names it and says how to recover; the index cache is bound to its store; a damaged file
or a damaged table is a typed error, never a raw sqlite3 or psycopg one. Every test runs on both
store backends but those about the SQLite file itself."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from fpmatch import MatchingService, StoreFormatError, StoreIntegrityError
from fpmatch.store import DATABASE, INDEX_CACHE
from service_support import SERVICE_KEY, ManualClock, edge, enrol_people, open_service, open_store, raw

pytestmark = pytest.mark.usefixtures("backend")

NAMES = ["ann", "bob", "cat", "dan"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make_store(directory: Path, clock: ManualClock, scheme: str) -> Path:
    with open_service(directory, clock, scheme) as svc:
        enrol_people(svc, NAMES)
    return directory


@pytest.fixture
def hashed(tmp_path: Path, clock: ManualClock) -> Path:
    return make_store(tmp_path / "hashed", clock, "hash")


def change(directory: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    with raw(directory) as db:
        for statement, args in statements:
            db.execute(statement, args)


def refused(directory: Path, scheme: str, clock: ManualClock, *words: str) -> str:
    with pytest.raises(StoreIntegrityError) as caught:
        open_service(directory, clock, scheme)
    message = str(caught.value)
    assert "backup" in message and "enrol" in message
    for word in words:
        assert word in message
    return message


def flip_code_bit(directory: Path, subject: str) -> None:
    with raw(directory) as db:
        (code,) = db.execute("SELECT code FROM subjects WHERE subject = ?", (subject,)).fetchone()
        damaged = bytearray(code)
        damaged[3] ^= 0x10
        db.execute("UPDATE subjects SET code = ? WHERE subject = ?", (bytes(damaged), subject))


@pytest.mark.parametrize("without_cache", [False, True])
def test_a_flipped_bit_in_a_code_is_refused_with_or_without_the_cache(
    hashed: Path, clock: ManualClock, without_cache: bool
) -> None:
    flip_code_bit(hashed, "bob")
    if without_cache:
        (hashed / INDEX_CACHE).unlink()
    refused(hashed, "hash", clock, "'bob'")
    refused(hashed, "hash", clock, "'bob'")  # and it stays refused: nothing was rebuilt or re-signed


def test_a_changed_subject_name_is_refused_not_lost(hashed: Path, clock: ManualClock) -> None:
    change(hashed, ("UPDATE subjects SET subject = 'cbt' WHERE subject = 'cat'", ()))
    refused(hashed, "hash", clock, "'cbt'")


def test_a_changed_dimension_in_the_settings_is_refused(hashed: Path, clock: ManualClock) -> None:
    with raw(hashed) as db:
        (value,) = db.execute("SELECT value FROM meta WHERE name = 'profile'").fetchone()
        profile = json.loads(value)
        profile["dim"] += 1
        db.execute("UPDATE meta SET value = ? WHERE name = 'profile'", (json.dumps(profile),))
    with pytest.raises(StoreIntegrityError, match="'profile'"):
        open_store(hashed)


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM subjects WHERE subject = 'dan'",
        "DELETE FROM consents WHERE subject = 'ann'",
        "DELETE FROM meta WHERE name = 'census'",
        "DELETE FROM meta WHERE name = 'generation'",
    ],
)
def test_deleted_rows_and_settings_are_refused(hashed: Path, clock: ManualClock, statement: str) -> None:
    change(hashed, (statement, ()))
    refused(hashed, "hash", clock)


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE audit DROP COLUMN outcome",  # a row of the audit table no longer unpacks
        "ALTER TABLE consents ADD COLUMN note TEXT",
        "ALTER TABLE subjects RENAME COLUMN code TO codes",
    ],
)
def test_tables_with_other_columns_are_refused_at_open(hashed: Path, clock: ManualClock, statement: str) -> None:
    change(hashed, (statement, ()))
    refused(hashed, "hash", clock, "columns")


def test_rows_cannot_be_swapped_within_a_store(hashed: Path, clock: ManualClock) -> None:
    with raw(hashed) as db:
        rows = dict(db.execute("SELECT subject, code FROM subjects").fetchall())
        db.execute("UPDATE subjects SET code = ? WHERE subject = 'ann'", (rows["bob"],))
        db.execute("UPDATE subjects SET code = ? WHERE subject = 'bob'", (rows["ann"],))
    refused(hashed, "hash", clock, "'ann'", "'bob'")


@pytest.mark.sqlite_only
def test_rows_and_caches_of_another_store_under_the_same_key_are_not_used(
    hashed: Path, tmp_path: Path, clock: ManualClock
) -> None:
    other = make_store(tmp_path / "other", clock, "hash")  # same key, same edge, same names
    twin = tmp_path / "twin"
    shutil.copytree(hashed, twin)
    shutil.copy(other / INDEX_CACHE, twin / INDEX_CACHE)
    with open_service(twin, clock, "hash") as svc:
        assert svc.cache_status == "unauthenticated" and sorted(svc.enrolled()) == sorted(NAMES)
        assert svc.check_integrity().ok
    db = sqlite3.connect(twin / DATABASE)
    with db:
        db.execute("ATTACH DATABASE ? AS other", (str(other / DATABASE),))
        db.execute("UPDATE subjects SET tag = (SELECT tag FROM other.subjects o WHERE o.id = subjects.id)")
        db.execute("UPDATE subjects SET code = (SELECT code FROM other.subjects o WHERE o.id = subjects.id)")
    db.close()
    refused(twin, "hash", clock, "replaced")  # the census shows it before any row is read


def test_a_changed_consent_record_is_refused(hashed: Path, clock: ManualClock) -> None:
    change(hashed, ("UPDATE consents SET expires_at = '2099-01-01T00:00:00.000000+00:00' WHERE subject = 'cat'", ()))
    refused(hashed, "hash", clock, "consent record", "'cat'")


def test_a_changed_ciphertext_row_is_refused(tmp_path: Path, clock: ManualClock) -> None:
    store = make_store(tmp_path / "hybrid", clock, "hybrid")
    with raw(store) as db:
        (data,) = db.execute("SELECT data FROM he_rows WHERE row = 0").fetchone()
        damaged = bytearray(data)
        damaged[len(damaged) // 2] ^= 1
        db.execute("UPDATE he_rows SET data = ? WHERE row = 0", (bytes(damaged),))
    refused(store, "hybrid", clock, "ciphertext row 0")


def test_earlier_formats_are_refused_with_a_way_forward(tmp_path: Path, hashed: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    with raw(old) as db:
        db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for name, value in [("format", "2"), ("key_id", json.dumps(SERVICE_KEY.key_id))]:
            db.execute("INSERT INTO meta VALUES (?, ?)", (name, value))
    with pytest.raises(StoreFormatError, match="format 2.*enrol the subjects again"):
        open_store(old)
    change(hashed, ("UPDATE meta SET value = '2' WHERE name = 'format'", ()))
    with pytest.raises(StoreFormatError, match="format 2"):
        open_store(hashed)


@pytest.mark.sqlite_only
@pytest.mark.parametrize("where", ["header", "middle", "truncated"])
def test_a_damaged_database_file_is_refused_at_open(hashed: Path, where: str) -> None:
    path = hashed / DATABASE
    data = bytearray(path.read_bytes())
    page = 4096
    if where == "header":
        data[16:18] = b"\x00\x03"  # an impossible page size
    elif where == "middle":
        data[page + 8 : page + 200] = bytes(range(192))  # the b-tree page header and cell pointers of page 2
    else:
        data = data[: len(data) - page - 100]
    path.write_bytes(bytes(data))
    with pytest.raises(StoreFormatError) as caught:
        MatchingService.open(hashed, SERVICE_KEY, edge=edge("hash").profile)
    assert "backup" in str(caught.value) or "not an fpmatch store" in str(caught.value)


def test_damage_while_open_is_reported_by_check_integrity_and_typed(hashed: Path, clock: ManualClock, backend: str) -> None:
    blob = "BLOB" if backend == "sqlite" else "BYTEA"
    with open_service(hashed, clock, "hash") as svc:
        assert svc.check_integrity().ok
        db = svc.store._database()  # the service's own connection (a SQLite store allows no other)
        db.execute("UPDATE subjects SET code = ? WHERE subject = 'ann'", (bytes(32),))
        report = svc.check_integrity()
        assert not report.ok and any("'ann'" in problem for problem in report.problems)
        with pytest.raises(StoreIntegrityError, match="'ann'"):
            svc.store.templates()
        db.execute("DROP TABLE he_rows")
        with pytest.raises(StoreIntegrityError, match="no such table|does not exist"):
            svc.store.rows()
        assert not svc.check_integrity().ok
        db.execute(
            f"CREATE TABLE he_rows (row INTEGER PRIMARY KEY, tag {blob} NOT NULL, data {blob} NOT NULL, "
            "used INTEGER NOT NULL, refreshes INTEGER NOT NULL)"
        )
    refused(hashed, "hash", clock, "'ann'")


def test_every_tagged_write_keeps_the_store_verifiable(tmp_path: Path, clock: ManualClock) -> None:
    directory = make_store(tmp_path / "s", clock, "hybrid")
    with open_service(directory, clock, "hybrid") as svc:
        svc.withdraw("bob")
        enrol_people(svc, ["eve"])  # fills bob's reclaimed slot: rows are rewritten, subjects resealed
        assert svc.store.verify() == [] and svc.check_integrity().ok
    with open_service(directory, clock, "hybrid") as svc:
        assert sorted(svc.enrolled()) == ["ann", "cat", "dan", "eve"]
        assert svc.store.verify() == []


def test_a_store_of_sealed_ciphertexts_verifies(tmp_path: Path, clock: ManualClock) -> None:
    directory = make_store(tmp_path / "he", clock, "he")
    store = open_store(directory)
    try:
        assert store.verify() == [] and len(store.templates()) == len(NAMES) and store.rows()
    finally:
        store.close()


@pytest.mark.parametrize("head", ["not json", '{"seq": 1}', '{"seq": 1, "hash": "h\u00e9", "mac": "\u00e9"}', "[" * 5000])
def test_an_audit_head_edited_into_nonsense_is_reported_not_raised(hashed: Path, clock: ManualClock, head: str) -> None:
    change(hashed, ("UPDATE meta SET value = ? WHERE name = 'audit_head'", (head,)))
    with open_service(hashed, clock, "hash") as svc:
        report = svc.audit_verify()
        assert not report.ok and report.problem == "head"
        if head.startswith('{"seq": 1, "hash"'):
            # A readable head pointing into the chain: appends would collide with entries, a typed error.
            with pytest.raises(StoreIntegrityError):
                enrol_people(svc, ["eve"])
        else:
            enrol_people(svc, ["eve"])  # appends go on from the last entry, and the break stays visible
        assert not svc.audit_verify().ok and not svc.check_integrity().ok
