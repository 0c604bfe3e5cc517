"""Failed face verifications per subject: the outside attacker's budget.

Someone at a gate who claims to be an enrolled subject sees one decision per
probe, at the calibrated threshold. Each NO_MATCH is a try spent: after
``limit`` of them within ``window`` (a day by default) the subject is matched
by face no more until the window has passed or the subject passes the
alternative method (proof only the person holds); meanwhile verification
answers ``USE_ALTERNATIVE`` without asking the key holder anything, so a locked
subject offers no oracle. A face MATCH does not clear the count: an attacker
could otherwise spend ``limit - 1`` tries between any two of the subject's own
visits.

The counts are rebuilt at open from the audit log (its verify and
alternative lines of the last window), so a restart gives nobody new tries.
A try in flight counts as spent until its decision is known, so concurrent
requests cannot overrun the limit; one that ends in an error is given back.
"""

from __future__ import annotations

import threading
from collections import deque
from datetime import datetime, timedelta
from typing import Iterable

from ..audit import AuditEntry, AuditEvent
from ..consent import parse_time
from ..errors import InvalidInputError

#: Default failed face verifications per subject within the window.
DEFAULT_FACE_FAILURES = 5
#: How long a failed face verification counts against its subject.
FACE_FAILURE_WINDOW = timedelta(days=1)


class FaceAttempts:
    """Per-subject failed face verifications in a sliding window (``limit`` None: unlimited)."""

    def __init__(self, limit: int | None, window: timedelta = FACE_FAILURE_WINDOW) -> None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise InvalidInputError(f"max_face_failures must be a positive integer or None, got {limit!r}")
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[datetime]] = {}  # pseudonym -> times of failures, oldest first
        self._pending: dict[str, int] = {}
        self._lock = threading.Lock()

    def replay(self, entries: Iterable[AuditEntry]) -> None:
        """Rebuild the counts from audit lines in log order (those of the last window suffice)."""
        for entry in entries:
            if entry.subject is None:
                continue
            if entry.event == AuditEvent.VERIFY.value and entry.outcome == "no_match":
                self._failures.setdefault(entry.subject, deque()).append(parse_time(entry.time))
            elif entry.event == AuditEvent.ALTERNATIVE_VERIFY.value and entry.outcome == "match":
                self._failures.pop(entry.subject, None)

    def reserve(self, subject: str, now: datetime) -> bool:
        """Take one try for ``subject``: False when its tries are spent (do not decide then)."""
        if self.limit is None:
            return True
        with self._lock:
            spent = self._recent(subject, now) + self._pending.get(subject, 0)
            if spent >= self.limit:
                return False
            self._pending[subject] = self._pending.get(subject, 0) + 1
            return True

    def settle(self, subject: str, now: datetime, matched: bool | None) -> None:
        """The reserved try ended: matched (True), failed (False) or no decision (None)."""
        if self.limit is None:
            return
        with self._lock:
            left = self._pending.get(subject, 0) - 1
            if left > 0:
                self._pending[subject] = left
            else:
                self._pending.pop(subject, None)
            if matched is False:
                self._failures.setdefault(subject, deque()).append(now)

    def clear(self, subject: str) -> None:
        """The subject proved themself another way (or was erased): their failures no longer count."""
        with self._lock:
            self._failures.pop(subject, None)

    def _recent(self, subject: str, now: datetime) -> int:
        times = self._failures.get(subject)
        if not times:
            return 0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[subject]
        return len(times)
