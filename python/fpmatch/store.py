"""The embedded store: one SQLite database in a directory, the single source of truth.

The database holds protected templates (codes without their key, ciphertexts
without their secret key; never a plain template), consent records, the audit
chain and the profile of the capture edges that feed it. Every operation is one transaction, in WAL
mode with ``synchronous=FULL``: after a crash the database holds each operation
entirely or not at all. ``secure_delete`` makes SQLite overwrite deleted rows
with zeros, and :meth:`Store.scrub` checkpoints and truncates the WAL. SQLite
can still leave stale copies of a row in the unused space of a page it
rebalanced (secure_delete does not cover it), so scrub also looks for every
erased code or ciphertext in the pages of the tables that hold them and
rebuilds the database (VACUUM) if one is found; a store reopened after a crash is rebuilt once, since
what the crashed process erased is no longer known. A withdrawn subject's code
and ciphertext survive in no file of the directory.

Every subject, ciphertext row, consent record and setting carries a tag under
a key derived from the service key, bound to its row and to a random
identifier of the store, and each table has a tagged census that shows
deleted rows (:mod:`fpmatch.store_tags`). A row or setting that fails its
check raises :class:`~fpmatch.errors.StoreIntegrityError` naming it; a damaged
store is never repaired or recreated behind the caller's back.

The index file next to it (``index.cache``) is only a cache: authenticated under
a key-derived MAC bound to the store's identifier and stamped with the
database's generation counter, it is used when it matches the database exactly
and otherwise rebuilt from it.

The database is opened in exclusive locking mode: one process owns a store at a
time (SQLite then keeps its WAL index in private memory, so no ``-shm`` file).
Keys never live in the directory.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import sqlite3
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np


from ._validate import read_regular_file
from .audit import AuditEntry, AuditEvent, AuditHead, head_mac, make_entry
from .consent import ConsentRecord, parse_time
from .errors import (
    AuthenticationError,
    ErasureError,
    IndexFormatError,
    InvalidInputError,
    KeyMismatchError,
    StoreClosedError,
    StoreFormatError,
    StoreIntegrityError,
    StoreLockedError,
)
from .edge import SCHEMES, EdgeProfile
from .galleries.base import StoredRow, StoredTemplate
from .hashing import SCHEMES as HASH_SCHEMES
from .index import Index, load_index
from .keys import HashKey, ServiceKey, ensure_outside
from .store_tags import TAGGED_TABLES, Census, RowTagger

DATABASE = "store.sqlite"
INDEX_CACHE = "index.cache"
FORMAT = 3
#: Tables whose pages can hold protected template bytes (searched after erasures).
_TEMPLATE_TABLES = ("subjects", "he_rows")
_CACHE_MAGIC = b"FPMATCHC"
_TAG_BYTES = 32
#: Erasures of more codes than this are verified by rebuilding at once, not by search.
_SEARCHED_ERASURES = 64
#: Length of the pieces of an erased code searched for (a partial copy is a copy).
_PIECE = 16
#: Pages read and searched at a time (memory stays bounded on large stores).
_PAGES_PER_SCAN = 16384
#: Settings every store has; each is tagged (the audit head has its own MAC).
_REQUIRED_META = ("format", "key_id", "profile", "generation", "store_id", "census")
_UNTAGGED_META = ("audit_head",)
#: Tagged tables store (row id, tag, fields...) in this order, the order the tag covers.
_SUBJECT_COLUMNS = "id, tag, subject, code, slot, sealed, enrolled_at"
_RECOVER = (
    "Restore the store directory from a backup; without one, create a new store and enrol the "
    "subjects again through a capture edge"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL, tag BLOB);
CREATE TABLE IF NOT EXISTS subjects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tag BLOB NOT NULL,
    subject TEXT NOT NULL UNIQUE,
    code BLOB,
    slot INTEGER,
    sealed BLOB,
    enrolled_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS he_rows (
    row INTEGER PRIMARY KEY,
    tag BLOB NOT NULL,
    data BLOB NOT NULL,
    used INTEGER NOT NULL,
    refreshes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS consents (
    consent_id TEXT PRIMARY KEY,
    tag BLOB NOT NULL,
    subject TEXT NOT NULL,
    purposes TEXT NOT NULL,
    granted_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    notice_version TEXT NOT NULL,
    evidence_ref TEXT NOT NULL,
    method TEXT NOT NULL,
    separate INTEGER NOT NULL,
    withdrawn_at TEXT
);
CREATE INDEX IF NOT EXISTS consents_by_subject ON consents (subject);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    event TEXT NOT NULL,
    subject TEXT,
    purpose TEXT,
    outcome TEXT,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_subject ON audit (subject);
"""


@dataclass(frozen=True)
class StoreSettings:
    """The service key and the edge profile a store was created with; fixed for its life."""

    key_id: str  # the service key's id
    profile: EdgeProfile

    @property
    def scheme(self) -> str:
        return self.profile.scheme

    @property
    def dim(self) -> int:
        return self.profile.dim


