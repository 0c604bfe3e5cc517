"""What every part of the matching service shares: store, gallery, consents, clock, lock."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from ..alternative import AlternativeVerifier
from ..audit import pseudonym
from ..consent import Clock, ConsentRecord, as_utc
from ..edge import EdgeProfile
from ..errors import StoreClosedError
from ..galleries import ProtectedGallery
from ..store import Store
from .attempts import FaceAttempts
from .locks import ReadWriteLock


class VerificationOutcome(str, Enum):
    """Result of a 1:1 request. ``USE_ALTERNATIVE`` is not a rejection: route the
    subject to the non-biometric method (no consent for this purpose, not enrolled, or the
    subject's failed face verifications of the last day reached the limit)."""

    MATCH = "match"
    NO_MATCH = "no_match"
    USE_ALTERNATIVE = "use_alternative"


class ServiceState:
    """The state the service's parts (consent, enrolment, matching, erasure, accountability) share."""

    def __init__(
        self,
        store: Store,
        gallery: ProtectedGallery,
        consents: dict[str, tuple[ConsentRecord, ...]],
        clock: Clock,
        alternative: AlternativeVerifier,
        owns_alternative: bool,
        cache_status: str,
        threshold: float | None,
        target_fmr: float,
        attempts: FaceAttempts | None = None,
    ) -> None:
        self._store = store
        self._gallery = gallery
        self._consents = consents
        self._clock = clock
        self._alternative = alternative
        self._owns_alternative = owns_alternative
        self._subject_key = store._key.subkey("audit-subject")
        self._rw = ReadWriteLock(self._ensure_open)
        self._threshold = threshold
        self.target_fmr = target_fmr
        self._attempts = FaceAttempts(None) if attempts is None else attempts
        self.cache_status = cache_status  # how the index was obtained at open: "loaded" or why it was rebuilt

    @property
    def profile(self) -> EdgeProfile:
        """The capture-edge profile this service takes messages of."""
        return self._gallery.profile

    @property
    def scheme(self) -> str:
        return self._gallery.profile.scheme

    def pseudonym(self, subject: str) -> str:
        """How the audit log names ``subject``."""
        return pseudonym(self._subject_key, subject)

    def _ensure_open(self) -> None:
        if self._store.closed:
            raise StoreClosedError(f"this service is closed (store {self._store.directory})")

    def _now(self) -> datetime:
        return as_utc(self._clock(), "clock()")

    def _ineligible(self, subject: str, purpose: str, now: datetime) -> str | None:
        """Why ``subject`` cannot be matched for ``purpose`` now, or None if they can."""
        for record in self._consents.get(subject, ()):  # a loop, not any(): this runs per candidate
            if record.covers(purpose, now):
                break
        else:
            return "no_consent"
        if subject not in self._gallery:
            return "not_enrolled"
        return None
