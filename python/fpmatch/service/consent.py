"""Consent: separate, purpose-bound, time-limited records; nothing is enrolled or matched without one."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable, Sequence

from ..audit import AuditEvent
from ..consent import ConsentRecord, as_utc, format_time
from ..errors import BundledConsentError, InvalidConsentError
from .state import ServiceState


class ConsentOps(ServiceState):
    def consents(self, subject: str) -> tuple[ConsentRecord, ...]:
        with self._rw.read():
            return self._consents.get(subject, ())

    def grant_consent(
        self,
        subject: str,
        purposes: Iterable[str],
        *,
        notice_version: str,
        evidence_ref: str,
        method: str,
        separate: bool,
        expires_at: datetime | None = None,
        retention: timedelta | None = None,
        granted_at: datetime | None = None,
    ) -> ConsentRecord:
        """Record a separate consent. Its term is ``expires_at``, or ``retention`` after the grant."""
        now = self._now()
        granted = now if granted_at is None else as_utc(granted_at, "granted_at")
        if isinstance(purposes, str):
            raise InvalidConsentError("purposes must be a collection of names, not one string")
        if retention is not None and expires_at is None:
            expires = granted + retention
        elif expires_at is not None and retention is None:
            expires = expires_at
        else:
            raise InvalidConsentError("give exactly one of expires_at and retention")
        try:
            record = ConsentRecord(
                subject=subject,
                purposes=frozenset(purposes),
                granted_at=granted,
                expires_at=expires,
                notice_version=notice_version,
                evidence_ref=evidence_ref,
                method=method,
                separate=separate,
            )
        except BundledConsentError:
            if isinstance(subject, str) and subject:
                self._store.audit(
                    format_time(now), AuditEvent.CONSENT_REFUSED, subject=self.pseudonym(subject), outcome="bundled"
                )
            raise
        self._record_consents([record], now)
        return record

    def grant_consents(self, records: Sequence[ConsentRecord]) -> None:
        """Record a batch of consents (made as :class:`ConsentRecord`) in one transaction: all or none.

        For migrating existing, documented consents at scale; each record is
        checked as :meth:`grant_consent` checks one (separate, named purposes,
        expiry after the grant, not yet withdrawn).
        """
        records = list(records)
        for record in records:
            if not isinstance(record, ConsentRecord):
                raise InvalidConsentError(f"expected ConsentRecord objects, got {type(record).__name__}")
            if record.withdrawn_at is not None:
                raise InvalidConsentError(f"consent {record.consent_id} is already withdrawn")
        if len({r.consent_id for r in records}) != len(records):
            raise InvalidConsentError("consent ids in one batch must be distinct")
        if records:
            self._record_consents(records, self._now())

    def _record_consents(self, records: list[ConsentRecord], now: datetime) -> None:
        with self._rw.write():
            with self._store.transaction() as tx:
                for record in records:
                    tx.put_consent(record)
                    tx.audit(
                        format_time(now),
                        AuditEvent.CONSENT_GRANTED,
                        subject=self.pseudonym(record.subject),
                        outcome="granted",
                        detail={
                            "consent_id": record.consent_id,
                            "purposes": sorted(record.purposes),
                            "expires_at": format_time(record.expires_at),
                            "notice_version": record.notice_version,
                            "method": record.method,
                        },
                    )
            for record in records:
                self._consents[record.subject] = self._consents.get(record.subject, ()) + (record,)
