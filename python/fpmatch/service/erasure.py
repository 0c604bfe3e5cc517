"""Erasure: withdrawal and expiry remove a subject's protected template from store, gallery and cache at once."""

from __future__ import annotations

from datetime import datetime
from typing import Callable

from ..audit import AuditEvent
from ..consent import active_purposes, as_utc, format_time
from ..errors import InvalidInputError
from ..store import Transaction
from .state import ServiceState


class ErasureOps(ServiceState):
    def withdraw(self, subject: str, consent_id: str | None = None) -> bool:
        """Withdraw one consent (or all of them). When no active consent is left the
        subject's protected template is erased from database, gallery and cache at
        once. Returns whether a template was erased."""
        if not isinstance(subject, str) or not subject:
            raise InvalidInputError(f"subject must be a non-empty string, got {subject!r}")
        with self._rw.write():
            now = self._now()
            records = self._consents.get(subject, ())
            targets = {
                r.consent_id: r.withdrawn(now)
                for r in records
                if r.withdrawn_at is None and (consent_id is None or r.consent_id == consent_id)
            }
            if consent_id is not None and not targets:
                raise InvalidInputError(f"subject {subject!r} has no consent {consent_id!r} to withdraw")
            remaining = tuple(targets.get(r.consent_id, r) for r in records)
            erase = subject in self._gallery and (consent_id is None or not active_purposes(remaining, now))
            name = self.pseudonym(subject)

            def record(tx: Transaction) -> None:
                for withdrawn in targets.values():
                    tx.put_consent(withdrawn)
                    tx.audit(
                        format_time(now),
                        AuditEvent.CONSENT_WITHDRAWN,
                        subject=name,
                        outcome="withdrawn",
                        detail={"consent_id": withdrawn.consent_id, "purposes": sorted(withdrawn.purposes)},
                    )
                if not targets:
                    tx.audit(format_time(now), AuditEvent.CONSENT_WITHDRAWN, subject=name, outcome="nothing_held")

            self._erase([subject] if erase else [], now, {subject: "withdrawn"}, record)
            self._consents[subject] = remaining
        if erase:
            self._store.scrub()
        return erase

    def expire(self, now: datetime | None = None) -> list[str]:
        """Erase every enrolled subject left without an active consent (expired retention).

        ``now`` defaults to the service clock. Returns the erased subjects.
        """
        with self._rw.write():
            moment = self._now() if now is None else as_utc(now, "now")
            doomed = [s for s in self._gallery.subjects() if not active_purposes(self._consents.get(s, ()), moment)]
            if not doomed:
                return []
            reasons = {
                s: "expired" if any(r.status(moment) == "expired" for r in self._consents.get(s, ())) else "no_active_consent"
                for s in doomed
            }
            self._erase(doomed, moment, reasons)
        self._store.scrub()
        return doomed

    def _erase(
        self,
        subjects: list[str],
        now: datetime,
        reasons: dict[str, str],
        also: Callable[[Transaction], None] | None = None,
    ) -> None:
        """One transaction: ``also`` (consent changes) and the erasure of ``subjects``; then memory."""
        staged = self._gallery.stage_remove(subjects) if subjects else None
        if staged is not None:
            self._store.drop_index_cache()  # it may hold codes about to be erased
        with self._store.transaction() as tx:
            if also is not None:
                also(tx)
            if staged is not None:
                for subject in subjects:
                    tx.delete_subject(subject)
                    tx.audit(
                        format_time(now),
                        AuditEvent.PURGE,
                        subject=self.pseudonym(subject),
                        outcome="erased",
                        detail={"reason": reasons[subject]},
                    )
                for row, stored in staged.rows.items():
                    tx.put_row(row, stored)
                for name, value in staged.settings.items():
                    tx.set_meta(name, value)
                tx.must_vanish(staged.erased)
        if staged is not None:
            staged.apply([])
