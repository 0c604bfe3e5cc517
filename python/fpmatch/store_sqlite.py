"""The embedded backend of a store: one SQLite database file in the store directory.

Every operation is one transaction, in WAL mode with ``synchronous=FULL``:
after a crash the database holds each operation entirely or not at all.
``secure_delete`` makes SQLite overwrite deleted rows with zeros, and
:meth:`SqliteDatabase.scrub` checkpoints and truncates the WAL. SQLite can
still leave stale copies of a row in the unused space of a page it rebalanced
(secure_delete does not cover it), so scrub also looks for every erased code or
ciphertext in the pages of the tables that hold them and rebuilds the database
(VACUUM) if one is found; a store reopened after a crash is rebuilt once, since
what the crashed process erased is no longer known. A withdrawn subject's code
and ciphertext survive in no file of the directory.

The database is opened in exclusive locking mode: one process owns a store at a
time (SQLite then keeps its WAL index in private memory, so no ``-shm`` file).
"""

from __future__ import annotations

import functools
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from .edge import EdgeProfile
from .errors import ErasureError, StoreFormatError, StoreIntegrityError, StoreLockedError
from .keys import ServiceKey
from .store_scan import PieceFinder, pieces_of
from .store_settings import RECOVER, StoreSettings, initialise

DATABASE = "store.sqlite"
#: Tables whose pages can hold protected template bytes (searched after erasures).
_TEMPLATE_TABLES = ("subjects", "he_rows", "attested")
#: Erasures of more codes than this are verified by rebuilding at once, not by search.
_SEARCHED_ERASURES = 64
#: Pages read and searched at a time (memory stays bounded on large stores).
_PAGES_PER_SCAN = 1024
#: SQLite errors that mean the file is damaged (the others, such as a full disk, are raised as they are).
_DAMAGE_WORDS = ("malformed", "corrupt", "not a database", "no such table", "no such column", "decode")

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
CREATE TABLE IF NOT EXISTS attested (
    id INTEGER PRIMARY KEY,
    template BLOB NOT NULL
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


class SqliteDatabase:
    """The store's SQLite file, owned by this process while open."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn
        self.name = str(path)

    @classmethod
    def open(
        cls, root: Path, key: ServiceKey, profile: EdgeProfile | None
    ) -> tuple["SqliteDatabase", StoreSettings, bytes]:
        """Open (or create) ``root/store.sqlite``; returns it with its authenticated settings."""
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
            _create(root, path, key, profile)
        # A clean close removes the WAL; one left behind means the last owner crashed.
        crashed = Path(f"{path}-wal").exists()
        db = cls(path, _connect(path))
        try:
            settings, store_id = db._prepare(key, profile, create=False)
            if crashed:
                with db.errors():
                    _rebuild(db.conn)
        except BaseException:
            db.conn.close()
            raise
        return db, settings, store_id

    def _prepare(self, key: ServiceKey, profile: EdgeProfile | None, *, create: bool) -> tuple[StoreSettings, bytes]:
        conn, path = self.conn, self.path
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
            with self.errors():
                if mode != "wal":
                    raise StoreFormatError(f"{path}: cannot switch to WAL mode (got {mode!r})")
                if not create:
                    self.check_pages()
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                found = initialise(self, key, profile, create=create)
                conn.execute("COMMIT")
                # After a crash the WAL may still hold pre-deletion copies of erased rows.
                _checkpoint(conn)
        except BaseException:
            _rollback(conn)
            raise
        return found

    # -- statements -----------------------------------------------------------

    def execute(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, args)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def insert_id(self, sql: str, args: Sequence[Any]) -> int:
        """Run an INSERT into a table with an integer key; the new row's key."""
        cursor = self.conn.execute(sql, args)
        assert cursor.lastrowid is not None
        return int(cursor.lastrowid)

    def upsert(self, table: str, values: Sequence[Any]) -> None:
        """Insert a whole row, replacing the row with the same key."""
        self.conn.execute(f"INSERT OR REPLACE INTO {table} VALUES ({', '.join('?' * len(values))})", values)

    @staticmethod
    def contains(column: str) -> str:
        """A condition: ``column`` contains the next parameter."""
        return f"instr({column}, ?) > 0"

    @contextmanager
    def errors(self) -> Iterator[None]:
        """SQLite errors that mean damage become StoreIntegrityError."""
        try:
            yield
        except UnicodeDecodeError as exc:  # text in the file, or SQLite's message about it, is not UTF-8
            raise StoreIntegrityError(f"{self.path} is damaged ({exc}). {RECOVER}") from exc
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not any(w in str(exc) for w in _DAMAGE_WORDS):
                raise
            raise StoreIntegrityError(f"{self.path} is damaged ({exc}). {RECOVER}") from exc

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self.errors():  # the exclusive lock already keeps every read consistent
            yield

    @contextmanager
    def writing(self) -> Iterator[None]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        with self.errors():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.conn.execute("COMMIT")
            except BaseException:
                _rollback(self.conn)
                raise

    def note_erasures(self) -> None:
        """Nothing to record: a crash leaves the WAL behind, and the next open rebuilds."""

    def check_tables(self) -> None:
        """Every table has the columns this version made (CREATE ... IF NOT EXISTS keeps an altered one)."""
        for table, columns in _expected_columns().items():
            if _columns(self.conn, table) != columns:
                raise StoreIntegrityError(
                    f"{self.path} is damaged: table {table} does not have the columns of an fpmatch store. {RECOVER}"
                )

    def check_pages(self) -> None:
        """SQLite's own check of every page, so a damaged file is refused at open, not at a later read."""
        found = [str(row[0]) for row in self.conn.execute("PRAGMA quick_check(5)").fetchall()]
        if found != ["ok"]:
            raise StoreIntegrityError(f"{self.path} is damaged: SQLite reports {'; '.join(found)}. {RECOVER}")

    def close(self) -> None:
        self.conn.close()

    # -- erasure --------------------------------------------------------------

    def scrub(self, erased: list[bytes]) -> bool:
        """Checkpoint the WAL into the database and truncate it, then make sure none of ``erased``
        is left anywhere in the file: the pages of the template tables are searched for pieces of
        each (or, for a large batch, the database is rebuilt at once) and the database is rebuilt
        (VACUUM) if one is found.

        Returns False if a reader kept the checkpoint from finishing. Raises ErasureError if a
        searched piece is still found after the rebuild.
        """
        if not _checkpoint(self.conn):
            return False
        searched = len(erased) <= _SEARCHED_ERASURES  # a search per code: large batches are rebuilt at once
        if erased and (not searched or self.copies_left(erased)):
            _rebuild(self.conn)
            if searched and self.copies_left(erased):
                raise ErasureError(f"an erased code is still in {self.path} after VACUUM")
        return True

    def copies_left(self, codes: list[bytes]) -> bool:
        """Whether a piece of any of the erased byte strings is in a leaf page of the tables that
        hold templates (in the whole file, without dbstat).

        Only those pages can hold one: pages SQLite frees, overflow pages included, are zeroed
        (secure_delete), and a stale copy left by rebalancing lies in a leaf page. Such a copy
        is at most a page long, so only pieces from the first page's worth of each string are
        looked for.
        """
        size = int(self.conn.execute("PRAGMA page_size").fetchone()[0])
        pieces = pieces_of(codes, limit=size)
        if not pieces:
            return False
        finder = PieceFinder(pieces)
        try:
            marks = ",".join("?" * len(_TEMPLATE_TABLES))
            pages = self.conn.execute(
                f"SELECT pageno FROM dbstat WHERE name IN ({marks}) AND pagetype = 'leaf'", _TEMPLATE_TABLES
            ).fetchall()
        except sqlite3.OperationalError:  # SQLite built without the dbstat table
            return finder.found(self.path.read_bytes())
        with open(self.path, "rb") as f:
            for first in range(0, len(pages), _PAGES_PER_SCAN):
                batch = pages[first : first + _PAGES_PER_SCAN]
                if finder.found(b"".join(os.pread(f.fileno(), size, (page - 1) * size) for (page,) in batch)):
                    return True
        return False


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    """Name, type, NOT NULL and key position of each column of ``table``, in order."""
    return [tuple(row[1:3]) + (row[3], row[5]) for row in conn.execute(f"PRAGMA table_info({table})")]


@functools.cache
def _expected_columns() -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(_SCHEMA)
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: _columns(conn, t) for t in tables if not t.startswith("sqlite_")}
    finally:
        conn.close()


def _create(root: Path, path: Path, key: ServiceKey, profile: EdgeProfile | None) -> None:
    """A new store, built beside its final name and renamed into place whole.

    Nothing is left behind when the settings are refused, and a crash
    mid-way leaves no half-made store that later opens would trip on.
    """
    building = root / f"{DATABASE}.new"
    for leftover in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
        leftover.unlink(missing_ok=True)
    os.close(os.open(building, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        db = SqliteDatabase(building, _connect(building))
        try:
            db._prepare(key, profile, create=True)
        finally:
            db.close()
        if Path(f"{building}-wal").exists():
            raise StoreFormatError(f"{building}: the new database kept a write-ahead log")
        os.replace(building, path)
    except BaseException:
        building.unlink(missing_ok=True)
        raise
    fsync_directory(root)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the error being raised says more


def _connect(path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(os.fspath(path), timeout=0.0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreFormatError(f"{path}: cannot open the database: {exc}") from exc


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (its directory entry is written)."""
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


__all__ = ["DATABASE", "SqliteDatabase"]
