"""Errors as JSON with stable codes: ``{"error": {"code": ..., "message": ...}}``.

fpmatch's typed errors map to an HTTP status and a code a client can branch
on; the message is for people and may change. Anything unexpected is a 500
``internal_error`` whose message says nothing of the inside.
"""

from __future__ import annotations

from typing import Any

from .. import errors as e

try:  # the key holder's errors exist only with the encrypted schemes (fpmatch[he])
    from ..he.errors import CiphertextFormatError, DecryptionRefusedError, RateLimitExceededError
except ImportError:

    class CiphertextFormatError(Exception):  # type: ignore[no-redef]
        pass

    class DecryptionRefusedError(Exception):  # type: ignore[no-redef]
        pass

    class RateLimitExceededError(DecryptionRefusedError):  # type: ignore[no-redef]
        pass


#: (error class, HTTP status, code), most specific first.
ERROR_CODES: tuple[tuple[type[BaseException], int, str], ...] = (
    (e.BundledConsentError, 422, "bundled_consent"),
    (e.InvalidConsentError, 422, "invalid_consent"),
    (e.ConsentRequiredError, 403, "consent_required"),
    (e.IdConflictError, 409, "already_enrolled"),
    (e.UnknownSubjectError, 404, "unknown_subject"),
    (e.MessageFormatError, 422, "malformed_message"),
    (CiphertextFormatError, 422, "malformed_message"),
    (e.KeyMismatchError, 422, "profile_mismatch"),
    (e.NotCalibratedError, 409, "not_calibrated"),
    (e.TooManyAttemptsError, 429, "too_many_attempts"),
    (e.AttestationError, 403, "attestation_refused"),  # unsigned, stale, replayed or mismatched (attested mode)
    (e.AttestedModeError, 409, "attested_mode"),  # a request an attested key holder never answers (he 1:N)
    (RateLimitExceededError, 429, "rate_limited"),
    (DecryptionRefusedError, 503, "keyholder_refused"),
    (e.StoreClosedError, 503, "unavailable"),
    (e.AuditTamperedError, 500, "audit_tampered"),
    (e.DtypeError, 422, "invalid_input"),
    (e.InvalidInputError, 422, "invalid_input"),
)

#: Codes of errors the HTTP layer itself answers.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_body",
}


class ApiError(Exception):
    """An error the API answers as it is."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def classify(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and code of an fpmatch error (500 ``internal_error`` for anything else)."""
    for kind, status, code in ERROR_CODES:
        if isinstance(exc, kind):
            return status, code
    return 500, "internal_error"


__all__ = ["ApiError", "ERROR_CODES", "HTTP_CODES", "body", "classify"]
