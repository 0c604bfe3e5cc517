"""A store's settings (the ``meta`` table), shared by both database backends.

A store's settings fix its format, the service key it was created under, the
capture edges' profile, its random identifier and each tagged table's census.
They are written once at creation and authenticated at every open; the
functions here do both on any connection that runs the store's SQL (``?``
placeholders), so SQLite and PostgreSQL stores are checked alike.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

from .edge import SCHEMES, EdgeProfile
from .errors import InvalidInputError, KeyMismatchError, StoreFormatError, StoreIntegrityError
from .hashing import SCHEMES as HASH_SCHEMES
from .keys import ServiceKey
from .store_tags import TAGGED_TABLES, Census, RowTagger

FORMAT = 3
#: Settings every store has; each is tagged (the audit head has its own MAC).
REQUIRED_META = ("format", "key_id", "profile", "generation", "store_id", "census")
#: Settings without a row tag: the audit head carries its own MAC; the count of erasures
#: not yet made final only ever causes extra work (a rewrite) when it is wrong.
UNTAGGED_META = ("audit_head", "erasures_pending")
RECOVER = (
    "Restore the store directory from a backup; without one, create a new store and enrol the "
    "subjects again through a capture edge"
)


class Rows(Protocol):
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Statements(Protocol):
    """What the settings need of a backend: statements with ``?`` placeholders."""

    name: str

    def execute(self, sql: str, args: Sequence[Any] = ...) -> Rows: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def check_tables(self) -> None: ...


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


def initialise(db: Statements, key: ServiceKey, profile: EdgeProfile | None, *, create: bool) -> tuple[StoreSettings, bytes]:
    """Write a new store's settings (``create``) or authenticate an existing store's; inside the
    caller's transaction, after the schema exists. Returns the settings and the store's identifier."""
    meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
    if not meta and not create:
        raise StoreFormatError(
            f"{db.name} holds no store settings: damaged, or not a store this version made. Restore it from a backup"
        )
    if not create:
        check_format_and_key(meta, db.name, key)
        db.check_tables()  # after the format check, which names a way forward for an earlier format
        store_id = verify_settings(db, key)
        return settings_of(meta, db.name, key, profile), store_id
    store_id = secrets.token_bytes(16)
    settings = settings_of(meta, db.name, key, profile)
    tagger = RowTagger(key.subkey("store-rows"), store_id)
    rows = {
        "format": FORMAT,
        "key_id": settings.key_id,
        "profile": settings.profile.to_dict(),
        "generation": 0,
        "store_id": store_id.hex(),
        "census": {table: Census().to_json() for table in TAGGED_TABLES},
    }
    db.executemany(
        "INSERT INTO meta VALUES (?, ?, ?)",
        [(name, json.dumps(value), tagger.tag("meta", name, (json.dumps(value),))) for name, value in rows.items()],
    )
    return settings, store_id


def loads(text: object) -> Any:
    """JSON of a setting not yet authenticated: any failure is a ValueError."""
    try:
        return json.loads(text)  # type: ignore[arg-type]
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"unreadable setting: {exc}") from None


def check_format_and_key(meta: Mapping[str, str], name: str, key: ServiceKey) -> None:
    """Refuse other formats and other keys before anything is authenticated (they cannot be)."""
    try:
        found = loads(meta.get("format"))
    except ValueError:
        found = None
    if found != FORMAT:
        raise StoreFormatError(
            f"{name} has store format {found!r}, this version reads {FORMAT}. Stores of earlier formats "
            "carry no authenticated rows (format 1 ones were made by a service that held the transform key) "
            "and are not converted: create a new store and enrol the subjects again through a capture edge"
        )
    try:
        key_id = loads(meta.get("key_id"))
    except ValueError:
        key_id = None
    if key_id != key.key_id:
        raise KeyMismatchError(f"{name} was created under service key {key_id}, not {key.key_id}")


def verify_settings(db: Statements, key: ServiceKey, *, rows_too: bool = True) -> bytes:
    """Authenticate every setting and (``rows_too``) every table's census; returns the store's identifier."""

    def damaged(what: str) -> StoreIntegrityError:
        return StoreIntegrityError(f"{db.name} is damaged: {what}. {RECOVER}")

    rows = db.execute("SELECT name, value, tag FROM meta").fetchall()
    values = {name: value for name, value, _ in rows}
    missing = [name for name in REQUIRED_META if name not in values]
    if missing:
        raise damaged(f"the settings {missing} are missing")
    try:
        store_id = bytes.fromhex(loads(values["store_id"]))
    except (TypeError, ValueError):
        store_id = b""
    if len(store_id) != 16:
        raise damaged("the setting 'store_id' is unreadable")
    tagger = RowTagger(key.subkey("store-rows"), store_id)
    bad = [n for n, value, tag in rows if n not in UNTAGGED_META and not tagger.verify("meta", n, (value,), _blob(tag))]
    if bad:
        raise damaged(f"the settings {bad} failed authentication (changed outside fpmatch)")
    stored = json.loads(values["census"])
    problems = []
    for table in TAGGED_TABLES if rows_too else ():
        try:
            census = Census.from_json(stored[table])
        except (KeyError, TypeError, ValueError):
            raise damaged(f"the census of the {table} table is unreadable") from None
        actual = Census.of(tag for (tag,) in db.execute(f"SELECT tag FROM {table}").fetchall())
        problems += census_problems(table, census, actual)
    if problems:
        raise damaged("; ".join(problems))
    return store_id


def census_problems(table: str, stored: Census, actual: Census) -> list[str]:
    what = {"subjects": "enrolled subjects", "he_rows": "ciphertext rows", "consents": "consent records"}[table]
    if stored.count != actual.count:
        return [
            f"the database holds {actual.count} {what}, {stored.count} were written: rows were deleted or added "
            "outside fpmatch"
        ]
    if stored.digest != actual.digest:
        return [f"{what} were replaced outside fpmatch (their census does not verify)"]
    return []


def settings_of(meta: Mapping[str, str], name: str, key: ServiceKey, profile: EdgeProfile | None) -> StoreSettings:
    """The settings of a new store (from ``profile``) or of an authenticated one (checked against it)."""
    if profile is not None and not isinstance(profile, EdgeProfile):
        raise InvalidInputError(f"profile must be an EdgeProfile (CaptureEdge.profile), got {type(profile).__name__}")
    if not meta:
        if profile is None:
            raise InvalidInputError(f"{name} is a new store: pass the capture edge's profile (CaptureEdge.profile)")
        return StoreSettings(key.key_id, profile)
    try:  # authenticated by now, so only a defect of an older version could fail here
        stored = StoreSettings(str(loads(meta["key_id"])), EdgeProfile.from_dict(loads(meta["profile"])))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise StoreFormatError(f"{name} has unreadable settings: {exc}") from exc
    if stored.key_id != key.key_id:
        raise KeyMismatchError(f"{name} was created under service key {stored.key_id}, not {key.key_id}")
    if stored.scheme not in SCHEMES or (stored.profile.hashed and stored.profile.hash_scheme not in HASH_SCHEMES):
        raise KeyMismatchError(f"{name} holds a scheme this version does not know ({stored.profile})")
    if profile is not None and profile.profile_id != stored.profile.profile_id:
        raise KeyMismatchError(
            f"{name} was created for another edge profile (scheme {stored.scheme}, dim {stored.dim}, "
            f"transform key {stored.profile.edge_key_id}, encryption key {stored.profile.he_key_id})"
        )
    return stored


def _blob(value: object) -> object:
    """Binary columns come back as bytes (PostgreSQL, SQLite) or memoryview; anything else stays as it is."""
    return bytes(value) if isinstance(value, memoryview) else value


__all__ = ["FORMAT", "StoreSettings", "initialise", "verify_settings"]
