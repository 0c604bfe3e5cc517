"""A store: the single source of truth of a matching service, in SQLite or PostgreSQL.

The database holds protected templates (codes without their key, ciphertexts
without their secret key; never a plain template), consent records, the audit
chain and the profile of the capture edges that feed it. Every operation is one
transaction: after a crash the database holds each operation entirely or not at
all. Erasure is the backend's: :mod:`fpmatch.store_sqlite` (the embedded
default: one file in the store directory, one owning process) and
:mod:`fpmatch.store_postgres` (a PostgreSQL database that several processes
share) each make sure that a withdrawn subject's code and ciphertext survive in
none of their storage files, and say so only when they can.

Every subject, ciphertext row, consent record and setting carries a tag under
a key derived from the service key, bound to its row and to a random
identifier of the store, and each table has a tagged census that shows
deleted rows (:mod:`fpmatch.store_tags`). A row or setting that fails its
check raises :class:`~fpmatch.errors.StoreIntegrityError` naming it; a damaged
store is never repaired or recreated behind the caller's back.

The index file in the store directory (``index.cache``) is only a cache:
authenticated under a key-derived MAC bound to the store's identifier and
stamped with the database's generation counter, it is used when it matches the
database exactly and otherwise rebuilt from it. Keys never live in the directory.
"""

from __future__ import annotations

import hmac
import json
import os
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, Union

from ._validate import read_regular_file
from .audit import AuditEntry, AuditEvent, AuditHead, head_mac, make_entry
from .consent import ConsentRecord, parse_time
from .errors import (
    AuthenticationError,
    IndexFormatError,
    InvalidInputError,
    KeyMismatchError,
    StoreClosedError,
    StoreFormatError,
    StoreIntegrityError,
)
from .edge import EdgeProfile
from .galleries.base import StoredRow, StoredTemplate
from .index import Index, load_index
from .keys import HashKey, ServiceKey, ensure_outside
from .store_postgres import PostgresDatabase
from .store_settings import FORMAT, RECOVER, UNTAGGED_META, StoreSettings, census_problems, loads, verify_settings
from .store_sqlite import DATABASE, SqliteDatabase, fsync_directory
from .store_tags import TAGGED_TABLES, Census, RowTagger

INDEX_CACHE = "index.cache"
_CACHE_MAGIC = b"FPMATCHC"
_TAG_BYTES = 32
#: Tagged tables store (row id, tag, fields...) in this order, the order the tag covers.
_SUBJECT_COLUMNS = "id, tag, subject, code, slot, sealed, enrolled_at"

