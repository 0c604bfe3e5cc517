"""Consent records: who agreed to biometric matching, for which purposes, until when.

A record is the evidence a service keeps that a subject gave *separate* consent
(not bundled into general terms) for named purposes such as ``"payment"`` or
``"entry"``, under a given notice version, with an expiry that implements the
published retention schedule. A subject is matched for a purpose only while a
record covering that purpose is active: granted, not yet expired, not withdrawn.

Times are timezone-aware and kept in UTC. Where "now" comes from is a
:data:`Clock`, so retention can be exercised in tests without waiting.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

from .errors import BundledConsentError, InvalidConsentError, InvalidInputError

#: Returns the current time as an aware datetime.
Clock = Callable[[], datetime]

_PURPOSE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


def system_clock() -> datetime:
    """The current time in UTC."""
    return datetime.now(timezone.utc)


def as_utc(value: object, what: str) -> datetime:
    """``value`` as a UTC datetime; naive datetimes are refused, since their zone is a guess."""
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(f"{what} must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return value.astimezone(timezone.utc)


def format_time(value: datetime) -> str:
    """Fixed-width ISO 8601 in UTC, so stored times also sort as text."""
    return as_utc(value, "time").isoformat(timespec="microseconds")


def parse_time(text: str) -> datetime:
    """Inverse of :func:`format_time`."""
    return as_utc(datetime.fromisoformat(text), "time")


def check_purpose(purpose: object) -> str:
    """A purpose name: lower-case letters, digits, ``_ . -``, starting with a letter, at most 64."""
    if not isinstance(purpose, str) or not _PURPOSE.fullmatch(purpose):
        raise InvalidInputError(
            f"a purpose must be a name like 'payment' or 'entry' (lower-case, [a-z0-9_.-], "
            f"at most 64 characters), got {purpose!r}"
        )
    return purpose


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidConsentError(f"{what} must be a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True)
class ConsentRecord:
    """One subject's separate consent to biometric matching for named purposes.

    ``notice_version`` names the privacy notice or policy shown; ``evidence_ref``
    points at the proof kept elsewhere (a signed form id, a consent-receipt id);
    ``method`` says how it was given (``"signed-form"``, ``"in-app"``, ...).
    ``separate`` must be True: consent bundled with other terms is refused.
    """

    subject: str
    purposes: frozenset[str]
    granted_at: datetime
    expires_at: datetime
    notice_version: str
    evidence_ref: str
    method: str
    separate: bool
    consent_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    withdrawn_at: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.subject, str) or not self.subject:
            raise InvalidConsentError(f"subject must be a non-empty string, got {self.subject!r}")
        if isinstance(self.purposes, str):
            raise InvalidConsentError("purposes must be a collection of names, not one string")
        try:
            purposes = frozenset(check_purpose(p) for p in self.purposes)
        except InvalidInputError as exc:
            raise InvalidConsentError(str(exc)) from None
        except TypeError:
            raise InvalidConsentError("purposes must be a collection of names") from None
        if not purposes:
            raise InvalidConsentError("a consent must name at least one purpose")
        object.__setattr__(self, "purposes", purposes)
        for name in ("granted_at", "expires_at", "withdrawn_at"):
            value = getattr(self, name)
            if value is None and name == "withdrawn_at":
                continue
            try:
                object.__setattr__(self, name, as_utc(value, name))
            except InvalidInputError as exc:
                raise InvalidConsentError(str(exc)) from None
        if self.expires_at <= self.granted_at:
            raise InvalidConsentError("expires_at must be later than granted_at")
        _text(self.notice_version, "notice_version")
        _text(self.evidence_ref, "evidence_ref")
        _text(self.method, "method")
        _text(self.consent_id, "consent_id")
        if not isinstance(self.separate, bool):
            raise InvalidConsentError(f"separate must be a bool, got {self.separate!r}")
        if not self.separate:
            raise BundledConsentError(
                "biometric consent must be given separately, not bundled with other terms "
                "(PIPL art. 29, GDPR art. 9, BIPA written release)"
            )

    def active(self, now: datetime) -> bool:
        """Granted at or before ``now``, not expired, not withdrawn."""
        now = as_utc(now, "now")
        if self.withdrawn_at is not None and self.withdrawn_at <= now:
            return False
        return self.granted_at <= now < self.expires_at

    def covers(self, purpose: str, now: datetime) -> bool:
        """Whether this record authorises matching for ``purpose`` at ``now``."""
        if purpose not in self.purposes:
            return False
        if not isinstance(now, datetime) or now.tzinfo is not timezone.utc:  # UTC already: no conversion
            now = as_utc(now, "now")
        if self.withdrawn_at is not None and self.withdrawn_at <= now:
            return False
        return self.granted_at <= now < self.expires_at

    def status(self, now: datetime) -> str:
        """``"active"``, ``"pending"`` (granted in the future), ``"expired"`` or ``"withdrawn"``."""
        now = as_utc(now, "now")
        if self.withdrawn_at is not None and self.withdrawn_at <= now:
            return "withdrawn"
        if now < self.granted_at:
            return "pending"
        return "active" if now < self.expires_at else "expired"

    def withdrawn(self, at: datetime) -> "ConsentRecord":
        """A copy marked withdrawn at ``at`` (an earlier withdrawal is kept)."""
        if self.withdrawn_at is not None:
            return self
        return replace(self, withdrawn_at=as_utc(at, "withdrawn_at"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, purposes sorted."""
        return {
            "consent_id": self.consent_id,
            "subject": self.subject,
            "purposes": sorted(self.purposes),
            "granted_at": format_time(self.granted_at),
            "expires_at": format_time(self.expires_at),
            "notice_version": self.notice_version,
            "evidence_ref": self.evidence_ref,
            "method": self.method,
            "separate": self.separate,
            "withdrawn_at": None if self.withdrawn_at is None else format_time(self.withdrawn_at),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ConsentRecord":
        """Inverse of :meth:`to_dict`."""
        try:
            withdrawn = data.get("withdrawn_at")
            return cls(
                subject=data["subject"],
                purposes=frozenset(data["purposes"]),
                granted_at=parse_time(data["granted_at"]),
                expires_at=parse_time(data["expires_at"]),
                notice_version=data["notice_version"],
                evidence_ref=data["evidence_ref"],
                method=data["method"],
                separate=data["separate"],
                consent_id=data["consent_id"],
                withdrawn_at=None if withdrawn is None else parse_time(withdrawn),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InvalidConsentError):
                raise
            raise InvalidConsentError(f"not a consent record: {exc}") from exc


def active_purposes(records: Iterable[ConsentRecord], now: datetime) -> frozenset[str]:
    """Every purpose covered by an active record at ``now``."""
    covered: set[str] = set()
    for record in records:
        if record.active(now):
            covered |= record.purposes
    return frozenset(covered)
