"""Tamper-evident audit log: a SHA-256 hash chain of events without biometric data.

Each entry records one event (consent granted, enrolment, match request,
withdrawal, purge, ...) with its time, the subject's pseudonym, the purpose and
the outcome. ``hash`` is SHA-256 over a canonical JSON of every other field,
``prev_hash`` included, so an entry commits to the whole history before it.
:func:`verify_chain` walks the chain and names the first entry that was edited,
deleted, inserted or reordered.

The limit of a plain chain: whoever can rewrite *every* entry from some point on
(and drop the tail) produces a chain that verifies. :class:`AuditHead` closes
that gap with a keyed MAC over the latest ``(seq, hash)``, made with a key kept
outside the store: a rewritten or truncated log no longer matches a head the
attacker cannot sign. A rollback to an older, genuinely signed state (log and
head restored together from a backup) still verifies; anchor :class:`AuditHead`
values outside the store (publish them, send them to the key holder) to catch it.

``detail`` takes strings, integers, booleans, None and lists of strings only: no
floats, so no match score (which could help reconstruct a template) and no
array can end up in the log.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
from dataclasses import dataclass
from enum import Enum
from typing import IO, Any, Callable, Iterable, Mapping, Union

from .errors import AuditTamperedError, InvalidInputError

GENESIS = "0" * 64
_DOMAIN = b"fpmatch.audit.v1\n"
_HEAD_DOMAIN = b"fpmatch.audit-head.v1\n"

PathOrFile = Union[str, "os.PathLike[str]", IO[str]]
_Bad = Callable[[int, str, str], "AuditReport"]


class AuditEvent(str, Enum):
    """What happened."""

    CONSENT_GRANTED = "consent.granted"
    CONSENT_REFUSED = "consent.refused"
    CONSENT_WITHDRAWN = "consent.withdrawn"
    ENROL = "enrol"
    ENROL_REFUSED = "enrol.refused"
    VERIFY = "verify"
    IDENTIFY = "identify"
    ALTERNATIVE_ENROL = "alternative.enrol"
    ALTERNATIVE_VERIFY = "alternative.verify"
    PURGE = "purge"
    CALIBRATE = "calibrate"
    SUBJECT_REPORT = "subject.report"


@dataclass(frozen=True)
class AuditEntry:
    """One link of the chain. ``hash`` covers every other field."""

    seq: int
    time: str
    event: str
    subject: str | None
    purpose: str | None
    outcome: str | None
    detail: Mapping[str, Any]
    prev_hash: str
    hash: str

    def body(self) -> dict[str, Any]:
        """The hashed fields."""
        return {
            "seq": self.seq,
            "time": self.time,
            "event": self.event,
            "subject": self.subject,
            "purpose": self.purpose,
            "outcome": self.outcome,
            "detail": dict(self.detail),
            "prev_hash": self.prev_hash,
        }

    def computed_hash(self, seq: int | None = None) -> str:
        """The hash the fields give (as if numbered ``seq``, when given); "" if they cannot be hashed."""
        try:
            body = self.body()
            if seq is not None:
                body["seq"] = seq
            return _digest(body)
        except (TypeError, ValueError):  # e.g. a detail edited into a non-object or NaN
            return ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "hash": self.hash}

    def to_json(self) -> str:
        """One canonical JSON line (no newline)."""
        return _canonical(self.to_dict()).decode("utf-8")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AuditEntry":
        try:
            entry = cls(
                seq=data["seq"],
                time=data["time"],
                event=data["event"],
                subject=data["subject"],
                purpose=data["purpose"],
                outcome=data["outcome"],
                detail=data["detail"],
                prev_hash=data["prev_hash"],
                hash=data["hash"],
            )
        except (KeyError, TypeError) as exc:
            raise InvalidInputError(f"not an audit entry: missing {exc}") from None
        if not isinstance(entry.seq, int) or not isinstance(entry.detail, Mapping):
            raise InvalidInputError("not an audit entry: bad seq or detail")
        return entry


@dataclass(frozen=True)
class AuditHead:
    """The latest ``(seq, hash)`` and a MAC over them under a key kept outside the store.

    An empty ``mac`` means the head was found broken once and is never re-signed,
    so the break stays visible to every later verification.
    """

    seq: int
    hash: str
    mac: str

    def valid(self, key: bytes) -> bool:
        # As bytes: a head edited to hold non-ASCII text is invalid, not an exception.
        expected = head_mac(key, self.seq, self.hash).encode()
        return bool(self.mac) and hmac.compare_digest(self.mac.encode("utf-8", "surrogatepass"), expected)


@dataclass(frozen=True)
class AuditReport:
    """Result of :func:`verify_chain`. ``problem`` is one of
    ``"edited"``, ``"deleted"``, ``"inserted"``, ``"reordered"``, ``"head"``, or None."""

    ok: bool
    entries: int
    first_bad_seq: int | None
    problem: str | None
    message: str
    head_checked: bool

    def __bool__(self) -> bool:
        return self.ok

    def raise_if_broken(self) -> None:
        if not self.ok:
            raise AuditTamperedError(self.message)


def _canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(_DOMAIN + _canonical(body)).hexdigest()


def head_mac(key: bytes, seq: int, hash_: str) -> str:
    """HMAC-SHA256 binding the head ``(seq, hash)`` to ``key``."""
    return hmac.new(key, _HEAD_DOMAIN + f"{seq}:{hash_}".encode("utf-8", "surrogatepass"), "sha256").hexdigest()


def check_detail(detail: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``detail``; refuses floats, bytes and arrays so no score or template slips in."""
    out: dict[str, Any] = {}
    for name, value in (detail or {}).items():
        if not isinstance(name, str):
            raise InvalidInputError("audit detail keys must be strings")
        ok = value is None or isinstance(value, (str, bool, int))
        if isinstance(value, (list, tuple)):
            ok = all(isinstance(v, str) for v in value)
            value = list(value)
        if not ok:
            raise InvalidInputError(
                f"audit detail {name!r} must be a string, integer, bool, None or list of strings, "
                f"got {type(value).__name__}"
            )
        out[name] = value
    return out


