"""MatchingService: the blind, consent-bound matching service a business deploys.

It holds protected templates only: codes without the transform key and
ciphertexts without the CKKS secret key. It receives capture-edge messages
(:mod:`fpmatch.edge`), never a plain template or probe, and asks the key holder
for decisions on encrypted scores. Its own :class:`~fpmatch.ServiceKey`
authenticates its files and names subjects in the audit log; it inverts nothing.

Every match request names a purpose and a subject is matched only for purposes
covered by an active consent record; a subject without one (or not enrolled)
gets ``USE_ALTERNATIVE``, never a rejection. Withdrawal and expiry erase the
protected template from the database, the gallery and the index cache at once.
Every consent, enrolment, match request, withdrawal and purge is an audit
entry without biometric data or scores.

The class is put together from one part per concern: :mod:`.consent`,
:mod:`.enrolment`, :mod:`.matching`, :mod:`.erasure` and :mod:`.accountability`.

Thread safety: verify, identify and reports run concurrently; consent changes,
enrolment, withdrawal and purges run one at a time and wait for them.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

from ..alternative import AlternativeVerifier, PinVerifier
from ..consent import Clock, ConsentRecord, as_utc, format_time, system_clock
from ..edge import EdgeProfile
from ..errors import InvalidInputError, KeyMismatchError, StoreFormatError
from ..galleries import INDEX_KINDS, ProtectedGallery, open_gallery
from ..thresholds import DEFAULT_TARGET_FMR
from ..keys import HashKey, ServiceKey
from ..store import Store
from .attempts import DEFAULT_FACE_FAILURES, FaceAttempts
from .accountability import AccountabilityOps, IntegrityReport, SubjectReport
from .consent import ConsentOps
from .enrolment import EnrolmentOps
from .erasure import ErasureOps
from .matching import MatchingOps
from .state import VerificationOutcome

ALTERNATIVE_DATABASE = "alternative.sqlite"
#: Store setting: the shards a sharded service (:mod:`fpmatch.cluster`) placed the subjects on.
SHARDS_SETTING = "cluster_shards"


class MatchingService(ConsentOps, EnrolmentOps, MatchingOps, ErasureOps, AccountabilityOps):
    """Consent-bound face matching over one store directory. Use :meth:`open`."""

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        key: ServiceKey,
        *,
        edge: EdgeProfile | None = None,
        scheme: str | None = None,
        index: str = "flat",
        keyholder: Any = None,
        caller: str = "matching-service",
        target_fmr: float | None = None,
        clock: Clock | None = None,
        alternative: AlternativeVerifier | None = None,
        purge_on_open: bool = True,
        max_face_failures: int | None = DEFAULT_FACE_FAILURES,
        database: str | None = None,
        **gallery_options: Any,
    ) -> "MatchingService":
        """Open (or create: ``edge`` needed then) the store in ``directory``.

        ``edge`` is the profile of the capture edges that feed the service
        (:attr:`CaptureEdge.profile`); it fixes the scheme (``hybrid`` unless the
        edge was made otherwise), the template dimension and the keys messages
        must be made under. ``scheme``, when given, must be the store's.
        ``keyholder`` (a :class:`fpmatch.he.KeyHolder`, or a remote one) decides
        on encrypted scores for ``he`` and ``hybrid``; ``caller`` is how it
        names this service. ``index`` is ``flat`` (exact), ``ivf`` or ``hnsw``.
        ``gallery_options``: ``shortlist`` (Hamming neighbours re-ranked),
        ``candidates`` (hybrid: subjects re-scored under encryption),
        ``ivf_train_at``.

        The index comes from the cache when it matches the database, else it is
        rebuilt from the database. Subjects whose consent lapsed while the service
        was down are purged now unless ``purge_on_open`` is False.
        ``max_face_failures``: failed face verifications a subject may have within a day
        before verification answers ``USE_ALTERNATIVE`` (until the day has passed or the
        subject passes the alternative method; None: no limit, only for tests and
        evaluation). Without
        ``alternative``, a :class:`PinVerifier` keeps PINs in ``alternative.sqlite``
        in the directory, peppered with a key derived from ``key``. ``database``, a
        PostgreSQL connection string, keeps the store there instead of in
        ``store.sqlite`` in the directory (:meth:`Store.open`).
        """
        if isinstance(key, HashKey):
            raise KeyMismatchError(
                "MatchingService.open takes the service's own key (ServiceKey); a HashKey is the capture "
                "edge's transform key, which the matching service must never hold"
            )
        if index not in INDEX_KINDS:
            raise InvalidInputError(f"index must be one of {', '.join(INDEX_KINDS)}, got {index!r}")
        clock = system_clock if clock is None else clock
        attempts = FaceAttempts(max_face_failures)
        store = Store.open(directory, key, profile=edge, database=database)
        try:
            profile = store.settings.profile
            if scheme is not None and scheme != profile.scheme:
                raise KeyMismatchError(f"{store.directory} runs the {profile.scheme} scheme, not {scheme}")
            gallery, status = cls._load_gallery(store, profile, index, keyholder, caller, gallery_options)
            stored_fmr = store.meta("target_fmr")
            threshold = store.meta("threshold")
            if target_fmr is not None and target_fmr != stored_fmr:
                threshold = None  # calibrated for another target: recalibrate on first use
            fmr = target_fmr if target_fmr is not None else stored_fmr or DEFAULT_TARGET_FMR
            consents: dict[str, tuple[ConsentRecord, ...]] = {}
            for record in store.consents():
                consents[record.subject] = consents.get(record.subject, ()) + (record,)
            if max_face_failures is not None:
                since = as_utc(clock(), "clock()") - attempts.window
                attempts.replay(store.audit_entries(since=format_time(since)))
            owns = alternative is None
            if alternative is None:
                alternative = PinVerifier(
                    store.directory / ALTERNATIVE_DATABASE, pepper=key.subkey("alternative-pin"), clock=clock
                )
        except BaseException:
            store.close()
            raise
        service = cls(store, gallery, consents, clock, alternative, owns, status, threshold, fmr, attempts)
        if purge_on_open:
            try:
                service.expire()
            except BaseException:
                service.close()
                raise
        return service

    @staticmethod
    def _load_gallery(
        store: Store, profile: EdgeProfile, index: str, keyholder: Any, caller: str, options: dict[str, Any]
    ) -> tuple[ProtectedGallery, str]:
        check_decider(keyholder, profile)
        if profile.encrypted:
            options = {**options, "decider": keyholder, "caller": caller}
        shards = store.meta(SHARDS_SETTING)
        if shards is not None and shards != 1:
            # Its ciphertext slots and rows are numbered per shard: one gallery cannot read them.
            raise StoreFormatError(
                f"{store.directory} places its subjects on {shards} shards: open it with fpmatch.cluster.ShardedMatchingService"
            )
        gallery = open_gallery(profile, index, **options)
        templates = store.templates()
        cached, status = (None, "missing")
        if profile.hashed:
            cached, status = store.read_index_cache({t.subject: t.id for t in templates}, store.generation)
        if not gallery.restore(templates, store.rows(), cached):
            if cached is not None:
                status = "mismatch"
            if status != "missing":
                store.drop_index_cache()  # unusable, and it may hold codes erased since it was written
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
        with self._rw.write(closing=True):
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
    def gallery(self) -> ProtectedGallery:
        return self._gallery

    @property
    def alternative(self) -> AlternativeVerifier:
        return self._alternative

    def __len__(self) -> int:
        with self._rw.read():
            return len(self._gallery)

    def __contains__(self, subject: object) -> bool:
        with self._rw.read():
            return subject in self._gallery

    def enrolled(self) -> list[str]:
        with self._rw.read():
            return self._gallery.subjects()

    def save_index(self) -> None:
        """Write the index cache now (it is also written by close())."""
        with self._rw.read():
            self._write_cache()

    def _write_cache(self) -> None:
        if self._gallery.index is not None:
            self._store.write_index_cache(self._gallery.index, self._store.generation)


def check_decider(keyholder: Any, profile: EdgeProfile) -> None:
    """The key holder an encrypted scheme needs (and that the ``hash`` scheme must not get)."""
    if profile.encrypted:
        _check_keyholder(keyholder, profile)
    elif keyholder is not None:
        raise InvalidInputError("the hash scheme decides without a key holder; do not pass one")


def _check_keyholder(keyholder: Any, profile: EdgeProfile) -> None:
    from ..he.context import PublicContext
    from ..he.keyholder import ScoreDecider

    if keyholder is None:
        raise InvalidInputError(f"the {profile.scheme} scheme needs a key holder (keyholder=...) to decide")
    if not isinstance(keyholder, ScoreDecider):
        raise InvalidInputError(f"keyholder must be a KeyHolder or RemoteKeyHolder, got {type(keyholder).__name__}")
    from ..he.errors import KeyHolderUnavailable

    try:
        context = keyholder.public_context()
    except KeyHolderUnavailable:
        # Open anyway: requests carry the key id, so a wrong key holder is refused at its first
        # decision, and until one answers every match raises KeyHolderUnavailable.
        return
    if PublicContext(context).key_id != profile.he_key_id:
        raise KeyMismatchError(
            f"the key holder's key is not the one this store's templates are encrypted under ({profile.he_key_id})"
        )


__all__ = ["IntegrityReport", "MatchingService", "SubjectReport", "VerificationOutcome"]
