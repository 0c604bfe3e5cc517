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

The index file next to it (``index.cache``) is only a cache: authenticated under
a key-derived MAC and stamped with the database's generation counter, it is
used when it matches the database exactly and otherwise rebuilt from it.

The database is opened in exclusive locking mode: one process owns a store at a
time (SQLite then keeps its WAL index in private memory, so no ``-shm`` file).
Keys never live in the directory.
"""

from __future__ import annotations

import hmac
import json
import os
import sqlite3
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np


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
    StoreLockedError,
)
from .edge import SCHEMES, EdgeProfile
from .galleries.base import StoredRow, StoredTemplate
from .hashing import SCHEMES as HASH_SCHEMES
from .index import Index, load_index
from .keys import HashKey, ServiceKey, ensure_outside

DATABASE = "store.sqlite"
INDEX_CACHE = "index.cache"
FORMAT = 2
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL UNIQUE,
    code BLOB,
    slot INTEGER,
    sealed BLOB,
    enrolled_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS he_rows (
    row INTEGER PRIMARY KEY,
    data BLOB NOT NULL,
    used INTEGER NOT NULL,
    refreshes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS consents (
    consent_id TEXT PRIMARY KEY,
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

    def insert_subject(
        self,
        subject: str,
        code: bytes | None,
        enrolled_at: str,
        slot: int | None = None,
        sealed: bytes | None = None,
    ) -> int:
        """The new row's id; ids are never reused."""
        cursor = self._conn.execute(
            "INSERT INTO subjects (subject, code, slot, sealed, enrolled_at) VALUES (?, ?, ?, ?, ?)",
            (subject, code, slot, sealed, enrolled_at),
        )
        self.changed_subjects = True
        assert cursor.lastrowid is not None
        return int(cursor.lastrowid)

    def delete_subject(self, subject: str) -> bool:
        """Whether a row was deleted. Its code is checked for copies at the next scrub."""
        row = self._conn.execute("SELECT code, sealed FROM subjects WHERE subject = ?", (subject,)).fetchone()
        if row is None:
            return False
        self._conn.execute("DELETE FROM subjects WHERE subject = ?", (subject,))
        self.erased += [bytes(part) for part in row if part is not None]
        self.changed_subjects = True
        return True

    def reseal(self, id_: int, sealed: bytes) -> None:
        """Replace an enrolled subject's ciphertext part (its block was re-randomised)."""
        if self._conn.execute("UPDATE subjects SET sealed = ? WHERE id = ?", (sealed, id_)).rowcount != 1:
            raise StoreFormatError(f"no enrolled subject has id {id_}")
        self.changed_subjects = True

    def put_row(self, row: int, stored: StoredRow) -> None:
        """Insert or replace one row of packed ciphertexts."""
        data, used, refreshes = stored
        self._conn.execute("INSERT OR REPLACE INTO he_rows VALUES (?, ?, ?, ?)", (row, data, used, refreshes))
        self.changed_subjects = True

    def must_vanish(self, pieces: list[bytes]) -> None:
        """Bytes (of erased ciphertexts) that the next scrub makes sure survive in no page."""
        self.erased += pieces

    def put_consent(self, record: ConsentRecord) -> None:
        """Insert or replace (e.g. to mark withdrawal) a consent record."""
        d = record.to_dict()
        self._conn.execute(
            "INSERT OR REPLACE INTO consents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                d["consent_id"],
                d["subject"],
                json.dumps(d["purposes"]),
                d["granted_at"],
                d["expires_at"],
                d["notice_version"],
                d["evidence_ref"],
                d["method"],
                int(d["separate"]),
                d["withdrawn_at"],
            ),
        )

    def set_meta(self, name: str, value: Any) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, json.dumps(value)))

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