def make_entry(
    prev: AuditHead | None,
    *,
    time: str,
    event: AuditEvent | str,
    subject: str | None = None,
    purpose: str | None = None,
    outcome: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """The entry that follows ``prev`` (None: the first entry)."""
    seq = 1 if prev is None else prev.seq + 1
    prev_hash = GENESIS if prev is None else prev.hash
    name = event.value if isinstance(event, AuditEvent) else str(event)
    checked = check_detail(detail)
    body = {
        "seq": seq,
        "time": time,
        "event": name,
        "subject": subject,
        "purpose": purpose,
        "outcome": outcome,
        "detail": checked,
        "prev_hash": prev_hash,
    }
    return AuditEntry(
        seq=seq,
        time=time,
        event=name,
        subject=subject,
        purpose=purpose,
        outcome=outcome,
        detail=checked,
        prev_hash=prev_hash,
        hash=_digest(body),
    )


def verify_chain(entries: Iterable[AuditEntry], head: AuditHead | None = None, key: bytes | None = None) -> AuditReport:
    """Check the chain in the given order; with ``head`` and ``key``, also its keyed head.

    Reports the first problem found, by sequence number.
    """
    rows = list(entries)
    checked = head is not None and key is not None
    by_hash = {row.hash: i for i, row in enumerate(rows)}
    seqs = {row.seq for row in rows}

    def bad(seq: int, problem: str, message: str) -> AuditReport:
        return AuditReport(False, len(rows), seq, problem, f"audit entry {seq}: {message}", checked)

    prev_hash = GENESIS
    for i, row in enumerate(rows):
        expected = i + 1
        # Every earlier position held exactly 1..expected-1, so a smaller number
        # is a duplicate and a larger one skips entries that are gone or later.
        if row.seq != expected:
            if row.seq < expected:
                return bad(row.seq, "inserted", "occurs twice (an entry was inserted)")
            if expected in seqs:
                return bad(expected, "reordered", f"appears after entry {row.seq}")
            missing = f"{expected}" if row.seq == expected + 1 else f"{expected}..{row.seq - 1}"
            return bad(expected, "deleted", f"missing (entry {missing} deleted)")
        if row.computed_hash() != row.hash:
            return _moved_or_edited(row, i, by_hash, bad)
        if row.prev_hash != prev_hash:
            before = rows[i - 1].seq if i else row.seq
            link = by_hash.get(row.prev_hash)
            if link is not None and link > i:
                return bad(row.seq, "reordered", f"follows entry {rows[link].seq}, which comes later")
            if link is not None:
                return bad(before, "inserted", f"is not part of the chain (entry {row.seq} follows {rows[link].seq})")
            return bad(before, "edited", f"was changed after entry {row.seq} was written (or replaced)")
        prev_hash = row.hash
    if checked:
        assert head is not None and key is not None
        last_seq = rows[-1].seq if rows else 0
        if not head.valid(key):
            return bad(
                max(head.seq, 1),
                "head",
                "the keyed head does not verify: the log was rewritten or truncated, or its head forged",
            )
        if head.seq > last_seq:
            return bad(last_seq + 1, "deleted", f"missing (entries {last_seq + 1}..{head.seq} deleted from the end)")
        if head.seq < last_seq:
            return bad(head.seq + 1, "inserted", "was appended without the key (beyond the signed head)")
        if rows and head.hash != rows[-1].hash:
            return bad(last_seq, "edited", "differs from the signed head (edited and re-hashed)")
    note = "" if checked else " (unkeyed: a rewrite of the whole chain would not be detected)"
    return AuditReport(True, len(rows), None, None, f"{len(rows)} audit entries verified{note}", checked)


def _moved_or_edited(row: AuditEntry, i: int, by_hash: dict[str, int], bad: _Bad) -> AuditReport:
    # An entry whose hash fits only another number was moved: renumbered after a
    # deletion or insertion, or swapped with a neighbour.
    for true_seq in (row.seq + 1, row.seq - 1, row.seq + 2, row.seq - 2):
        if true_seq < 1 or row.computed_hash(true_seq) != row.hash:
            continue
        link = by_hash.get(row.prev_hash)
        if link is not None and link > i:
            return bad(row.seq, "reordered", f"holds entry {true_seq}, moved out of order")
        if true_seq > row.seq:
            return bad(row.seq, "deleted", f"holds entry {true_seq}: entries were deleted and the rest renumbered")
        return bad(true_seq, "inserted", "an entry was inserted here and later ones renumbered")
    return bad(row.seq, "edited", "its content does not match its hash")


def export_jsonl(entries: Iterable[AuditEntry], target: PathOrFile) -> int:
    """Write one canonical JSON object per line; returns the number written."""
    if isinstance(target, (str, os.PathLike)):
        with open(target, "w", encoding="utf-8", newline="\n") as f:
            return export_jsonl(entries, f)
    n = 0
    for entry in entries:
        target.write(entry.to_json() + "\n")
        n += 1
    target.flush()
    return n


def read_jsonl(source: PathOrFile) -> list[AuditEntry]:
    """Entries from :func:`export_jsonl` output, in file order (verify them with :func:`verify_chain`)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8") as f:
            return read_jsonl(f)
    out: list[AuditEntry] = []
    for number, line in enumerate(source, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise InvalidInputError(f"line {number} is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidInputError(f"line {number} is not an audit entry")
        try:
            out.append(AuditEntry.from_dict(data))
        except InvalidInputError as exc:
            raise InvalidInputError(f"line {number}: {exc}") from None
    return out


def dumps_jsonl(entries: Iterable[AuditEntry]) -> str:
    """:func:`export_jsonl` into a string."""
    buffer = io.StringIO()
    export_jsonl(entries, buffer)
    return buffer.getvalue()


def pseudonym(key: bytes, subject: str) -> str:
    """A stable keyed pseudonym (32 hex digits) standing for ``subject`` in the log."""
    return hmac.new(key, b"fpmatch.audit-subject.v1\n" + subject.encode("utf-8"), "sha256").hexdigest()[:32]
