"""Accountability: what the service holds about a subject, the audit chain, and integrity checks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from .._validate import as_subject_list
from ..audit import AuditEntry, AuditEvent, AuditHead, AuditReport, export_jsonl, verify_chain
from ..consent import ConsentRecord, active_purposes, format_time
from .state import ServiceState


@dataclass(frozen=True)
class SubjectReport:
    """What the service holds about one subject: consents and audit events, never template bytes."""

    subject: str
    pseudonym: str  # how the audit log names the subject
    generated_at: datetime
    enrolled: bool
    enrolled_at: str | None
    consents: tuple[ConsentRecord, ...]
    events: tuple[AuditEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "pseudonym": self.pseudonym,
            "generated_at": format_time(self.generated_at),
            "enrolled": self.enrolled,
            "enrolled_at": self.enrolled_at,
            "consents": [{**c.to_dict(), "status": c.status(self.generated_at)} for c in self.consents],
            "events": [e.to_dict() for e in self.events],
        }


@dataclass(frozen=True)
class IntegrityReport:
    """Whether database, gallery and audit chain agree; ``problems`` says where they do not."""

    ok: bool
    problems: tuple[str, ...]
    audit: AuditReport


class AccountabilityOps(ServiceState):
    def subject_report(self, subject: str) -> SubjectReport:
        """The subject's consents and audit events (the request itself included); no template bytes."""
        as_subject_list(subject, 1)
        name = self.pseudonym(subject)
        with self._rw.read():
            now = self._now()
            consents = self._consents.get(subject, ())
            enrolled_at = self._store.enrolled_at(subject)
            self._store.audit(format_time(now), AuditEvent.SUBJECT_REPORT, subject=name, outcome="provided")
            events = tuple(self._store.audit_entries(name))
        return SubjectReport(subject, name, now, enrolled_at is not None, enrolled_at, consents, events)

    def audit_verify(self) -> AuditReport:
        """Verify the whole audit chain and its keyed head."""
        return verify_chain(self._store.audit_entries(), self._store.audit_head(), self._store.audit_key)

    def audit_head(self) -> AuditHead | None:
        """The signed head; keep copies outside the store to detect a later rollback."""
        return self._store.audit_head()

    def export_audit(self, target: str | os.PathLike[str] | IO[str]) -> int:
        """Write the audit log as JSON lines; returns the number of entries."""
        return export_jsonl(self._store.audit_entries(), target)

    def check_integrity(self) -> IntegrityReport:
        """Authenticate every row and setting of the database, compare database and gallery
        subject by subject, code by code, ciphertext by ciphertext, and verify the audit chain."""
        problems: list[str] = []
        with self._rw.read():
            now = self._now()
            damage = self._store.verify()
            if damage:  # nothing in a damaged database can be compared with the gallery
                audit = self.audit_verify()
                return IntegrityReport(False, tuple(damage + ([] if audit.ok else [audit.message])), audit)
            stored = {t.subject: t for t in self._store.templates()}
            in_memory = {s: self._gallery.id_of(s) for s in self._gallery.subjects()}
            if {s: t.id for s, t in stored.items()} != in_memory:
                extra = sorted(set(in_memory) - set(stored))[:5]
                missing = sorted(set(stored) - set(in_memory))[:5]
                problems.append(f"subjects differ: only in the gallery {extra}, only in the database {missing}")
            problems += self._gallery.problems(stored, self._store.rows())
            lapsed = [s for s in stored if not active_purposes(self._consents.get(s, ()), now)]
            if lapsed:
                problems.append(f"enrolled without an active consent (run expire()): {lapsed[:5]}")
        audit = self.audit_verify()
        if not audit.ok:
            problems.append(audit.message)
        return IntegrityReport(not problems, tuple(problems), audit)
