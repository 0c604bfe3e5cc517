"""The non-biometric alternative: a subject who does not (or no longer) consent to
face matching must still get the service by another method.

:class:`AlternativeVerifier` is the small interface a service implements with
whatever it already has (a card, a one-time code by SMS, staff checking an ID).
:class:`PinVerifier` is the reference implementation: a per-subject PIN,
salted and slow-hashed with scrypt, compared in constant time, locked for a
while after repeated failures.

Why a pepper: a PIN has few possible values, so whoever steals the PIN
database can try them all however slow the hash. Mixing in a secret kept
outside that database (the service derives it from its hash key) makes a
stolen database useless on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from .consent import Clock, as_utc, format_time, parse_time, system_clock
from .errors import InvalidInputError, StoreClosedError, StoreFormatError, TooManyAttemptsError

_PIN = re.compile(r"[0-9]{4,12}")
_SALT_BYTES = 16
_DIGEST_BYTES = 32


@runtime_checkable
class AlternativeVerifier(Protocol):
    """A non-biometric way to verify a claimed identity."""

    method: str

    def enrol_secret(self, subject: str, secret: str) -> None:
        """Set (or replace) the subject's secret."""
        ...

    def verify(self, subject: str, secret: str) -> bool:
        """Whether ``secret`` is the subject's; may raise TooManyAttemptsError."""
        ...

    def remove(self, subject: str) -> None:
        """Forget the subject's secret."""
        ...


class PinVerifier:
    """PINs of 4 to 12 digits, hashed with scrypt (per-subject salt, optional pepper).

    ``path`` is a SQLite file (None: in memory only). After ``max_attempts``
    consecutive failures the subject is locked for ``lockout``; while locked,
    :meth:`verify` raises :class:`~fpmatch.errors.TooManyAttemptsError` whatever
    PIN is given. ``cost`` is scrypt's N (a power of two, at least 2**10).
    """

    method = "pin"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        pepper: bytes | None = None,
        cost: int = 2**14,
        max_attempts: int = 5,
        lockout: timedelta = timedelta(minutes=15),
        clock: Clock = system_clock,
    ) -> None:
        if cost < 2**10 or cost & (cost - 1):
            raise InvalidInputError(f"cost must be a power of two of at least 1024, got {cost}")
        if max_attempts < 1:
            raise InvalidInputError("max_attempts must be at least 1")
        if lockout <= timedelta(0):
            raise InvalidInputError("lockout must be positive")
        if pepper is not None and len(pepper) < 16:
            raise InvalidInputError("a pepper must be at least 16 bytes")
        self._pepper = pepper
        self._cost = cost
        self._max_attempts = max_attempts
        self._lockout = lockout
        self._clock = clock
        self._lock = threading.Lock()
        where = ":memory:" if path is None else os.fspath(path)
        self._db: sqlite3.Connection | None = None
        try:
            self._db = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS pins (subject TEXT PRIMARY KEY, salt BLOB NOT NULL, "
                "digest BLOB NOT NULL, cost INTEGER NOT NULL, failures INTEGER NOT NULL, locked_until TEXT)"
            )
        except sqlite3.Error as exc:
            if self._db is not None:
                self._db.close()
            raise StoreFormatError(f"{where} is not a PIN database (damaged, or not a file): {exc}") from exc

    def enrol_secret(self, subject: str, secret: str) -> None:
        """Store a fresh salt and the PIN's digest; resets failures and any lock."""
        _check_subject(subject)
        if not isinstance(secret, str) or not _PIN.fullmatch(secret):
            raise InvalidInputError("a PIN is 4 to 12 digits")
        salt = secrets.token_bytes(_SALT_BYTES)
        digest = self._digest(secret, salt, self._cost)
        with self._lock:
            self._conn().execute(
                "INSERT OR REPLACE INTO pins VALUES (?, ?, ?, ?, 0, NULL)", (subject, salt, digest, self._cost)
            )

    def verify(self, subject: str, secret: str) -> bool:
        """True only for the subject's PIN; unknown subjects take as long as known ones."""
        _check_subject(subject)
        if not isinstance(secret, str):
            raise InvalidInputError("a PIN must be a string")
        now = self._now()
        with self._lock:
            row = (
                self._conn()
                .execute("SELECT salt, digest, cost, locked_until FROM pins WHERE subject = ?", (subject,))
                .fetchone()
            )
        if row is None:
            self._digest(secret, secrets.token_bytes(_SALT_BYTES), self._cost)
            return False
        salt, digest, cost, locked_until = row
        if locked_until is not None and now < parse_time(locked_until):
            raise TooManyAttemptsError(f"too many failed attempts; locked until {locked_until}")
        candidate = self._digest(secret, salt, cost) if _PIN.fullmatch(secret) else b""
        matched = hmac.compare_digest(candidate, digest)
        with self._lock:
            conn = self._conn()
            if matched:
                conn.execute("UPDATE pins SET failures = 0, locked_until = NULL WHERE subject = ?", (subject,))
                return True
            conn.execute("UPDATE pins SET failures = failures + 1 WHERE subject = ?", (subject,))
            count = conn.execute("SELECT failures FROM pins WHERE subject = ?", (subject,)).fetchone()
            if count is not None and count[0] >= self._max_attempts:
                until = format_time(now + self._lockout)
                conn.execute("UPDATE pins SET failures = 0, locked_until = ? WHERE subject = ?", (until, subject))
        return False

    def remove(self, subject: str) -> None:
        with self._lock:
            self._conn().execute("DELETE FROM pins WHERE subject = ?", (subject,))

    def __contains__(self, subject: object) -> bool:
        with self._lock:
            return self._conn().execute("SELECT 1 FROM pins WHERE subject = ?", (subject,)).fetchone() is not None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreClosedError("the PIN verifier is closed")
        return self._db

    def _now(self) -> datetime:
        return as_utc(self._clock(), "clock()")

    def _digest(self, pin: str, salt: bytes, cost: int) -> bytes:
        secret = pin.encode("ascii", "replace")
        if self._pepper is not None:
            secret = hmac.new(self._pepper, secret, "sha256").digest()
        return hashlib.scrypt(secret, salt=salt, n=cost, r=8, p=1, maxmem=2**26, dklen=_DIGEST_BYTES)


def _check_subject(subject: object) -> None:
    if not isinstance(subject, str) or not subject:
        raise InvalidInputError(f"subject must be a non-empty string, got {subject!r}")
