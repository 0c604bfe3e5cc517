"""Enrolment: capture-edge records of consenting subjects, one transaction per batch."""

from __future__ import annotations

from typing import Sequence

from .._validate import as_subject_list
from ..audit import AuditEvent
from ..consent import active_purposes, format_time
from ..edge import EnrolmentRecord, check_message
from ..errors import ConsentRequiredError, IdConflictError, InvalidInputError
from .attested import AttestedOps


class EnrolmentOps(AttestedOps):
    def enrol(self, subject: str, record: EnrolmentRecord) -> None:
        """Store one subject's protected template (a record from :meth:`CaptureEdge.enrolment`).

        Refused (ConsentRequiredError) without an active consent for at least one purpose.
        """
        self.enrol_many([subject], [record])

    def enrol_many(self, subjects: Sequence[str], records: Sequence[EnrolmentRecord]) -> None:
        """Enrol a batch in one transaction: all or nothing.

        Consent is checked per subject; if any subject lacks an active consent or
        is already enrolled, nobody in the batch is enrolled.
        """
        if isinstance(subjects, str):
            raise InvalidInputError("enrol_many takes a sequence of subjects; use enrol() for one")
        records = list(records)
        names = as_subject_list(list(subjects), len(records))
        if not names:
            return
        for record in records:
            check_message(record, EnrolmentRecord, self.profile)
        self._check_signed_records(names, records)
        with self._rw.write():
            now = self._now()
            time = format_time(now)
            covered = {name: active_purposes(self._consents.get(name, ()), now) for name in names}
            refused = [name for name in names if not covered[name]]
            if refused:
                with self._store.transaction() as tx:
                    for name in refused:
                        tx.audit(time, AuditEvent.ENROL_REFUSED, subject=self.pseudonym(name), outcome="no_active_consent")
                raise ConsentRequiredError(
                    f"no active consent for {', '.join(map(repr, refused[:5]))}; record one before enrolment"
                    + ("" if len(names) == 1 else " (nobody in this batch was enrolled)")
                )
            taken = [name for name in names if name in self._gallery]
            if taken:
                raise IdConflictError(f"already enrolled: {', '.join(taken[:5])}")
            staged = self._gallery.stage_add(names, records)
            with self._store.transaction() as tx:
                sealed = staged.sealed or [None] * len(names)
                ids = [
                    tx.insert_subject(name, code, time, slot, part)
                    for name, code, slot, part in zip(names, staged.codes, staged.slots, sealed)
                ]
                for id_, record in zip(ids, records):
                    if record.attestation is not None:
                        tx.put_attested(id_, record.attestation)
                for row, stored in staged.rows.items():
                    tx.put_row(row, stored)
                for id_, part in staged.resealed.items():
                    tx.reseal(id_, part)
                for name_, value in staged.settings.items():
                    tx.set_meta(name_, value)
                for name in names:
                    tx.audit(
                        time,
                        AuditEvent.ENROL,
                        subject=self.pseudonym(name),
                        outcome="enrolled",
                        detail={"purposes": sorted(covered[name])},
                    )
            staged.apply(ids)
