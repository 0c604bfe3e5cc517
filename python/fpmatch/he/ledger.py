"""The key holder's own ledger: limits that survive restarts, and a hash-chained audit log.

One SQLite file (WAL) kept by the key holder service, never by the matching
service. Every request is one transaction: the caller's rate (a token bucket
whose state is stored), its daily request and score budgets, the subject's
daily budget, the per-request score cap, and one audit line. A restart keeps
every counter, so restarting the key holder does not refill a budget.

Audit lines hold the caller (from its certificate), the operation, the request
size in bytes and scores, and the counts of what was released (decisions that
passed and failed, positions, values, ciphertexts); never a score. Each line's
hash covers the previous one's, so an edited, deleted, inserted or reordered
line breaks the chain at that line.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import AuditTamperedError, InvalidInputError
from .errors import DecryptionRefusedError, RateLimitExceededError

_GENESIS = "0" * 64
_SCHEMA = """
CREATE TABLE IF NOT EXISTS bucket (caller TEXT PRIMARY KEY, tokens REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS daily (
    day TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0, scores INTEGER NOT NULL DEFAULT 0, refused INTEGER NOT NULL DEFAULT 0,
    released INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, kind, name));
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, time TEXT NOT NULL, caller TEXT NOT NULL, op TEXT NOT NULL,
    request_bytes INTEGER NOT NULL, scores INTEGER NOT NULL, outcome TEXT NOT NULL,
    released TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nonce (nonce BLOB PRIMARY KEY, expires REAL NOT NULL);