#: A store's database connection, whichever backend holds it.
Database = Union[SqliteDatabase, PostgresDatabase]


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

    def __init__(self, store: "Store", db: Database) -> None:
        self._store = store
        self._db = db
        self.changed_subjects = False
        self.erased: list[bytes] = []
        self._head: AuditHead | None = None  # the audit head as this transaction left it
        self._head_changed = False
        self._tagger = store._tagger
        self._census: dict[str, Census] | None = None  # loaded at the first write to a tagged table

    def _counted(self, table: str) -> Census:
        if self._census is None:
            self._census = self._store._stored_census(self._db)
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
        id_ = self._db.insert_id(
            "INSERT INTO subjects (tag, subject, code, slot, sealed, enrolled_at) VALUES (?, ?, ?, ?, ?, ?)",
            (b"", *fields),
        )
        tag = self._tagger.tag("subjects", id_, fields)
        self._db.execute("UPDATE subjects SET tag = ? WHERE id = ?", (tag, id_))
        self._counted("subjects").add(tag)
        self.changed_subjects = True
        return id_

    def delete_subject(self, subject: str) -> bool:
        """Whether a row was deleted. Its code is checked for copies at the next scrub."""
        row = self._db.execute("SELECT id, tag, code, sealed FROM subjects WHERE subject = ?", (subject,)).fetchone()
        if row is None:
            return False
        id_, tag, *parts = row
        signed = self._db.execute("SELECT template FROM attested WHERE id = ?", (id_,)).fetchone()
        if signed is not None:
            parts.append(signed[0])
            self._db.execute("DELETE FROM attested WHERE id = ?", (id_,))
        self._db.execute("DELETE FROM subjects WHERE id = ?", (id_,))
        # The stored tag leaves the census whatever it is: a damaged one leaves the census wrong, so it shows.
        self._counted("subjects").remove(_blob(tag))
        self.erased += [bytes(part) for part in parts if part is not None]
        self.changed_subjects = True
        return True

    def reseal(self, id_: int, sealed: bytes) -> None:
        """Replace an enrolled subject's ciphertext part (its block was re-randomised)."""
        row = self._db.execute(
            "SELECT tag, subject, code, slot, sealed, enrolled_at FROM subjects WHERE id = ?", (id_,)
        ).fetchone()
        if row is None:
            raise StoreFormatError(f"no enrolled subject has id {id_}")
        old_tag, subject, code, slot, old_sealed, enrolled_at = row
        # Never re-sign what does not verify: that would launder a damaged row.
        if not self._tagger.verify("subjects", id_, (subject, code, slot, old_sealed, enrolled_at), old_tag):
            raise self._store._damaged([_subject_name(id_, subject)])
        tag = self._tagger.tag("subjects", id_, (subject, code, slot, sealed, enrolled_at))
        self._db.execute("UPDATE subjects SET sealed = ?, tag = ? WHERE id = ?", (sealed, tag, id_))
        census = self._counted("subjects")
        census.remove(_blob(old_tag))
        census.add(tag)
        self.changed_subjects = True

    def put_attested(self, id_: int, template: bytes) -> None:
        """Keep the signed template ciphertext a signing edge made for subject ``id_`` (attested mode).

        Not tagged by the store: its edge's signature, checked by the key holder, protects it.
        """
        self._db.execute("INSERT INTO attested (id, template) VALUES (?, ?)", (id_, template))

    def put_row(self, row: int, stored: StoredRow) -> None:
        """Insert or replace one row of packed ciphertexts."""
        data, used, refreshes = stored
        self._replace("he_rows", row, (data, used, refreshes))
        self.changed_subjects = True

    def _replace(self, table: str, row_id: Any, fields: tuple[Any, ...]) -> None:
        """Insert or replace a tagged row whose fields are all new (nothing old is re-signed)."""
        column = TAGGED_TABLES[table]
        census = self._counted(table)
        old = self._db.execute(f"SELECT tag FROM {table} WHERE {column} = ?", (row_id,)).fetchone()
        if old is not None:
            census.remove(_blob(old[0]))
        tag = self._tagger.tag(table, row_id, fields)
        self._db.upsert(table, (row_id, tag, *fields))
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
        self._db.upsert("meta", (name, text, tag))

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
        head = self._head if self._head_changed else self._store._head(self._db)
        entry = make_entry(
            head, time=time, event=event, subject=subject, purpose=purpose, outcome=outcome, detail=detail
        )
        self._db.execute(
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
            self.set_meta("generation", self._store._meta_value(self._db, "generation") + 1)
        if self.erased:
            self._db.note_erasures()
        if self._census is not None:
            self.set_meta("census", {table: census.to_json() for table, census in self._census.items()})


class Store:
    """A store: its database (the source of truth) and a directory holding ``index.cache``.

    Use :meth:`open`. Methods may be called from several threads; they take turns
    on one connection.
    """

    def __init__(
        self, directory: Path, key: ServiceKey, db: Database, settings: StoreSettings, store_id: bytes
    ) -> None:
        self.directory = directory
        self.settings = settings
        self._key = key
        self._store_id = store_id
        self._tagger = RowTagger(key.subkey("store-rows"), store_id)
        self._db: Database | None = db
        self._lock = threading.RLock()
        self._unverified: list[bytes] = []  # erased bytes not yet looked for in storage
        self._group = threading.Condition(threading.Lock())  # audit group commit
        self._queue: list[_PendingAudit] = []
        self._committing = False
        self._audit_key = key.subkey("audit-head")
        self._cache_key = key.subkey("store-cache-mac")
        self._index_key = key.subkey("index-mac")

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        key: ServiceKey,
        *,
        profile: EdgeProfile | None = None,
        database: str | None = None,
    ) -> "Store":
        """Open a store, creating it (``profile`` needed then) if its database holds none.

        ``directory`` holds the local files (the index cache; the service keeps its PIN
        database there too). Without ``database`` the store is the SQLite file
        ``store.sqlite`` in it, owned by one process at a time; ``database`` is a
        PostgreSQL connection string (``postgresql://user@host:port/db``) for a store
        that several processes share (:mod:`fpmatch.store_postgres`).
        A profile given for an existing store must equal the stored one.
        """
        if isinstance(key, HashKey):
            raise KeyMismatchError(
                "a store is opened with the service's own key (ServiceKey); a HashKey is the capture "
                "edge's transform key and must never reach the matching service"
            )
        if not isinstance(key, ServiceKey):
            raise KeyMismatchError(f"a store is opened with a ServiceKey, got {type(key).__name__}")
        if database is not None and not isinstance(database, str):
            raise InvalidInputError(f"database must be a PostgreSQL connection string, got {type(database).__name__}")
        root = Path(directory)
        ensure_outside(key, root)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        db: Database
        if database is None:
            db, settings, store_id = SqliteDatabase.open(root, key, profile)
        elif (root / DATABASE).exists():
            raise StoreFormatError(
                f"{root} holds a SQLite store ({DATABASE}); a PostgreSQL store's directory holds no database. "
                "Open it without database=, or give the PostgreSQL store a directory of its own"
            )
        else:
            db, settings, store_id = PostgresDatabase.open(database, key, profile)
        for leftover in root.glob(f"{INDEX_CACHE}.*.tmp"):  # a cache write cut short by a crash
            leftover.unlink(missing_ok=True)
        return cls(root, key, db, settings, store_id)

    @staticmethod
    def exists(directory: str | os.PathLike[str], *, database: str | None = None) -> bool:
        """Whether a store was created there: the SQLite file in ``directory``, or (``database``)
        a store's tables in the PostgreSQL connection's schema. Creates nothing."""
        if database is None:
            return (Path(directory) / DATABASE).exists()
        if not isinstance(database, str):
            raise InvalidInputError(f"database must be a PostgreSQL connection string, got {type(database).__name__}")
        return PostgresDatabase.holds_store(database)

    @property
    def shared(self) -> bool:
        """Whether other processes may write to this store at the same time (PostgreSQL)."""
        return isinstance(self._database(), PostgresDatabase)

    # -- transactions ---------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One operation: committed when the block ends, rolled back if it raises.

        On a shared store the transactions of all processes take turns (the census
        and the audit head are read and rewritten by each)."""
        with self._lock:
            db = self._database()
            with db.writing():
                tx = Transaction(self, db)
                yield tx
                tx._finish()
            self._unverified += tx.erased

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
        """Make sure that no code or ciphertext erased since the last scrub survives in the
        database's storage files (the backend says how: :meth:`SqliteDatabase.scrub`,
        :meth:`PostgresDatabase.scrub`).

        Returns False if it could not finish now (the erased bytes are then checked at
        the next scrub). Raises ErasureError if an erased piece is still found.
        """
        with self._lock:
            db = self._database()
            with db.errors():
                if not db.scrub(self._unverified):
                    return False
            self._unverified = []
        return True

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                try:
                    self.scrub()
                finally:
                    self._db.close()
                    self._db = None

    @property
    def closed(self) -> bool:
        return self._db is None

    # -- reads ----------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Increases with every committed change to the enrolled subjects."""
        return int(self.meta("generation"))

    def meta(self, name: str) -> Any:
        """A setting (None if unset); raises StoreIntegrityError if it fails its check."""
        with self._reading() as db:
            return self._meta_value(db, name)

    def subject_ids(self) -> dict[str, int]:
        return {t.subject: t.id for t in self.templates()}

    def templates(self, ids: Sequence[int] | None = None) -> list[StoredTemplate]:
        """Every enrolled subject (or those of ``ids`` still enrolled) with its code and ciphertext
        slot, in id order (each row verified)."""
        if ids is None:
            with self._reading() as db:
                found = db.execute(f"SELECT {_SUBJECT_COLUMNS} FROM subjects ORDER BY id").fetchall()
        else:
            found = sorted(self._where_in(f"SELECT {_SUBJECT_COLUMNS} FROM subjects WHERE id IN ", ids))
        self._require(found, "subjects")
        return [
            StoredTemplate(s, i, None if c is None else bytes(c), t, None if e is None else bytes(e))
            for i, _, s, c, t, e, _ in found
        ]

    def attested(self, ids: Sequence[int]) -> dict[int, bytes]:
        """The signed template ciphertexts kept for the subjects ``ids`` (those that have one)."""
        found = self._where_in("SELECT id, template FROM attested WHERE id IN ", ids)
        return {int(id_): bytes(template) for id_, template in found}

    def rows(self, numbers: Sequence[int] | None = None) -> list[StoredRow]:
        """Every row of packed ciphertexts, in order (rows are numbered from 0 without gaps), or the
        rows ``numbers`` in the order given (each must exist); each verified."""
        if numbers is None:
            with self._reading() as db:
                found = db.execute("SELECT row, tag, data, used, refreshes FROM he_rows ORDER BY row").fetchall()
            expected = list(range(len(found)))
        else:
            by_number = {r[0]: r for r in self._where_in("SELECT row, tag, data, used, refreshes FROM he_rows WHERE row IN ", numbers)}
            found = [by_number[n] for n in numbers if n in by_number]
            expected = [int(n) for n in numbers]
        self._require(found, "he_rows")
        if [r for r, *_ in found] != expected:
            raise self._damaged(["the numbering of the ciphertext rows (rows are missing)"])
        return [(bytes(data), int(used), int(refreshes)) for _, _, data, used, refreshes in found]

    def row_count(self) -> int:
        with self._reading() as db:
            return int(db.execute("SELECT count(*) FROM he_rows").fetchone()[0])

    def _where_in(self, query: str, keys: Sequence[int]) -> list[tuple[Any, ...]]:
        """``query`` + ``(?, ...)`` over ``keys`` (integers), in chunks the backends accept."""
        found: list[tuple[Any, ...]] = []
        with self._reading() as db:
            for start in range(0, len(keys), 500):
                chunk = [int(k) for k in keys[start : start + 500]]
                found += db.execute(query + "(" + ",".join("?" * len(chunk)) + ")", chunk).fetchall()
        return found

    def consents(self, subject: str | None = None) -> list[ConsentRecord]:
        """Consent records (of one subject, or all), oldest grant first (each verified)."""
        query = "SELECT * FROM consents" + (" WHERE subject = ?" if subject is not None else "")
        with self._reading() as db:
            found = db.execute(
                query + " ORDER BY granted_at, consent_id", () if subject is None else (subject,)
            ).fetchall()
        self._require(found, "consents")
        try:
            return [_consent_from_row(row[:1] + row[2:]) for row in found]
        except (TypeError, ValueError) as exc:  # authentic rows always parse; this is a defect, not damage
            raise StoreFormatError(f"{self._path}: a consent record does not parse: {exc}") from exc

    def enrolled_at(self, subject: str) -> str | None:
        """When ``subject`` was enrolled, or None if they are not."""
        with self._reading() as db:
            found = db.execute(f"SELECT {_SUBJECT_COLUMNS} FROM subjects WHERE subject = ?", (subject,)).fetchall()
        self._require(found, "subjects")
        return str(found[0][-1]) if found else None

    def verify(self) -> list[str]:
        """Every problem of the whole database: damaged pages, settings, rows and censuses (no exception)."""
        problems: list[str] = []
        try:
            with self._reading() as db:
                db.check_pages()
                verify_settings(db, self._key, rows_too=False)
                census = self._stored_census(db)
                for table, column in TAGGED_TABLES.items():
                    found = db.execute(f"SELECT * FROM {table} ORDER BY {column}").fetchall()
                    damaged = self._damaged_rows(found, table)
                    if damaged:
                        problems.append(str(self._damaged(damaged)))
                    problems += census_problems(table, census[table], Census.of(row[1] for row in found))
        except StoreIntegrityError as exc:
            problems.append(str(exc))
        return problems

    def audit_entries(self, pseudonym: str | None = None, *, since: str | None = None) -> list[AuditEntry]:
        """The audit chain as stored, in sequence order; or only the entries naming ``pseudonym``;
        or only those at or after the time ``since`` (as :func:`~fpmatch.consent.format_time` writes it)."""
        with self._reading() as db:
            query = "SELECT * FROM audit WHERE time >= ? ORDER BY seq"
            args: tuple[str, ...] = (since or "",)
            if pseudonym is not None:
                # A substring test narrows the scan to candidates; the exact test is below.
                query = f"SELECT * FROM audit WHERE time >= ? AND (subject = ? OR {db.contains('detail')}) ORDER BY seq"
                args = (since or "", pseudonym, pseudonym)
            rows = db.execute(query, args).fetchall()
        entries = [
            AuditEntry(seq, time, event, subject, purpose, outcome, _detail(detail), prev, digest)
            for seq, time, event, subject, purpose, outcome, detail, prev, digest in rows
        ]
        if pseudonym is None:
            return entries
        return [e for e in entries if e.subject == pseudonym or pseudonym in e.detail.get("matched", ())]

    def audit_head(self) -> AuditHead | None:
        """The signed head of the audit chain (None while the log is empty)."""
        with self._reading() as db:
            return self._head(db)

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
        fsync_directory(self.directory)

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

    def _database(self) -> Database:
        if self._db is None:
            raise StoreClosedError(f"the store {self.directory} is closed")
        return self._db

    def _connection(self) -> Any:
        """The backend's own connection (sqlite3 or psycopg), for inspection."""
        return self._database().conn

    @property
    def _path(self) -> str:
        return self._database().name if self._db is not None else str(self.directory)

    @contextmanager
    def _reading(self) -> Iterator[Database]:
        with self._lock:
            db = self._database()
            with db.reading():
                yield db

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
            f"from another store). {RECOVER}"
        )

    def _meta_value(self, db: Database, name: str) -> Any:
        row = db.execute("SELECT value, tag FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        if name not in UNTAGGED_META and not self._tagger.verify("meta", name, (row[0],), _blob(row[1])):
            raise self._damaged([f"the setting {name!r}"])
        return json.loads(row[0])

    def _stored_census(self, db: Database) -> dict[str, Census]:
        value = self._meta_value(db, "census")
        try:
            return {table: Census.from_json(value[table]) for table in TAGGED_TABLES}
        except (KeyError, TypeError, ValueError) as exc:
            raise self._damaged(["the setting 'census'"]) from exc

    def _head(self, db: Database) -> AuditHead | None:
        row = db.execute("SELECT value FROM meta WHERE name = 'audit_head'").fetchone()
        mac = ""
        if row is not None:
            try:
                value = loads(row[0])
                return AuditHead(int(value["seq"]), str(value["hash"]), str(value["mac"]))
            except (KeyError, TypeError, ValueError, OverflowError):
                mac = "unreadable"  # a head edited into nonsense: carry on as below, and it never verifies
        last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        # Entries without a head: the head was deleted; carry on from the last row, unsigned.
        return None if last is None else AuditHead(int(last[0]), str(last[1]), mac)


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


__all__ = ["DATABASE", "INDEX_CACHE", "Store", "StoreSettings", "Transaction"]
