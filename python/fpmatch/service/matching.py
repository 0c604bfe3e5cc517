"""Matching: 1:1 and 1:N for a named purpose over consenting subjects, and the alternative path.

Probes arrive as capture-edge messages, are compared and dropped; the audit
line holds the outcome, never a score. Thresholds are calibrated for a target
FMR: at the capture edge from labelled templates (:meth:`CaptureEdge.calibration`,
exact, and the only way for encrypted schemes on narrow-cone models), or from
the stored codes alone.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from datetime import datetime
from typing import Iterator

import numpy as np

from .._validate import as_subject_list
from ..audit import AuditEvent
from ..consent import check_purpose, format_time
from ..edge import Calibration, ProbeMessage, check_message
from ..errors import FpmatchError, InvalidInputError, KeyMismatchError, TooManyAttemptsError
from ..gallery import Match
from ..thresholds import check_fmr, threshold_at_fmr
from .attested import AttestedOps
from .state import VerificationOutcome

#: The most candidates one identification may return.
MAX_K = 100


class MatchingOps(AttestedOps):
    @property
    def threshold(self) -> float | None:
        """The calibrated decision threshold, or None before calibration."""
        return self._threshold

    def verify(self, subject: str, probe: ProbeMessage, purpose: str) -> VerificationOutcome:
        """1:1 for ``purpose`` with a probe from :meth:`CaptureEdge.probe`."""
        check_purpose(purpose)
        as_subject_list(subject, 1)
        check_message(probe, ProbeMessage, self.profile)
        while True:
            with self._rw.read():
                now = self._now()
                reason = self._ineligible(subject, purpose, now)
                threshold = self._threshold
                if reason is not None or threshold is not None:  # no threshold needed to say "use the alternative"
                    line = {"subject": self.pseudonym(subject), "purpose": purpose}
                    if reason is None and not self._attempts.reserve(line["subject"], now):
                        reason = "face_attempts"  # asks the key holder nothing: no oracle for a locked subject
                    if reason is not None:
                        outcome = VerificationOutcome.USE_ALTERNATIVE
                    else:
                        verified: bool | None = None
                        try:
                            with self._audited_failure(now, AuditEvent.VERIFY, line):
                                if self._attested():
                                    verified = self._decide_attested(subject, probe, purpose, threshold, line["subject"])  # type: ignore[arg-type]
                                else:
                                    verified = self._gallery.decide(subject, probe, threshold, label=line["subject"])  # type: ignore[arg-type]
                        finally:
                            self._attempts.settle(line["subject"], now, verified)
                        outcome = VerificationOutcome.MATCH if verified else VerificationOutcome.NO_MATCH
                    self._store.audit(
                        format_time(now),
                        AuditEvent.VERIFY,
                        **line,
                        outcome=outcome.value,
                        detail={} if reason is None else {"reason": reason},
                    )
                    return outcome
            self._ensure_threshold()

    def identify(self, probe: ProbeMessage, purpose: str, k: int = 5) -> list[Match]:
        """1:N for ``purpose``: up to ``k`` matching subjects whose consent covers it, best first.

        Subjects whose consent does not cover the purpose are passed over before
        any comparison is decided, so they never appear and never hide an
        eligible match. Empty: nobody matched.
        """
        check_purpose(purpose)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InvalidInputError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
        check_message(probe, ProbeMessage, self.profile)
        threshold = self._ensure_threshold() if len(self._gallery) else None
        with self._rw.read():
            now = self._now()
            found: list[str] = []
            if threshold is not None and len(self._gallery):
                with self._audited_failure(now, AuditEvent.IDENTIFY, {"purpose": purpose}):
                    eligible = lambda subject: self._ineligible(subject, purpose, now) is None  # noqa: E731
                    if self._attested():
                        found = self._search_attested(probe, purpose, k, threshold, eligible)
                    else:
                        found = self._gallery.search(probe, k, threshold, eligible)
            result = [Match(subject, rank) for rank, subject in enumerate(found, start=1)]
            self._store.audit(
                format_time(now),
                AuditEvent.IDENTIFY,
                purpose=purpose,
                outcome="match" if result else "no_match",
                detail={"k": k, "matched": [self.pseudonym(m.subject) for m in result]},
            )
        return result

    @contextmanager
    def _audited_failure(self, now: datetime, event: AuditEvent, line: dict[str, str]) -> Iterator[None]:
        """A decision that could not be made (key holder down or refusing, damaged ciphertexts) is
        audited before its error reaches the caller: the request is accounted for, never a MATCH."""
        try:
            yield
        except FpmatchError as exc:
            self._store.audit(format_time(now), event, **line, outcome="error", detail={"error": type(exc).__name__})
            raise

    def calibrate(
        self,
        target_fmr: float | None = None,
        calibration: Calibration | None = None,
        *,
        max_pairs: int = 2_000_000,
    ) -> float:
        """Set and persist the threshold for a target FMR; returns it.

        With ``calibration`` (from :meth:`CaptureEdge.calibration`) its threshold
        is taken as it is: computed at the edge from labelled templates, exact,
        in the units the service decides in. Without it, impostor pairs of
        enrolled subjects' codes estimate it (errs high: measured FMR at or below
        the target); schemes without usable codes then raise NotCalibratedError.
        """
        with self._rw.write():
            return self._calibrate(target_fmr, calibration, max_pairs)

    def _calibrate(self, target_fmr: float | None, calibration: Calibration | None, max_pairs: int) -> float:
        if calibration is not None:
            if not isinstance(calibration, Calibration):
                raise InvalidInputError(f"calibration must come from CaptureEdge.calibration, got {calibration!r}")
            if calibration.profile_id != self.profile.profile_id:
                raise KeyMismatchError("this calibration was made by a capture edge of another profile")
            if target_fmr is not None and target_fmr != calibration.target_fmr:
                raise InvalidInputError(f"the calibration is for FMR {calibration.target_fmr:g}, not {target_fmr:g}")
            fmr, threshold = calibration.target_fmr, calibration.threshold
        else:
            fmr = self.target_fmr if target_fmr is None else target_fmr
            check_fmr(fmr)
            scores = self._gallery.impostor_scores(max(math.ceil(10 / fmr), max_pairs), np.random.default_rng(0))
            threshold = threshold_at_fmr(scores, fmr)
        with self._store.transaction() as tx:
            tx.set_meta("threshold", threshold)
            tx.set_meta("target_fmr", fmr)
            tx.audit(
                format_time(self._now()),
                AuditEvent.CALIBRATE,
                outcome="calibrated",
                detail={"target_fmr": repr(fmr), "labelled": calibration is not None},
            )
        self._threshold, self.target_fmr = threshold, fmr  # memory follows the database
        return threshold

    def _ensure_threshold(self) -> float:
        # Several requests may find no threshold at once; one calibrates, the rest reuse it.
        if self._threshold is None:
            with self._rw.write():
                if self._threshold is None:
                    self._calibrate(None, None, 2_000_000)
        assert self._threshold is not None
        return self._threshold

    # -- the alternative path ----------------------------------------------------

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
        if ok:
            self._attempts.clear(name)
        self._store.audit(
            format_time(self._now()),
            AuditEvent.ALTERNATIVE_VERIFY,
            subject=name,
            purpose=purpose,
            outcome=outcome.value,
            detail=detail,
        )
        return outcome