"""


@dataclass(frozen=True)
class Budgets:
    """Per-caller and per-subject limits of a key holder service.

    Rates refill at ``requests_per_second`` up to ``burst``. Daily budgets
    count UTC days; ``scores`` are encrypted scores decrypted to answer (one
    bit each at most for decisions); ``released`` counts what passed: true
    decisions, returned positions and values (an honest match request
    releases about one; rebuilding the secret key needs about 2N/3, see
    THREAT_MODEL.md). A request is refused once the day's released count has
    reached its budget. ``subject_requests_per_day`` counts requests a caller
    labels with a subject (1:1 verifications); ``subject_shortlists_per_day``
    counts the attested identifications whose shortlist holds a subject's
    signed template: past it, the template is left out of the scoring (never
    a match) until the next day.
    """

    requests_per_second: float = 20.0
    burst: int = 100
    caller_requests_per_day: int = 100_000
    caller_scores_per_day: int = 200_000
    caller_released_per_day: int = 20_000
    subject_requests_per_day: int = 25
    subject_shortlists_per_day: int = 25
    max_scores_per_request: int = 4096

    def __post_init__(self) -> None:
        if not self.requests_per_second > 0 or self.burst < 1:
            raise InvalidInputError("budgets need requests_per_second > 0 and burst >= 1")
        counts = (self.caller_requests_per_day, self.caller_scores_per_day, self.caller_released_per_day,
                  self.subject_requests_per_day, self.subject_shortlists_per_day, self.max_scores_per_request)  # fmt: skip
        if min(counts) < 1:
            raise InvalidInputError("daily budgets and max_scores_per_request must be at least 1")


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    time: str
    caller: str
    op: str
    request_bytes: int
    scores: int
    outcome: str
    released: dict[str, int]
    prev: str
    hash: str


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    entries: int
    first_bad: int | None  # seq of the first line that does not verify
    message: str


def _day(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d")


def _digest(prev: str, fields: dict[str, Any]) -> str:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(bytes.fromhex(prev) + body).hexdigest()


def _fields(e: LedgerEntry) -> dict[str, Any]:
    d = asdict(e)
    del d["prev"], d["hash"]
    return d


class Ledger:
    """The key holder's limits and audit log in one SQLite file. Thread-safe."""

    def __init__(
        self, path: str | Path, budgets: Budgets = Budgets(), *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        self.budgets = budgets
        self._clock = clock
        self._lock = threading.Lock()
        self._in_request: int | None = None  # the thread whose request transaction is open
        self._released: dict[str, int] = {}  # what that request released (and left out), for its audit line
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self.path.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def request(self, caller: str, op: str, request_bytes: int, scores: int, subject: str | None) -> Iterator[dict[str, int]]:
        """Admit one request and audit it, in one transaction.

        Raises :class:`RateLimitExceededError` or :class:`DecryptionRefusedError`
        (after recording the refusal) when over a limit. The body fills the
        yielded dict with what it released; an exception in the body is
        audited with its class name as the outcome and re-raised.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                refusal = self._charge(caller, request_bytes, scores, subject)
                if refusal is not None:
                    self._append(caller, op, request_bytes, scores, type(refusal).__name__, {})
                    self._db.execute("COMMIT")
                    raise refusal
                released: dict[str, int] = {}
                self._released = released
                self._in_request = threading.get_ident()
                try:
                    yield released
                except Exception as exc:
                    self._append(caller, op, request_bytes, scores, type(exc).__name__, {})
                    self._db.execute("COMMIT")
                    raise
                self._append(caller, op, request_bytes, scores, "ok", released)
                passed = sum(v for k, v in released.items() if k in ("passed", "positions", "values"))
                self._db.execute(
                    "UPDATE daily SET released = released + ? WHERE day = ? AND kind = 'caller' AND name = ?",
                    (passed, _day(self._clock()), caller),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            finally:
                self._in_request = None

    def remember(self, nonce: bytes, expires: float, now: float) -> bool:
        """Record an attested probe's nonce until ``expires``; False if it is recorded already (a replay).

        Inside a request it joins that request's transaction, so a refused request
        still spends its nonce; outside one it runs in its own.
        """
        if self._in_request == threading.get_ident():
            return self._remember(nonce, expires, now)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                fresh = self._remember(nonce, expires, now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return fresh

    def admit(self, labels: list[str]) -> list[bool]:
        """Count one scoring of each shortlisted subject; False for those over their daily budget.

        Called inside a request (the key holder's attested identification): it joins that
        request's transaction, and the request's audit line records how many were left out.
        """
        if self._in_request != threading.get_ident():
            raise RuntimeError("Ledger.admit counts shortlists inside a request only")
        day, budget = _day(self._clock()), self.budgets.subject_shortlists_per_day
        admitted = []
        for label in labels:
            self._db.execute("INSERT OR IGNORE INTO daily (day, kind, name) VALUES (?, 'shortlisted', ?)", (day, label))
            (used,) = self._db.execute(
                "SELECT requests FROM daily WHERE day = ? AND kind = 'shortlisted' AND name = ?", (day, label)
            ).fetchone()
            column = "requests" if used < budget else "refused"
            self._db.execute(
                f"UPDATE daily SET {column} = {column} + 1 WHERE day = ? AND kind = 'shortlisted' AND name = ?",
                (day, label),
            )
            admitted.append(used < budget)
        if not all(admitted):
            self._released["left_out"] = self._released.get("left_out", 0) + admitted.count(False)
        return admitted

    def _remember(self, nonce: bytes, expires: float, now: float) -> bool:
        self._db.execute("DELETE FROM nonce WHERE expires < ?", (now,))
        return self._db.execute("INSERT OR IGNORE INTO nonce VALUES (?, ?)", (nonce, expires)).rowcount == 1

    def _charge(self, caller: str, size: int, scores: int, subject: str | None) -> Exception | None:
        b = self.budgets
        now = self._clock()
        day = _day(now)
        row = self._db.execute("SELECT tokens, updated FROM bucket WHERE caller = ?", (caller,)).fetchone()
        tokens, updated = (float(b.burst), now) if row is None else row
        tokens = min(float(b.burst), tokens + max(0.0, now - updated) * b.requests_per_second)
        counters = [("caller", caller)] + ([("subject", subject)] if subject is not None else [])
        for kind, name in counters:
            self._db.execute(
                "INSERT OR IGNORE INTO daily (day, kind, name) VALUES (?, ?, ?)", (day, kind, name)
            )
        used = self._db.execute(
            "SELECT requests, scores, released FROM daily WHERE day = ? AND kind = 'caller' AND name = ?", (day, caller)
        ).fetchone()
        refusal: Exception | None = None
        if tokens < 1.0:
            refusal = RateLimitExceededError(
                f"caller {caller!r} is over its request rate; retry in {(1.0 - tokens) / b.requests_per_second:.2f} s"
            )
        elif scores > b.max_scores_per_request:
            refusal = DecryptionRefusedError(f"at most {b.max_scores_per_request} scores per request, got {scores}")
        elif (used[0] + 1 > b.caller_requests_per_day or used[1] + scores > b.caller_scores_per_day
              or used[2] >= b.caller_released_per_day):  # fmt: skip
            refusal = RateLimitExceededError(
                f"caller {caller!r} has used its daily budget ({b.caller_requests_per_day} requests, "
                f"{b.caller_scores_per_day} scores, {b.caller_released_per_day} released); it refills at 00:00 UTC"
            )
        elif subject is not None:
            (subject_used,) = self._db.execute(
                "SELECT requests FROM daily WHERE day = ? AND kind = 'subject' AND name = ?", (day, subject)
            ).fetchone()
            if subject_used + 1 > b.subject_requests_per_day:
                refusal = RateLimitExceededError(
                    f"subject {subject!r} has used its daily budget of {b.subject_requests_per_day} requests"
                )
        if refusal is None:
            tokens -= 1.0
        self._db.execute(
            "INSERT INTO bucket (caller, tokens, updated) VALUES (?, ?, ?) "
            "ON CONFLICT (caller) DO UPDATE SET tokens = excluded.tokens, updated = excluded.updated",
            (caller, tokens, now),
        )
        for kind, name in counters:
            if refusal is None:
                self._db.execute(
                    "UPDATE daily SET requests = requests + 1, scores = scores + ? WHERE day = ? AND kind = ? AND name = ?",
                    (scores, day, kind, name),
                )
            else:
                self._db.execute(
                    "UPDATE daily SET refused = refused + 1 WHERE day = ? AND kind = ? AND name = ?", (day, kind, name)
                )
        return refusal

    def _append(self, caller: str, op: str, size: int, scores: int, outcome: str, released: dict[str, int]) -> None:
        last = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (1, _GENESIS) if last is None else (last[0] + 1, last[1])
        stamp = datetime.fromtimestamp(self._clock(), timezone.utc).isoformat(timespec="microseconds")
        entry = LedgerEntry(seq, stamp, caller, op, size, scores, outcome, dict(released), prev, "")
        digest = _digest(prev, _fields(entry))
        self._db.execute(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, stamp, caller, op, size, scores, outcome, json.dumps(entry.released, sort_keys=True), prev, digest),
        )

    # -- reading -------------------------------------------------------------------

    def usage(self, caller: str, day: str | None = None) -> dict[str, int]:
        """Today's (or ``day``'s) requests, scores and refusals of ``caller``."""
        day = day or _day(self._clock())
        with self._lock:
            row = self._db.execute(
                "SELECT requests, scores, refused, released FROM daily WHERE day = ? AND kind = 'caller' AND name = ?",
                (day, caller),
            ).fetchone()
        requests, scores, refused, released = row or (0, 0, 0, 0)
        return {"requests": requests, "scores": scores, "refused": refused, "released": released}

    def entries(self) -> list[LedgerEntry]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM audit ORDER BY seq").fetchall()
        return [LedgerEntry(*r[:7], json.loads(r[7]), r[8], r[9]) for r in rows]  # type: ignore[misc]

    def verify(self) -> ChainReport:
        """Recompute the chain; report the first line that does not verify."""
        return verify_entries(self.entries())


def verify_entries(entries: list[LedgerEntry]) -> ChainReport:
    prev = _GENESIS
    for expected, entry in enumerate(entries, start=1):
        if entry.seq != expected or entry.prev != prev or _digest(prev, _fields(entry)) != entry.hash:
            return ChainReport(False, len(entries), entry.seq, f"the audit chain breaks at line {entry.seq}")
        prev = entry.hash
    return ChainReport(True, len(entries), None, f"{len(entries)} lines verify")


def check_chain(entries: list[LedgerEntry]) -> None:
    report = verify_entries(entries)
    if not report.ok:
        raise AuditTamperedError(report.message)


__all__ = ["Budgets", "ChainReport", "Ledger", "LedgerEntry", "check_chain", "verify_entries"]