class Store:
    """A store directory: ``store.sqlite`` (source of truth) and ``index.cache``.

    Use :meth:`open`. Methods may be called from several threads; they take turns
    on one connection.
    """

    def __init__(self, directory: Path, key: ServiceKey, conn: sqlite3.Connection, settings: StoreSettings) -> None:
        self.directory = directory
        self.settings = settings
        self._key = key
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
            settings = cls._prepare(conn, path, key, profile, create=False)
            if crashed:
                _rebuild(conn)
        except BaseException:
            conn.close()
            raise
        for leftover in root.glob(f"{INDEX_CACHE}.*.tmp"):  # a cache write cut short by a crash
            leftover.unlink(missing_ok=True)
        return cls(root, key, conn, settings)

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
    ) -> StoreSettings:
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
        except sqlite3.DatabaseError as exc:
            raise StoreFormatError(f"{path} is not an fpmatch store: {exc}") from exc
        try:
            if mode != "wal":
                raise StoreFormatError(f"{path}: cannot switch to WAL mode (got {mode!r})")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
            if not meta and not create:
                raise StoreFormatError(
                    f"{path} holds no store settings: damaged, or not a store this version made. "
                    "Restore it from a backup"
                )
            settings = _settings(meta, path, key, profile)
            if create:
                rows = {
                    "format": FORMAT,
                    "key_id": settings.key_id,
                    "profile": settings.profile.to_dict(),
                    "generation": 0,
                }
                conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)", [(name, json.dumps(value)) for name, value in rows.items()]
                )
            conn.execute("COMMIT")
            # After a crash the WAL may still hold pre-deletion copies of erased rows.
            _checkpoint(conn)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return settings

    # -- transactions ---------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One operation: committed when the block ends, rolled back if it raises."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            tx = Transaction(self, conn)
            try:
                yield tx
                tx._finish()
                if tx.changed_subjects:
                    conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'generation'")
                conn.execute("COMMIT")
                self._unverified += tx.erased
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
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
        with self._lock:
            conn = self._connection()
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
        with self._lock:
            row = self._connection().execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def subject_ids(self) -> dict[str, int]:
        with self._lock:
            return dict(self._connection().execute("SELECT subject, id FROM subjects").fetchall())

    def templates(self) -> list[StoredTemplate]:
        """Every enrolled subject with its code and ciphertext slot, in id order."""
        with self._lock:
            rows = self._connection().execute("SELECT subject, id, code, slot, sealed FROM subjects ORDER BY id")
            return [
                StoredTemplate(s, i, None if c is None else bytes(c), t, None if e is None else bytes(e))
                for s, i, c, t, e in rows.fetchall()
            ]

    def rows(self) -> list[StoredRow]:
        """Every row of packed ciphertexts, in order (rows are numbered from 0 without gaps)."""
        with self._lock:
            found = self._connection().execute("SELECT row, data, used, refreshes FROM he_rows ORDER BY row").fetchall()
        if [r for r, _, _, _ in found] != list(range(len(found))):
            raise StoreFormatError(f"{self.directory / DATABASE}: ciphertext rows are missing")
        return [(bytes(data), int(used), int(refreshes)) for _, data, used, refreshes in found]

    def consents(self, subject: str | None = None) -> list[ConsentRecord]:
        """Consent records (of one subject, or all), oldest grant first."""
        query = "SELECT * FROM consents" + (" WHERE subject = ?" if subject is not None else "")
        with self._lock:
            rows = self._connection().execute(
                query + " ORDER BY granted_at, consent_id", () if subject is None else (subject,)
            )
            return [_consent_from_row(row) for row in rows.fetchall()]

    def enrolled_at(self, subject: str) -> str | None:
        """When ``subject`` was enrolled, or None if they are not."""
        with self._lock:
            row = (
                self._connection().execute("SELECT enrolled_at FROM subjects WHERE subject = ?", (subject,)).fetchone()
            )
        return None if row is None else str(row[0])

    def audit_entries(self, pseudonym: str | None = None) -> list[AuditEntry]:
        """The audit chain as stored, in sequence order; or only the entries naming ``pseudonym``."""
        query = "SELECT * FROM audit ORDER BY seq"
        args: tuple[str, ...] = ()
        if pseudonym is not None:
            # instr() narrows the scan to candidates; the exact test is below.
            query = "SELECT * FROM audit WHERE subject = ? OR instr(detail, ?) > 0 ORDER BY seq"
            args = (pseudonym, pseudonym)
        with self._lock:
            rows = self._connection().execute(query, args).fetchall()
        entries = [
            AuditEntry(seq, time, event, subject, purpose, outcome, _detail(detail), prev, digest)
            for seq, time, event, subject, purpose, outcome, detail, prev, digest in rows
        ]
        if pseudonym is None:
            return entries
        return [e for e in entries if e.subject == pseudonym or pseudonym in e.detail.get("matched", ())]

    def audit_head(self) -> AuditHead | None:
        """The signed head of the audit chain (None while the log is empty)."""
        with self._lock:
            return self._head(self._connection())

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
            {"format": FORMAT, "key_id": self._key.key_id, "generation": generation, "count": len(index)}
        ).encode()
        body = _CACHE_MAGIC + struct.pack("<Q", len(header)) + header + index.serialize(self._index_key)
        tag = hmac.new(self._cache_key, body, "sha256").digest()
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
            data = self.cache_path.read_bytes()
        except FileNotFoundError:
            return None, "missing"
        head = len(_CACHE_MAGIC) + 8
        if len(data) < head + _TAG_BYTES or not data.startswith(_CACHE_MAGIC):
            return None, "unauthenticated"
        body, tag = data[:-_TAG_BYTES], data[-_TAG_BYTES:]
        if not hmac.compare_digest(hmac.new(self._cache_key, body, "sha256").digest(), tag):
            return None, "unauthenticated"
        (header_len,) = struct.unpack_from("<Q", body, len(_CACHE_MAGIC))
        header = json.loads(body[head : head + header_len])
        if header.get("format") != FORMAT or header.get("generation") != generation:
            return None, "stale"
        try:
            index = load_index(body[head + header_len :], self._index_key)
        except (AuthenticationError, IndexFormatError):
            return None, "unauthenticated"
        if index.bits != self.settings.profile.bits or sorted(index.ids().tolist()) != sorted(subjects.values()):
            return None, "mismatch"
        return index, "loaded"

    def drop_index_cache(self) -> None:
        """Delete the cache file (it may hold codes that are about to be erased)."""
        self.cache_path.unlink(missing_ok=True)

    # -- internals ------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreClosedError(f"the store {self.directory} is closed")
        return self._conn

    def _head(self, conn: sqlite3.Connection) -> AuditHead | None:
        row = conn.execute("SELECT value FROM meta WHERE name = 'audit_head'").fetchone()
        if row is not None:
            value = json.loads(row[0])
            return AuditHead(int(value["seq"]), str(value["hash"]), str(value["mac"]))
        last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        # Entries without a head: the head was deleted; carry on from the last row, unsigned.
        return None if last is None else AuditHead(int(last[0]), str(last[1]), "")


def _settings(meta: Mapping[str, str], path: Path, key: ServiceKey, profile: EdgeProfile | None) -> StoreSettings:
    if profile is not None and not isinstance(profile, EdgeProfile):
        raise InvalidInputError(f"profile must be an EdgeProfile (CaptureEdge.profile), got {type(profile).__name__}")
    if not meta:
        if profile is None:
            raise InvalidInputError(f"{path} is a new store: pass the capture edge's profile (CaptureEdge.profile)")
        return StoreSettings(key.key_id, profile)
    try:
        values = {name: json.loads(value) for name, value in meta.items()}
        if values["format"] != FORMAT:
            raise StoreFormatError(
                f"{path} has store format {values['format']}, this version reads {FORMAT} (format 1 stores were "
                "made by a service that held the transform key: enrol again through a capture edge)"
            )
        stored = StoreSettings(str(values["key_id"]), EdgeProfile.from_dict(values["profile"]))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, StoreFormatError):
            raise
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
