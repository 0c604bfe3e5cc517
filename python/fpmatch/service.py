"""MatchingService: consent-bound enrolment and matching over a crash-safe store.

This is the API a business uses. Every match request names a purpose and a
subject is matched only for purposes covered by an active consent record; a
subject without one (or not enrolled) gets ``USE_ALTERNATIVE``, never a
rejection, and an alternative non-biometric verifier is always available.
Withdrawal and expiry erase the protected code from the database, the index and
the index cache at once. Probes are protected, compared and dropped; every
consent, enrolment, match request, withdrawal and purge is an audit entry
without biometric data or scores.

Thread safety: verify, identify and reports run concurrently; consent changes,
enrolment, withdrawal and purges run one at a time and wait for them.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import Enum
from types import TracebackType
from typing import IO, Any, Iterable, Iterator

import numpy as np

from ._validate import as_subject_list, as_template_rows
from .alternative import AlternativeVerifier, PinVerifier
from .audit import AuditEntry, AuditEvent, AuditHead, AuditReport, export_jsonl, pseudonym, verify_chain
from .consent import (
    Clock,
    ConsentRecord,
    active_purposes,
    as_utc,
    check_purpose,
    format_time,
    system_clock,
)
from .errors import (
    BundledConsentError,
    ConsentRequiredError,
    IdConflictError,
    InvalidConsentError,
    InvalidInputError,
    TooManyAttemptsError,
)
from .gallery import DEFAULT_TARGET_FMR, Candidate, Gallery
from .hashing import CancellableHash
from .index import FlatIndex, HNSWIndex
from .keys import HashKey
from .store import Store

ALTERNATIVE_DATABASE = "alternative.sqlite"


class VerificationOutcome(str, Enum):
    """Result of a 1:1 request. ``USE_ALTERNATIVE`` is not a rejection: route the
    subject to the non-biometric method (no consent for this purpose, or not enrolled)."""

    MATCH = "match"
    NO_MATCH = "no_match"
    USE_ALTERNATIVE = "use_alternative"


@dataclass(frozen=True)
class SubjectReport:
    """What the service holds about one subject: consents and audit events, never code bytes."""

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
    """Whether database, index and audit chain agree; ``problems`` says where they do not."""

    ok: bool
    problems: tuple[str, ...]
    audit: AuditReport


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers. Not reentrant."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class MatchingService:
    """Consent-bound face matching over one store directory. Use :meth:`open`."""

    def __init__(
        self,
        store: Store,
        gallery: Gallery,
        consents: dict[str, tuple[ConsentRecord, ...]],
        clock: Clock,
        alternative: AlternativeVerifier,
        owns_alternative: bool,
        cache_status: str,
    ) -> None:
        self._store = store
        self._gallery = gallery
        self._consents = consents
        self._clock = clock
        self._alternative = alternative
        self._owns_alternative = owns_alternative
        self._subject_key = store._key.subkey("audit-subject")
        self._rw = _ReadWriteLock()
        self.cache_status = cache_status  # how the index was obtained at open: "loaded" or why it was rebuilt

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        key: HashKey,
        *,
        dim: int | None = None,
        bits: int | None = None,
        offset: np.ndarray | None = None,
        index: str = "flat",
        target_fmr: float | None = None,
        clock: Clock | None = None,
        alternative: AlternativeVerifier | None = None,
        purge_on_open: bool = True,
    ) -> "MatchingService":
        """Open (or create: ``dim`` needed then) the store in ``directory``.

        The index comes from the cache when it matches the database, else it is
        rebuilt from the database. Subjects whose consent lapsed while the service
        was down are purged now unless ``purge_on_open`` is False. Without
        ``alternative``, a :class:`PinVerifier` keeps PINs in ``alternative.sqlite``
        in the directory, peppered with a key derived from ``key``.
        """
        if index not in ("flat", "hnsw"):
            raise InvalidInputError(f"index must be 'flat' or 'hnsw', got {index!r}")
        clock = system_clock if clock is None else clock
        store = Store.open(directory, key, dim=dim, bits=bits, offset=offset)
        try:
            settings = store.settings
            scheme = CancellableHash(
                key,
                settings.dim,
                settings.bits,
                settings.offset,
                offset_removal=settings.offset_removal,
                scheme=settings.scheme,
            )
            stored_fmr = store.meta("target_fmr")
            threshold = store.meta("threshold")
            if target_fmr is not None and target_fmr != stored_fmr:
                threshold = None  # calibrated for another target: recalibrate on first use
            fmr = target_fmr if target_fmr is not None else stored_fmr or DEFAULT_TARGET_FMR
            gallery, status = cls._load_gallery(store, scheme, index, fmr)
            gallery.threshold = threshold
            consents: dict[str, tuple[ConsentRecord, ...]] = {}
            for record in store.consents():
                consents[record.subject] = consents.get(record.subject, ()) + (record,)
            owns = alternative is None
            if alternative is None:
                alternative = PinVerifier(
                    store.directory / ALTERNATIVE_DATABASE, pepper=key.subkey("alternative-pin"), clock=clock
                )
        except BaseException:
            store.close()
            raise
        service = cls(store, gallery, consents, clock, alternative, owns, status)
        if purge_on_open:
            try:
                service.expire()
            except BaseException:
                service.close()
                raise
        return service

    @staticmethod
    def _load_gallery(store: Store, scheme: CancellableHash, kind: str, fmr: float) -> tuple[Gallery, str]:
        ids = store.subject_ids()
        cached, status = store.read_index_cache(ids, store.generation)
        wanted = FlatIndex if kind == "flat" else HNSWIndex
        if cached is not None and isinstance(cached, wanted):
            return Gallery.from_index(scheme, cached, ids, target_fmr=fmr), status
        if cached is not None:
            status = "mismatch"
        if status != "missing":
            store.drop_index_cache()  # unusable, and it may hold codes erased since it was written
        gallery = Gallery(scheme, kind, target_fmr=fmr)
        rows = store.subjects()
        if rows:
            codes = np.frombuffer(b"".join(r.code for r in rows), dtype=np.uint8).reshape(len(rows), -1)
            gallery.add_codes([r.subject for r in rows], codes, np.array([r.id for r in rows], dtype=np.int64))
        return gallery, status

    # -- context --------------------------------------------------------------

    def __enter__(self) -> "MatchingService":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Write the index cache, checkpoint the database and release the directory."""
        with self._rw.write():
            if self._store.closed:
                return
            try:
                self._write_cache()
            finally:
                self._store.close()
                if self._owns_alternative and isinstance(self._alternative, PinVerifier):
                    self._alternative.close()

    # -- introspection --------------------------------------------------------

    @property
    def store(self) -> Store:
        return self._store

    @property
    def gallery(self) -> Gallery:
        return self._gallery

    @property
    def alternative(self) -> AlternativeVerifier:
        return self._alternative

    @property
    def threshold(self) -> float | None:
        """The calibrated score threshold, or None before calibration."""
        return self._gallery.threshold

    def __len__(self) -> int:
        return len(self._gallery)

    def __contains__(self, subject: object) -> bool:
        return subject in self._gallery

    def enrolled(self) -> list[str]:
        with self._rw.read():
            return self._gallery.subjects()

    def consents(self, subject: str) -> tuple[ConsentRecord, ...]:
        with self._rw.read():
            return self._consents.get(subject, ())

    def pseudonym(self, subject: str) -> str:
        """How the audit log names ``subject``."""
        return pseudonym(self._subject_key, subject)

    # -- consent --------------------------------------------------------------

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
        with self._rw.write():
            with self._store.transaction() as tx:
                tx.put_consent(record)
                tx.audit(
                    format_time(now),
                    AuditEvent.CONSENT_GRANTED,
                    subject=self.pseudonym(subject),
                    outcome="granted",
                    detail={
                        "consent_id": record.consent_id,
                        "purposes": sorted(record.purposes),
                        "expires_at": format_time(record.expires_at),
                        "notice_version": record.notice_version,
                        "method": record.method,
                    },
                )
            self._consents[subject] = self._consents.get(subject, ()) + (record,)
        return record

    def withdraw(self, subject: str, consent_id: str | None = None) -> bool:
        """Withdraw one consent (or all of them). When no active consent is left the
        subject's code is erased from database, index and cache at once. Returns
        whether a code was erased."""
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
            if erase:
                self._store.drop_index_cache()
            name = self.pseudonym(subject)
            with self._store.transaction() as tx:
                for record in targets.values():
                    tx.put_consent(record)
                    tx.audit(
                        format_time(now),
                        AuditEvent.CONSENT_WITHDRAWN,
                        subject=name,
                        outcome="withdrawn",
                        detail={"consent_id": record.consent_id, "purposes": sorted(record.purposes)},
                    )
                if not targets:
                    tx.audit(format_time(now), AuditEvent.CONSENT_WITHDRAWN, subject=name, outcome="nothing_held")
                if erase:
                    tx.delete_subject(subject)
                    tx.audit(
                        format_time(now),
                        AuditEvent.PURGE,
                        subject=name,
                        outcome="erased",
                        detail={"reason": "withdrawn"},
                    )
            self._consents[subject] = remaining
            if erase:
                self._gallery.remove(subject)
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
            self._store.drop_index_cache()
            with self._store.transaction() as tx:
                for subject in doomed:
                    tx.delete_subject(subject)
                    records = self._consents.get(subject, ())
                    reason = "expired" if any(r.status(moment) == "expired" for r in records) else "no_active_consent"
                    tx.audit(
                        format_time(moment),
                        AuditEvent.PURGE,
                        subject=self.pseudonym(subject),
                        outcome="erased",
                        detail={"reason": reason},
                    )
            for subject in doomed:
                self._gallery.remove(subject)
        self._store.scrub()
        return doomed

    # -- enrolment ------------------------------------------------------------

    def enrol(self, subject: str, template: np.ndarray) -> None:
        """Protect and store one template. Refused (ConsentRequiredError) without an
        active consent for at least one purpose. The template itself is not kept."""
        as_subject_list(subject, 1)
        rows = as_template_rows(template, self._gallery.scheme.dim, "template")
        if len(rows) != 1:
            raise InvalidInputError("enrol takes one template")
        code = self._gallery.scheme.protect(rows)
        with self._rw.write():
            now = self._now()
            name = self.pseudonym(subject)
            covered = active_purposes(self._consents.get(subject, ()), now)
            if not covered:
                self._store.audit(format_time(now), AuditEvent.ENROL_REFUSED, subject=name, outcome="no_active_consent")
                raise ConsentRequiredError(f"subject {subject!r} has no active consent; record one before enrolment")
            if subject in self._gallery:
                raise IdConflictError(f"already enrolled: {subject}")
            with self._store.transaction() as tx:
                id_ = tx.insert_subject(subject, code.tobytes(), format_time(now))
                tx.audit(
                    format_time(now),
                    AuditEvent.ENROL,
                    subject=name,
                    outcome="enrolled",
                    detail={"purposes": sorted(covered)},
                )
            self._gallery.add_codes(subject, code, np.array([id_], dtype=np.int64))

    # -- matching -------------------------------------------------------------

    def verify(self, subject: str, probe: np.ndarray, purpose: str) -> VerificationOutcome:
        """1:1 for ``purpose``. The probe is not stored; the audit line holds no score."""
        check_purpose(purpose)
        as_subject_list(subject, 1)
        rows = as_template_rows(probe, self._gallery.scheme.dim, "probe")
        if len(rows) != 1:
            raise InvalidInputError("verify takes one probe")
        while True:
            with self._rw.read():
                now = self._now()
                reason = self._ineligible(subject, purpose, now)
                if reason is not None or self._gallery.threshold is not None:
                    if reason is not None:
                        outcome = VerificationOutcome.USE_ALTERNATIVE
                    elif self._gallery.verify(subject, rows[0]).verified:
                        outcome = VerificationOutcome.MATCH
                    else:
                        outcome = VerificationOutcome.NO_MATCH
                    self._store.audit(
                        format_time(now),
                        AuditEvent.VERIFY,
                        subject=self.pseudonym(subject),
                        purpose=purpose,
                        outcome=outcome.value,
                        detail={} if reason is None else {"reason": reason},
                    )
                    return outcome
            self._ensure_threshold()

    def identify(self, probe: np.ndarray, purpose: str, k: int = 5) -> list[Candidate]:
        """1:N for ``purpose``: up to ``k`` matching subjects whose consent covers it, best first.

        Searches deeper than ``k`` when nearer subjects are not eligible, so consent
        filtering never hides an eligible match. Empty: nobody matched.
        """
        check_purpose(purpose)
        if not isinstance(k, int) or k < 1:
            raise InvalidInputError("k must be a positive integer")
        rows = as_template_rows(probe, self._gallery.scheme.dim, "probe")
        if len(rows) != 1:
            raise InvalidInputError("identify takes one probe")
        if self._gallery.threshold is None and len(self._gallery):
            self._ensure_threshold()
        with self._rw.read():
            now = self._now()
            eligible: list[Candidate] = []
            total = len(self._gallery)
            depth = min(total, max(4 * k, 16))
            while depth:
                found = self._gallery.identify(rows, k=depth)
                eligible = [c for c in found if self._ineligible(c.subject, purpose, now) is None]
                if len(eligible) >= k or len(found) < depth or depth >= total:
                    break
                depth = min(total, depth * 4)
            result = [replace(c, rank=rank) for rank, c in enumerate(eligible[:k], start=1)]
            self._store.audit(
                format_time(now),
                AuditEvent.IDENTIFY,
                purpose=purpose,
                outcome="match" if result else "no_match",
                detail={"k": k, "matched": [self.pseudonym(c.subject) for c in result]},
            )
        return result

    def calibrate(
        self,
        target_fmr: float | None = None,
        templates: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        *,
        max_pairs: int = 2_000_000,
    ) -> float:
        """Set and persist the threshold for a target FMR (see :meth:`Gallery.calibrate`)."""
        with self._rw.write():
            return self._calibrate(target_fmr, templates, labels, max_pairs)

    def _calibrate(
        self, target_fmr: float | None, templates: np.ndarray | None, labels: np.ndarray | None, max_pairs: int
    ) -> float:
        before = (self._gallery.threshold, self._gallery.target_fmr)
        try:
            score = self._gallery.calibrate(target_fmr, templates, labels, max_pairs=max_pairs)
            with self._store.transaction() as tx:
                tx.set_meta("threshold", self._gallery.threshold)
                tx.set_meta("target_fmr", self._gallery.target_fmr)
                tx.audit(
                    format_time(self._now()),
                    AuditEvent.CALIBRATE,
                    outcome="calibrated",
                    detail={"target_fmr": repr(self._gallery.target_fmr), "labelled": templates is not None},
                )
        except BaseException:
            self._gallery.threshold, self._gallery.target_fmr = before  # memory follows the database
            raise
        return score

    def _ensure_threshold(self) -> None:
        # Several requests may find no threshold at once; one calibrates, the rest reuse it.
        with self._rw.write():
            if self._gallery.threshold is None:
                self._calibrate(None, None, None, 2_000_000)

    # -- alternative path -----------------------------------------------------

    def enrol_alternative(self, subject: str, secret: str) -> None:
        """Register the subject's non-biometric secret (no biometric consent needed)."""
        self._alternative.enrol_secret(subject, secret)
        self._store.audit(
            format_time(self._now()),
            AuditEvent.ALTERNATIVE_ENROL,
            subject=self.pseudonym(subject),
            outcome="enrolled",
            detail={"method": self._alternative.method},
        )

    def verify_alternative(self, subject: str, secret: str, purpose: str) -> VerificationOutcome:
        """Verify by the alternative method: MATCH or NO_MATCH (TooManyAttemptsError when locked)."""
        check_purpose(purpose)
        name = self.pseudonym(subject)
        detail = {"method": self._alternative.method}
        try:
            ok = self._alternative.verify(subject, secret)
        except TooManyAttemptsError:
            self._store.audit(
                format_time(self._now()),
                AuditEvent.ALTERNATIVE_VERIFY,
                subject=name,
                purpose=purpose,
                outcome="locked",
                detail=detail,
            )
            raise
        outcome = VerificationOutcome.MATCH if ok else VerificationOutcome.NO_MATCH
        self._store.audit(
            format_time(self._now()),
            AuditEvent.ALTERNATIVE_VERIFY,
            subject=name,
            purpose=purpose,
            outcome=outcome.value,
            detail=detail,
        )
        return outcome

    # -- accountability -------------------------------------------------------

    def subject_report(self, subject: str) -> SubjectReport:
        """The subject's consents and audit events (the request itself included); no code bytes."""
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
        """Compare database and index subject by subject, code by code, and verify the audit chain."""
        problems: list[str] = []
        with self._rw.read():
            now = self._now()
            rows = self._store.subjects()
            in_db = {r.subject: r.id for r in rows}
            in_memory = {s: self._gallery.id_of(s) for s in self._gallery.subjects()}
            index_ids = sorted(self._gallery.index.ids().tolist())
            if in_db != in_memory:
                extra = sorted(set(in_memory) - set(in_db))[:5]
                missing = sorted(set(in_db) - set(in_memory))[:5]
                problems.append(f"subjects differ: only in index {extra}, only in database {missing}")
            if index_ids != sorted(in_db.values()):
                problems.append("index ids differ from database ids")
            present = [r for r in rows if r.id in set(index_ids)]
            if present:
                stored = self._gallery.index.reconstruct(np.array([r.id for r in present], dtype=np.int64))
                bad = [r.subject for r, code in zip(present, stored) if code.tobytes() != r.code]
                if bad:
                    problems.append(f"index codes differ from database codes for {bad[:5]}")
            lapsed = [r.subject for r in rows if not active_purposes(self._consents.get(r.subject, ()), now)]
            if lapsed:
                problems.append(f"enrolled without an active consent (run expire()): {lapsed[:5]}")
        audit = self.audit_verify()
        if not audit.ok:
            problems.append(audit.message)
        return IntegrityReport(not problems, tuple(problems), audit)

    def save_index(self) -> None:
        """Write the index cache now (it is also written by close())."""
        with self._rw.read():
            self._write_cache()

    # -- internals ------------------------------------------------------------

    def _write_cache(self) -> None:
        self._store.write_index_cache(self._gallery.index, self._store.generation)

    def _now(self) -> datetime:
        return as_utc(self._clock(), "clock()")

    def _ineligible(self, subject: str, purpose: str, now: datetime) -> str | None:
        """Why ``subject`` cannot be matched for ``purpose`` now, or None if they can."""
        if not any(r.covers(purpose, now) for r in self._consents.get(subject, ())):
            return "no_consent"
        if subject not in self._gallery:
            return "not_enrolled"
        return None


__all__ = ["IntegrityReport", "MatchingService", "SubjectReport", "VerificationOutcome"]