@dataclass
class _PendingAudit:
    """An audit append waiting for its group's commit."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    done: bool = False
    entry: AuditEntry | None = None
    error: BaseException | None = None


class Transaction:
    """Writes inside one :meth:`Store.transaction`; all or nothing."""

    def __init__(self, store: "Store", conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn = conn
        self.changed_subjects = False
        self.erased: list[bytes] = []
        self._head: AuditHead | None = None  # the audit head as this transaction left it
        self._head_changed = False
        self._tagger = store._tagger
        self._census: dict[str, Census] | None = None  # loaded at the first write to a tagged table

    def _counted(self, table: str) -> Census:
        if self._census is None:
            self._census = self._store._stored_census(self._conn)
        return self._census[table]

    def insert_subject(
        self,
        subject: str,
        code: bytes | None,
        enrolled_at: str,
        slot: int | None = None,
        sealed: bytes | None = None,
    ) -> int:
        """The new row's id; ids are never reused."""
        fields = (subject, code, slot, sealed, enrolled_at)
        cursor = self._conn.execute(
            "INSERT INTO subjects (tag, subject, code, slot, sealed, enrolled_at) VALUES (?, ?, ?, ?, ?, ?)",
            (b"", *fields),
        )
        assert cursor.lastrowid is not None
        id_ = int(cursor.lastrowid)
        tag = self._tagger.tag("subjects", id_, fields)
        self._conn.execute("UPDATE subjects SET tag = ? WHERE id = ?", (tag, id_))
        self._counted("subjects").add(tag)
        self.changed_subjects = True
        return id_

    def delete_subject(self, subject: str) -> bool:
        """Whether a row was deleted. Its code is checked for copies at the next scrub."""
        row = self._conn.execute("SELECT tag, code, sealed FROM subjects WHERE subject = ?", (subject,)).fetchone()
        if row is None:
            return False
        self._conn.execute("DELETE FROM subjects WHERE subject = ?", (subject,))
        # The stored tag leaves the census whatever it is: a damaged one leaves the census wrong, so it shows.
        self._counted("subjects").remove(_blob(row[0]))
        self.erased += [bytes(part) for part in row[1:] if part is not None]
        self.changed_subjects = True
        return True

    def reseal(self, id_: int, sealed: bytes) -> None:
        """Replace an enrolled subject's ciphertext part (its block was re-randomised)."""
        row = self._conn.execute(
            "SELECT tag, subject, code, slot, sealed, enrolled_at FROM subjects WHERE id = ?", (id_,)
        ).fetchone()
        if row is None:
            raise StoreFormatError(f"no enrolled subject has id {id_}")
        old_tag, subject, code, slot, old_sealed, enrolled_at = row
        # Never re-sign what does not verify: that would launder a damaged row.
        if not self._tagger.verify("subjects", id_, (subject, code, slot, old_sealed, enrolled_at), old_tag):
            raise self._store._damaged([_subject_name(id_, subject)])
        tag = self._tagger.tag("subjects", id_, (subject, code, slot, sealed, enrolled_at))
        self._conn.execute("UPDATE subjects SET sealed = ?, tag = ? WHERE id = ?", (sealed, tag, id_))
        census = self._counted("subjects")
        census.remove(_blob(old_tag))
        census.add(tag)
        self.changed_subjects = True

    def put_row(self, row: int, stored: StoredRow) -> None:
        """Insert or replace one row of packed ciphertexts."""
        data, used, refreshes = stored
        self._replace("he_rows", row, (data, used, refreshes))
        self.changed_subjects = True

    def _replace(self, table: str, row_id: Any, fields: tuple[Any, ...]) -> None:
        """Insert or replace a tagged row whose fields are all new (nothing old is re-signed)."""
        column = TAGGED_TABLES[table]
        census = self._counted(table)
        old = self._conn.execute(f"SELECT tag FROM {table} WHERE {column} = ?", (row_id,)).fetchone()
        if old is not None:
            census.remove(_blob(old[0]))
        tag = self._tagger.tag(table, row_id, fields)
        marks = ", ".join("?" * (len(fields) + 2))
        self._conn.execute(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", (row_id, tag, *fields))
        census.add(tag)

    def must_vanish(self, pieces: list[bytes]) -> None:
        """Bytes (of erased ciphertexts) that the next scrub makes sure survive in no page."""
        self.erased += pieces

    def put_consent(self, record: ConsentRecord) -> None:
        """Insert or replace (e.g. to mark withdrawal) a consent record."""
        d = record.to_dict()
        fields = (
            d["subject"],
            json.dumps(d["purposes"]),
            d["granted_at"],
            d["expires_at"],
            d["notice_version"],
            d["evidence_ref"],
            d["method"],
            int(d["separate"]),
            d["withdrawn_at"],
        )
        self._replace("consents", d["consent_id"], fields)

    def set_meta(self, name: str, value: Any) -> None:
        text = json.dumps(value)
        tag = self._tagger.tag("meta", name, (text,))
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?, ?)", (name, text, tag))

    def audit(
        self,
        time: str,
        event: AuditEvent,
        *,
        subject: str | None = None,
        purpose: str | None = None,
        outcome: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append an audit entry, chained from the signed head (not the last row, so a cut tail stays cut)."""
        head = self._head if self._head_changed else self._store._head(self._conn)
        entry = make_entry(
            head, time=time, event=event, subject=subject, purpose=purpose, outcome=outcome, detail=detail
        )
        self._conn.execute(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.seq,
                entry.time,
                entry.event,
                entry.subject,
                entry.purpose,
                entry.outcome,
                json.dumps(entry.detail, sort_keys=True),
                entry.prev_hash,
                entry.hash,
            ),
        )
        # A head that does not verify is never re-signed: the break stays visible.
        intact = head is None or head.valid(self._store._audit_key)
        mac = head_mac(self._store._audit_key, entry.seq, entry.hash) if intact else ""
        self._head, self._head_changed = AuditHead(entry.seq, entry.hash, mac), True  # written once, at commit
        return entry

    def _finish(self) -> None:
        if self._head_changed and self._head is not None:
            head = self._head
            self.set_meta("audit_head", {"seq": head.seq, "hash": head.hash, "mac": head.mac})
        if self.changed_subjects:
            self.set_meta("generation", self._store._meta_value(self._conn, "generation") + 1)
        if self._census is not None:
            self.set_meta("census", {table: census.to_json() for table, census in self._census.items()})


class Store:
    """A store directory: ``store.sqlite`` (source of truth) and ``index.cache``.

    Use :meth:`open`. Methods may be called from several threads; they take turns
    on one connection.
    """

    def __init__(
        self, directory: Path, key: ServiceKey, conn: sqlite3.Connection, settings: StoreSettings, store_id: bytes
    ) -> None:
        self.directory = directory
        self.settings = settings
        self._key = key
        self._store_id = store_id
        self._tagger = RowTagger(key.subkey("store-rows"), store_id)
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.RLock()
        self._unverified: list[bytes] = []  # erased bytes not yet looked for in the file
        self._group = threading.Condition(threading.Lock())  # audit group commit
        self._queue: list[_PendingAudit] = []
        self._committing = False
        self._audit_key = key.subkey("audit-head")
        self._cache_key = key.subkey("store-cache-mac")
        self._index_key = key.subkey("index-mac")

    @classmethod
    def open(
        cls, directory: str | os.PathLike[str], key: ServiceKey, *, profile: EdgeProfile | None = None
    ) -> "Store":
        """Open a store directory, creating it (``profile`` needed then) if it holds no database.

        A profile given for an existing store must equal the stored one.
        """
        if isinstance(key, HashKey):
            raise KeyMismatchError(
                "a store is opened with the service's own key (ServiceKey); a HashKey is the capture "
                "edge's transform key and must never reach the matching service"
            )
        if not isinstance(key, ServiceKey):
            raise KeyMismatchError(f"a store is opened with a ServiceKey, got {type(key).__name__}")
        root = Path(directory)
        ensure_outside(key, root)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = root / DATABASE
        if path.exists() or path.is_symlink():
            if not path.is_file():
                raise StoreFormatError(f"{path} is not a regular file: not a store")
            if path.stat().st_size == 0:
                raise StoreFormatError(
                    f"{path} is empty: it was truncated or not made by fpmatch (a store is created whole). "
                    "Restore it from a backup; to start a new, empty store, move it away first"
                )
        else:
            cls._create(root, path, key, profile)
        # A clean close removes the WAL; one left behind means the last owner crashed.
        crashed = Path(f"{path}-wal").exists()
        conn = _connect(path)
        try:
            settings, store_id = cls._prepare(conn, path, key, profile, create=False)
            if crashed:
                with _sqlite_errors(path):
                    _rebuild(conn)
        except BaseException:
            conn.close()
            raise
        for leftover in root.glob(f"{INDEX_CACHE}.*.tmp"):  # a cache write cut short by a crash
            leftover.unlink(missing_ok=True)
        return cls(root, key, conn, settings, store_id)

    @classmethod
    def _create(cls, root: Path, path: Path, key: ServiceKey, profile: EdgeProfile | None) -> None:
        """A new store, built beside its final name and renamed into place whole.

        Nothing is left behind when the settings are refused, and a crash
        mid-way leaves no half-made store that later opens would trip on.
        """
        building = root / f"{DATABASE}.new"
        for leftover in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
            leftover.unlink(missing_ok=True)
        os.close(os.open(building, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            conn = _connect(building)
            try:
                cls._prepare(conn, building, key, profile, create=True)
            finally:
                conn.close()
            if Path(f"{building}-wal").exists():
                raise StoreFormatError(f"{building}: the new database kept a write-ahead log")
            os.replace(building, path)
        except BaseException:
            building.unlink(missing_ok=True)
            raise
        _fsync_directory(root)

    @staticmethod
    def _prepare(
        conn: sqlite3.Connection,
        path: Path,
        key: ServiceKey,
        profile: EdgeProfile | None,
        *,
        create: bool,
    ) -> tuple[StoreSettings, bytes]:
        try:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA temp_store=MEMORY")
            conn.execute("BEGIN EXCLUSIVE")  # takes the lock now and keeps it (exclusive mode)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreLockedError(f"{path} is open in another process (or another service)") from None
            raise StoreFormatError(f"{path}: {exc}") from exc
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # SQLite's message may quote undecodable bytes
            raise StoreFormatError(f"{path} is not an fpmatch store: {exc}") from exc
        try:
            with _sqlite_errors(path):
                if mode != "wal":
                    raise StoreFormatError(f"{path}: cannot switch to WAL mode (got {mode!r})")
                if not create:
                    _check_pages(conn, path)
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
                if not meta and not create:
                    raise StoreFormatError(
                        f"{path} holds no store settings: damaged, or not a store this version made. "
                        "Restore it from a backup"
                    )
                if create:
                    store_id = secrets.token_bytes(16)
                    settings = _settings(meta, path, key, profile)
                    tagger = RowTagger(key.subkey("store-rows"), store_id)
                    rows = {
                        "format": FORMAT,
                        "key_id": settings.key_id,
                        "profile": settings.profile.to_dict(),
                        "generation": 0,
                        "store_id": store_id.hex(),
                        "census": {table: Census().to_json() for table in TAGGED_TABLES},
                    }
                    conn.executemany(
                        "INSERT INTO meta VALUES (?, ?, ?)",
                        [
                            (name, json.dumps(value), tagger.tag("meta", name, (json.dumps(value),)))
                            for name, value in rows.items()
                        ],
                    )
                else:
                    _check_format_and_key(meta, path, key)
                    store_id = _verify_settings(conn, path, key)
                    settings = _settings(meta, path, key, profile)
                conn.execute("COMMIT")
                # After a crash the WAL may still hold pre-deletion copies of erased rows.
                _checkpoint(conn)
        except BaseException:
            _rollback(conn)
            raise
        return settings, store_id

    # -- transactions ---------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One operation: committed when the block ends, rolled back if it raises."""
        with self._lock:
            conn = self._connection()
            with _sqlite_errors(self._path):
                conn.execute("BEGIN IMMEDIATE")
                tx = Transaction(self, conn)
                try:
                    yield tx
                    tx._finish()
                    conn.execute("COMMIT")
                    self._unverified += tx.erased
                except BaseException:
                    _rollback(conn)
                    raise

    def audit(
        self,
        time: str,
        event: AuditEvent,
        *,
        subject: str | None = None,
        purpose: str | None = None,
        outcome: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one audit entry; it is durable when this returns.

        Appends that arrive while another is being committed wait and are then
        committed together, in one transaction (group commit): many concurrent
        match requests share one fsync instead of paying one each.
        """
        mine = _PendingAudit((time, event), dict(subject=subject, purpose=purpose, outcome=outcome, detail=detail))
        with self._group:
            self._queue.append(mine)
            while not mine.done and self._committing:
                self._group.wait()
            if not mine.done:  # lead the next group: everything queued so far
                self._committing = True
                group, self._queue = self._queue, []
        if not mine.done:
            error: BaseException | None = None
            try:
                with self.transaction() as tx:
                    for pending in group:
                        pending.entry = tx.audit(*pending.args, **pending.kwargs)
            except BaseException as exc:
                error = exc
            with self._group:
                for pending in group:
                    pending.done, pending.error = True, error
                self._committing = False
                self._group.notify_all()
        if mine.error is not None:
            raise mine.error
        assert mine.entry is not None
        return mine.entry

    def scrub(self) -> bool:
        """Checkpoint the WAL into the database and truncate it, then make sure no code
        erased since the last scrub is left anywhere in the database file: the pages
        of the subjects table are searched for pieces of each code (or, for a large
        batch, the database is rebuilt at once) and the database is rebuilt (VACUUM)
        if one is found.

        Returns False if a reader kept the checkpoint from finishing (the erased codes
        are then checked at the next scrub). Raises ErasureError if a searched code
        is still found after the rebuild.
        """
        with self._reading() as conn:
            if not _checkpoint(conn):
                return False
            erased = self._unverified
            searched = len(erased) <= _SEARCHED_ERASURES  # a search per code: large batches are rebuilt at once
            if erased and (not searched or self._copies_left(erased)):
                _rebuild(conn)
                if searched and self._copies_left(erased):
                    raise ErasureError(f"an erased code is still in {self.directory / DATABASE} after VACUUM")
            self._unverified = []
        return True

    def _copies_left(self, codes: list[bytes]) -> bool:
        """Whether a piece of any of the erased byte strings is in a leaf page of the tables that
        hold templates (in the whole file, without dbstat).

        Only those pages can hold one: pages SQLite frees, overflow pages included, are zeroed
        (secure_delete), and a stale copy left by rebalancing lies in a leaf page. Such a copy
        is at most a page long, so only pieces from the first page's worth of each string are
        looked for.
        """
        conn = self._connection()
        path = self.directory / DATABASE
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pieces = {
            code[i : i + _PIECE] for code in codes for i in range(0, min(len(code), size) - _PIECE + 1, _PIECE)
        }
        pieces = {piece for piece in pieces if len(set(piece)) > 1}  # a run of one byte is no evidence
        if not pieces:
            return False
        finder = _PieceFinder(pieces)
        try:
            marks = ",".join("?" * len(_TEMPLATE_TABLES))
            pages = conn.execute(
                f"SELECT pageno FROM dbstat WHERE name IN ({marks}) AND pagetype = 'leaf'", _TEMPLATE_TABLES
            ).fetchall()
        except sqlite3.OperationalError:  # SQLite built without the dbstat table
            return finder.found(path.read_bytes())
        with open(path, "rb") as f:
            for first in range(0, len(pages), _PAGES_PER_SCAN):
                batch = pages[first : first + _PAGES_PER_SCAN]
                if finder.found(b"".join(os.pread(f.fileno(), size, (page - 1) * size) for (page,) in batch)):
                    return True
        return False

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self.scrub()
                finally:
                    self._conn.close()
                    self._conn = None

    @property
    def closed(self) -> bool:
        return self._conn is None

    # -- reads ----------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Increases with every committed change to the enrolled subjects."""
        return int(self.meta("generation"))

    def meta(self, name: str) -> Any:
        """A setting (None if unset); raises StoreIntegrityError if it fails its check."""
        with self._reading() as conn:
            return self._meta_value(conn, name)

    def subject_ids(self) -> dict[str, int]:
        return {t.subject: t.id for t in self.templates()}

    def templates(self) -> list[StoredTemplate]:
        """Every enrolled subject with its code and ciphertext slot, in id order (each row verified)."""
        with self._reading() as conn:
            found = conn.execute(f"SELECT {_SUBJECT_COLUMNS} FROM subjects ORDER BY id").fetchall()
        self._require(found, "subjects")
        return [
            StoredTemplate(s, i, None if c is None else bytes(c), t, None if e is None else bytes(e))
            for i, _, s, c, t, e, _ in found
        ]

    def rows(self) -> list[StoredRow]:
        """Every row of packed ciphertexts, in order (rows are numbered from 0 without gaps; each verified)."""
        with self._reading() as conn:
            found = conn.execute("SELECT row, tag, data, used, refreshes FROM he_rows ORDER BY row").fetchall()
        self._require(found, "he_rows")
        if [r for r, *_ in found] != list(range(len(found))):
            raise self._damaged(["the numbering of the ciphertext rows (rows are missing)"])
        return [(bytes(data), int(used), int(refreshes)) for _, _, data, used, refreshes in found]

    def consents(self, subject: str | None = None) -> list[ConsentRecord]:
        """Consent records (of one subject, or all), oldest grant first (each verified)."""
        query = "SELECT * FROM consents" + (" WHERE subject = ?" if subject is not None else "")
        with self._reading() as conn:
            found = conn.execute(
                query + " ORDER BY granted_at, consent_id", () if subject is None else (subject,)
            ).fetchall()
        self._require(found, "consents")
        try:
            return [_consent_from_row(row[:1] + row[2:]) for row in found]
        except (TypeError, ValueError) as exc:  # authentic rows always parse; this is a defect, not damage
            raise StoreFormatError(f"{self._path}: a consent record does not parse: {exc}") from exc

    def enrolled_at(self, subject: str) -> str | None:
        """When ``subject`` was enrolled, or None if they are not."""
        with self._reading() as conn:
            found = conn.execute(f"SELECT {_SUBJECT_COLUMNS} FROM subjects WHERE subject = ?", (subject,)).fetchall()
        self._require(found, "subjects")
        return str(found[0][-1]) if found else None

    def verify(self) -> list[str]:
        """Every problem of the whole database: damaged pages, settings, rows and censuses (no exception)."""
        problems: list[str] = []
        try:
            with self._reading() as conn:
                _check_pages(conn, self._path)
                _verify_settings(conn, self._path, self._key, rows_too=False)
                census = self._stored_census(conn)
                for table, column in TAGGED_TABLES.items():
                    found = conn.execute(f"SELECT * FROM {table} ORDER BY {column}").fetchall()
                    damaged = self._damaged_rows(found, table)
                    if damaged:
                        problems.append(str(self._damaged(damaged)))
                    problems += _census_problems(table, census[table], Census.of(row[1] for row in found))
        except StoreIntegrityError as exc:
            problems.append(str(exc))
        return problems

    def audit_entries(self, pseudonym: str | None = None, *, since: str | None = None) -> list[AuditEntry]:
        """The audit chain as stored, in sequence order; or only the entries naming ``pseudonym``;
        or only those at or after the time ``since`` (as :func:`~fpmatch.consent.format_time` writes it)."""
        query = "SELECT * FROM audit WHERE time >= ? ORDER BY seq"
        args: tuple[str, ...] = (since or "",)
        if pseudonym is not None:
            # instr() narrows the scan to candidates; the exact test is below.
            query = "SELECT * FROM audit WHERE time >= ? AND (subject = ? OR instr(detail, ?) > 0) ORDER BY seq"
            args = (since or "", pseudonym, pseudonym)
        with self._reading() as conn:
            rows = conn.execute(query, args).fetchall()
        entries = [
            AuditEntry(seq, time, event, subject, purpose, outcome, _detail(detail), prev, digest)
            for seq, time, event, subject, purpose, outcome, detail, prev, digest in rows
        ]
        if pseudonym is None:
            return entries
        return [e for e in entries if e.subject == pseudonym or pseudonym in e.detail.get("matched", ())]

    def audit_head(self) -> AuditHead | None:
        """The signed head of the audit chain (None while the log is empty)."""
        with self._reading() as conn:
            return self._head(conn)

    @property
    def audit_key(self) -> bytes:
        """The MAC key of the audit head (derived from the hash key, never stored)."""
        return self._audit_key

    # -- index cache ----------------------------------------------------------

    @property
    def cache_path(self) -> Path:
        return self.directory / INDEX_CACHE

    def write_index_cache(self, index: Index, generation: int) -> None:
        """Replace the cache atomically with ``index`` stamped with ``generation``."""
        header = json.dumps(
            {
                "format": FORMAT,
                "key_id": self._key.key_id,
                "store_id": self._store_id.hex(),
                "generation": generation,
                "count": len(index),
            }
        ).encode()
        body = _CACHE_MAGIC + struct.pack("<Q", len(header)) + header + index.serialize(self._index_key)
        tag = self._cache_tag(body)
        tmp = self.directory / f"{INDEX_CACHE}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body + tag)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.cache_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_directory(self.directory)

    def read_index_cache(self, subjects: Mapping[str, int], generation: int) -> tuple[Index | None, str]:
        """The cached index if it is authentic, current and holds exactly these ids.

        Returns ``(index, "loaded")`` or ``(None, reason)``, reason being
        ``"missing"``, ``"unauthenticated"``, ``"stale"`` or ``"mismatch"``.
        """
        try:
            data = read_regular_file(self.cache_path, "an index cache")
        except FileNotFoundError:
            return None, "missing"
        except InvalidInputError:  # a device or a pipe is no cache
            return None, "unauthenticated"
        head = len(_CACHE_MAGIC) + 8
        if len(data) < head + _TAG_BYTES or not data.startswith(_CACHE_MAGIC):
            return None, "unauthenticated"
        body, tag = data[:-_TAG_BYTES], data[-_TAG_BYTES:]
        if not hmac.compare_digest(self._cache_tag(body), tag):
            return None, "unauthenticated"
        (header_len,) = struct.unpack_from("<Q", body, len(_CACHE_MAGIC))
        header = json.loads(body[head : head + header_len])
        if header.get("format") != FORMAT or header.get("generation") != generation:
            return None, "stale"
        try:
            index = load_index(body[head + header_len :], self._index_key)
        except (AuthenticationError, IndexFormatError, InvalidInputError):
            return None, "unauthenticated"
        if index.bits != self.settings.profile.bits or sorted(index.ids().tolist()) != sorted(subjects.values()):
            return None, "mismatch"
        return index, "loaded"

    def _cache_tag(self, body: bytes) -> bytes:
        # Bound to this store: a cache copied from another store under the same key does not verify.
        return hmac.new(self._cache_key, self._store_id + body, "sha256").digest()

    def drop_index_cache(self) -> None:
        """Delete the cache file (it may hold codes that are about to be erased)."""
        self.cache_path.unlink(missing_ok=True)

    # -- internals ------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreClosedError(f"the store {self.directory} is closed")
        return self._conn

    @property
    def _path(self) -> Path:
        return self.directory / DATABASE

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _sqlite_errors(self._path):
            yield self._connection()

    def _damaged_rows(self, found: list[tuple[Any, ...]], table: str) -> list[str]:
        return [_row_name(table, row) for row in found if not self._tagger.verify(table, row[0], row[2:], row[1])]

    def _require(self, found: list[tuple[Any, ...]], table: str) -> None:
        damaged = self._damaged_rows(found, table)
        if damaged:
            raise self._damaged(damaged)

    def _damaged(self, what: list[str]) -> StoreIntegrityError:
        shown = ", ".join(what[:10]) + (f" and {len(what) - 10} more" if len(what) > 10 else "")
        return StoreIntegrityError(
            f"{self._path} is damaged: {shown} failed authentication (changed outside fpmatch, or copied "
            f"from another store). {_RECOVER}"
        )

    def _meta_value(self, conn: sqlite3.Connection, name: str) -> Any:
        row = conn.execute("SELECT value, tag FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        if name not in _UNTAGGED_META and not self._tagger.verify("meta", name, (row[0],), row[1]):
            raise self._damaged([f"the setting {name!r}"])
        return json.loads(row[0])

    def _stored_census(self, conn: sqlite3.Connection) -> dict[str, Census]:
        value = self._meta_value(conn, "census")
        try:
            return {table: Census.from_json(value[table]) for table in TAGGED_TABLES}
        except (KeyError, TypeError, ValueError) as exc:
            raise self._damaged(["the setting 'census'"]) from exc

    def _head(self, conn: sqlite3.Connection) -> AuditHead | None:
        row = conn.execute("SELECT value FROM meta WHERE name = 'audit_head'").fetchone()
        mac = ""
        if row is not None:
            try:
                value = _loads(row[0])
                return AuditHead(int(value["seq"]), str(value["hash"]), str(value["mac"]))
            except (KeyError, TypeError, ValueError, OverflowError):
                mac = "unreadable"  # a head edited into nonsense: carry on as below, and it never verifies
        last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        # Entries without a head: the head was deleted; carry on from the last row, unsigned.
        return None if last is None else AuditHead(int(last[0]), str(last[1]), mac)


def _loads(text: object) -> Any:
    """JSON of a setting not yet authenticated: any failure is a ValueError."""
    try:
        return json.loads(text)  # type: ignore[arg-type]
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"unreadable setting: {exc}") from None


def _check_format_and_key(meta: Mapping[str, str], path: Path, key: ServiceKey) -> None:
    """Refuse other formats and other keys before anything is authenticated (they cannot be)."""
    try:
        found = _loads(meta.get("format"))
    except ValueError:
        found = None
    if found != FORMAT:
        raise StoreFormatError(
            f"{path} has store format {found!r}, this version reads {FORMAT}. Stores of earlier formats "
            "carry no authenticated rows (format 1 ones were made by a service that held the transform key) "
            "and are not converted: create a new store and enrol the subjects again through a capture edge"
        )
    try:
        key_id = _loads(meta.get("key_id"))
    except ValueError:
        key_id = None
    if key_id != key.key_id:
        raise KeyMismatchError(f"{path} was created under service key {key_id}, not {key.key_id}")


def _verify_settings(conn: sqlite3.Connection, path: Path, key: ServiceKey, *, rows_too: bool = True) -> bytes:
    """Authenticate every setting and (``rows_too``) every table's census; returns the store's identifier."""

    def damaged(what: str) -> StoreIntegrityError:
        return StoreIntegrityError(f"{path} is damaged: {what}. {_RECOVER}")

    rows = conn.execute("SELECT name, value, tag FROM meta").fetchall()
    values = {name: value for name, value, _ in rows}
    missing = [name for name in _REQUIRED_META if name not in values]
    if missing:
        raise damaged(f"the settings {missing} are missing")
    try:
        store_id = bytes.fromhex(_loads(values["store_id"]))
    except (TypeError, ValueError):
        store_id = b""
    if len(store_id) != 16:
        raise damaged("the setting 'store_id' is unreadable")
    tagger = RowTagger(key.subkey("store-rows"), store_id)
    bad = [n for n, value, tag in rows if n not in _UNTAGGED_META and not tagger.verify("meta", n, (value,), tag)]
    if bad:
        raise damaged(f"the settings {bad} failed authentication (changed outside fpmatch)")
    stored = json.loads(values["census"])
    problems = []
    for table in TAGGED_TABLES if rows_too else ():
        try:
            census = Census.from_json(stored[table])
        except (KeyError, TypeError, ValueError):
            raise damaged(f"the census of the {table} table is unreadable") from None
        problems += _census_problems(table, census, Census.of(tag for (tag,) in conn.execute(f"SELECT tag FROM {table}")))
    if problems:
        raise damaged("; ".join(problems))
    return store_id


def _census_problems(table: str, stored: Census, actual: Census) -> list[str]:
    what = {"subjects": "enrolled subjects", "he_rows": "ciphertext rows", "consents": "consent records"}[table]
    if stored.count != actual.count:
        return [
            f"the database holds {actual.count} {what}, {stored.count} were written: rows were deleted or added "
            "outside fpmatch"
        ]
    if stored.digest != actual.digest:
        return [f"{what} were replaced outside fpmatch (their census does not verify)"]
    return []


def _row_name(table: str, row: tuple[Any, ...]) -> str:
    if table == "subjects":
        return _subject_name(row[0], row[2])
    if table == "he_rows":
        return f"ciphertext row {row[0]}"
    return f"consent record {row[0]!r} (of subject {row[2]!r})"


def _subject_name(id_: object, subject: object) -> str:
    return f"subject {subject!r} (id {id_})"


def _blob(value: object) -> bytes:
    return bytes(value) if isinstance(value, (bytes, memoryview)) else b""


def _check_pages(conn: sqlite3.Connection, path: Path) -> None:
    """SQLite's own check of every page, so a damaged file is refused at open, not at a later read."""
    found = [str(row[0]) for row in conn.execute("PRAGMA quick_check(5)").fetchall()]
    if found != ["ok"]:
        raise StoreIntegrityError(f"{path} is damaged: SQLite reports {'; '.join(found)}. {_RECOVER}")


#: SQLite errors that mean the file is damaged (the others, such as a full disk, are raised as they are).
_DAMAGE_WORDS = ("malformed", "corrupt", "not a database", "no such table", "no such column", "decode")


@contextmanager
def _sqlite_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except UnicodeDecodeError as exc:  # text in the file, or SQLite's message about it, is not UTF-8
        raise StoreIntegrityError(f"{path} is damaged ({exc}). {_RECOVER}") from exc
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and not any(w in str(exc) for w in _DAMAGE_WORDS):
            raise
        raise StoreIntegrityError(f"{path} is damaged ({exc}). {_RECOVER}") from exc


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the error being raised says more


def _settings(meta: Mapping[str, str], path: Path, key: ServiceKey, profile: EdgeProfile | None) -> StoreSettings:
    if profile is not None and not isinstance(profile, EdgeProfile):
        raise InvalidInputError(f"profile must be an EdgeProfile (CaptureEdge.profile), got {type(profile).__name__}")
    if not meta:
        if profile is None:
            raise InvalidInputError(f"{path} is a new store: pass the capture edge's profile (CaptureEdge.profile)")
        return StoreSettings(key.key_id, profile)
    try:  # authenticated by now, so only a defect of an older version could fail here
        stored = StoreSettings(str(_loads(meta["key_id"])), EdgeProfile.from_dict(_loads(meta["profile"])))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise StoreFormatError(f"{path} has unreadable settings: {exc}") from exc
    if stored.key_id != key.key_id:
        raise KeyMismatchError(f"{path} was created under service key {stored.key_id}, not {key.key_id}")
    if stored.scheme not in SCHEMES or (stored.profile.hashed and stored.profile.hash_scheme not in HASH_SCHEMES):
        raise KeyMismatchError(f"{path} holds a scheme this version does not know ({stored.profile})")
    if profile is not None and profile.profile_id != stored.profile.profile_id:
        raise KeyMismatchError(
            f"{path} was created for another edge profile (scheme {stored.scheme}, dim {stored.dim}, "
            f"transform key {stored.profile.edge_key_id}, encryption key {stored.profile.he_key_id})"
        )
    return stored


class _PieceFinder:
    """Finds any of many 16-byte pieces in a buffer in one pass per byte alignment.

    The first 8 bytes of every position are hashed (multiply-shift) into a bitmap of the
    pieces' hashes; only the few positions that hit are compared in full.
    """

    _BITS = 22
    _MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, pieces: set[bytes]) -> None:
        self.pieces = pieces
        keys = np.array([int.from_bytes(piece[:8], "little") for piece in pieces], dtype=np.uint64)
        self._table = np.zeros(1 << self._BITS, dtype=bool)
        self._table[self._hash(keys)] = True

    def _hash(self, words: np.ndarray) -> np.ndarray:
        return (words * self._MULTIPLIER) >> np.uint64(64 - self._BITS)

    def found(self, data: bytes) -> bool:
        for alignment in range(8):
            count = (len(data) - alignment - _PIECE) // 8 + 1  # windows that fit whole
            if count <= 0:
                continue
            words = np.frombuffer(data, dtype="<u8", count=count, offset=alignment)
            for hit in np.flatnonzero(self._table[self._hash(words)]).tolist():
                start = alignment + 8 * hit
                if data[start : start + _PIECE] in self.pieces:
                    return True
        return False


def _consent_from_row(row: tuple[Any, ...]) -> ConsentRecord:
    consent_id, subject, purposes, granted, expires, notice, evidence, method, separate, withdrawn = row
    return ConsentRecord(
        subject=subject,
        purposes=frozenset(json.loads(purposes)),
        granted_at=parse_time(granted),
        expires_at=parse_time(expires),
        notice_version=notice,
        evidence_ref=evidence,
        method=method,
        separate=bool(separate),
        consent_id=consent_id,
        withdrawn_at=None if withdrawn is None else parse_time(withdrawn),
    )


def _detail(text: str) -> Mapping[str, Any]:
    # A detail edited into something unreadable still loads, so that verification
    # reports the entry as edited instead of failing.
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        value = None
    return value if isinstance(value, dict) else {"unreadable": str(text)}


def _connect(path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(os.fspath(path), timeout=0.0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreFormatError(f"{path}: cannot open the database: {exc}") from exc


def _fsync_directory(directory: Path) -> None:
    # The rename of the cache is durable only once its directory entry is.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _checkpoint(conn: sqlite3.Connection) -> bool:
    """Copy the WAL into the database and truncate it; False if a reader kept it from finishing."""
    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return int(busy) == 0


def _rebuild(conn: sqlite3.Connection) -> None:
    """Rewrite every page of the database from its live rows (stale copies in unused space go)."""
    conn.execute("VACUUM")
    _checkpoint(conn)


__all__ = ["DATABASE", "INDEX_CACHE", "Store", "StoreSettings", "Transaction"]
