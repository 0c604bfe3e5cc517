"""Typed errors raised by fpmatch.

Every error derives from :class:`FpmatchError` and also from the built-in
exception a caller would expect (``ValueError``, ``TypeError``, ``KeyError``),
so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class FpmatchError(Exception):
    """Base class of every fpmatch error."""


class InvalidInputError(FpmatchError, ValueError):
    """A template, code or parameter cannot be used: wrong shape, NaN/Inf, zero vector."""


class DtypeError(FpmatchError, TypeError):
    """An array has the wrong dtype. fpmatch never casts silently."""


class AuthenticationError(FpmatchError, ValueError):
    """Serialised bytes failed authentication: tampered, truncated, or another key."""


class IndexFormatError(FpmatchError, ValueError):
    """Authenticated index bytes that FAISS could not parse (a version mismatch)."""


class IdConflictError(FpmatchError, ValueError):
    """An id or subject is already enrolled."""


class UnknownSubjectError(FpmatchError, KeyError):
    """The subject is not enrolled (never enrolled, or removed)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown subject"


class KeyMismatchError(FpmatchError, ValueError):
    """Data was protected under a different key or scheme than the one supplied."""


class KeyFileError(FpmatchError, ValueError):
    """A key file is unreadable, malformed, or stored where it must not be."""


class MessageFormatError(FpmatchError, ValueError):
    """A capture-edge message (enrolment record or probe) is malformed, truncated or of the wrong kind."""


class AttestationError(FpmatchError, PermissionError):
    """A signed probe or template does not verify at an attested key holder: unsigned, signed by an
    unknown edge, altered, stale, replayed, or paired with another subject's template."""


class AttestedModeError(FpmatchError, PermissionError):
    """The key holder runs in attested mode: it decides only over scores it computes itself from
    signed probes and templates, so requests carrying scores the caller computed are refused."""


class NotCalibratedError(FpmatchError, RuntimeError):
    """No decision threshold is available yet; call calibrate() or pass one."""


class InvalidConsentError(InvalidInputError):
    """A consent record is malformed: unknown purpose name, naive time, expiry before grant."""


class BundledConsentError(InvalidConsentError):
    """The consent was not given separately (bundled with other terms); it cannot authorise biometrics."""


class ConsentRequiredError(FpmatchError, PermissionError):
    """No active consent record covers the requested processing."""


class AuditTamperedError(FpmatchError, ValueError):
    """The audit log's hash chain does not verify: an entry was edited, deleted, inserted or reordered."""


class StoreFormatError(FpmatchError, ValueError):
    """A store directory holds a database that is not a (compatible) fpmatch store."""


class StoreIntegrityError(StoreFormatError):
    """Store contents fail authentication or the database file is damaged: a row or setting was
    changed, moved, added or deleted outside fpmatch. The message names what and how to recover."""


class StoreLockedError(FpmatchError, RuntimeError):
    """Another process holds the store open; one process at a time may own a store."""


class StoreClosedError(FpmatchError, RuntimeError):
    """The store or service was used after close()."""


class StoreUnavailableError(FpmatchError, ConnectionError):
    """The store's database server cannot be reached, refused the connection, or the connection was
    lost. Nothing was changed by the operation that raised it; it may be retried."""


class ErasureError(FpmatchError, RuntimeError):
    """An erased code or ciphertext still appears in the database's files after the store rewrote
    them (SQLite: VACUUM; PostgreSQL: VACUUM FULL and retired WAL segments)."""


class ErasureSettingsError(ErasureError):
    """The database server's settings, or the store role's rights, would keep erased templates in its
    files (recycled WAL segments, archives, replication slots): the store refuses to open there."""


class TooManyAttemptsError(FpmatchError, PermissionError):
    """Alternative verification is locked after repeated failures; try again later."""


class ShardUnavailableError(FpmatchError, ConnectionError):
    """No live replica of a shard could answer (all failed or are being rebuilt); nothing was decided.
    Retriable: a replacement rebuilt from the store rejoins shortly."""
