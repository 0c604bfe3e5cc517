"""The HTTP API of a matching service: a FastAPI app over one open :class:`~fpmatch.MatchingService`.

Capture edges send their messages (base64 of ``EnrolmentRecord.to_bytes()`` and
``ProbeMessage.to_bytes()``); no template or photo ever reaches this API. Every
route but ``/v1/health`` and the OpenAPI documents needs ``Authorization:
Bearer <token>`` of a client in the :class:`TokenStore`. Bodies over the size
limit are refused before parsing; every error is JSON with a stable code.
"""

from __future__ import annotations

import io
import logging
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from ..edge import EnrolmentRecord, ProbeMessage
from ..errors import FpmatchError
from ..service import MatchingService
from .errors import HTTP_CODES, ApiError, body, classify
from .limits import DEFAULT_MAX_BODY, BodyLimit
from .models import (
    AuditCheck,
    ConsentGrant,
    Enrolled,
    Enrolment,
    Erased,
    Health,
    Identification,
    Matches,
    MatchOut,
    Outcome,
    Verification,
    Withdrawal,
    decode_message,
)
from .tokens import TokenStore

log = logging.getLogger("fpmatch.api")
_bearer = HTTPBearer(auto_error=False, description="a client token from `fpmatch tokens new CLIENT`")


def create_app(service: MatchingService, tokens: TokenStore, *, max_body_bytes: int = DEFAULT_MAX_BODY) -> FastAPI:
    """The API over ``service`` (kept open by the caller), its clients authenticated by ``tokens``."""
    from .. import __version__

    app = FastAPI(
        title="fpmatch matching service",
        version=__version__,
        description="Consent-bound face matching over protected templates. Capture edges send enrolment "
        "records and probe messages (base64 of their to_bytes()); the service never sees a face or a template.",
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    _error_handlers(app)

    def client(credentials: Optional[HTTPAuthorizationCredentials] = Depends(_bearer)) -> str:
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>", challenge)
        name = tokens.authenticate(credentials.credentials)
        if name is None:
            raise ApiError(401, "unauthorized", "unknown or revoked token", challenge)
        return name

    authed = [Depends(client)]

    @app.get("/v1/health", response_model=Health, tags=["service"])
    def health() -> Health:
        """Liveness; needs no token and says nothing about the store."""
        return Health(status="ok", version=__version__)

    @app.get("/v1/profile", tags=["service"], dependencies=authed)
    def profile() -> dict[str, Any]:
        """The public profile capture edges must make their messages under (scheme, dimension, key ids)."""
        return {**service.profile.to_dict(with_context=False), "profile_id": service.profile.profile_id}

    @app.post("/v1/consents", status_code=201, tags=["consent"], dependencies=authed)
    def grant_consent(grant: ConsentGrant) -> dict[str, Any]:
        """Record a separate consent; its term is expires_at or retention_days after now."""
        if (grant.retention_days is None) == (grant.expires_at is None):
            raise ApiError(422, "invalid_consent", "give exactly one of retention_days and expires_at")
        record = service.grant_consent(
            grant.subject,
            grant.purposes,
            notice_version=grant.notice_version,
            evidence_ref=grant.evidence_ref,
            method=grant.method,
            separate=grant.separate,
            expires_at=grant.expires_at,
            retention=None if grant.retention_days is None else timedelta(days=grant.retention_days),
        )
        return record.to_dict()

    @app.get("/v1/consents/{subject}", tags=["consent"], dependencies=authed)
    def show_consents(subject: str) -> dict[str, Any]:
        """The subject's consent records with their status now."""
        now = datetime.now(timezone.utc)
        records = service.consents(subject)
        return {"subject": subject, "consents": [{**r.to_dict(), "status": r.status(now)} for r in records]}

    @app.post("/v1/consents/{subject}/withdraw", response_model=Erased, tags=["consent"], dependencies=authed)
    def withdraw_consent(subject: str, withdrawal: Optional[Withdrawal] = None) -> Erased:
        """Withdraw one consent (consent_id) or all; with none active left the template is erased at once."""
        return Erased(erased=service.withdraw(subject, None if withdrawal is None else withdrawal.consent_id))

    @app.delete("/v1/subjects/{subject}", response_model=Erased, tags=["consent"], dependencies=authed)
    def withdraw_subject(subject: str) -> Erased:
        """Withdrawal: every consent of the subject ends and their protected template is erased."""
        return Erased(erased=service.withdraw(subject))

    @app.post("/v1/enrolments", status_code=201, response_model=Enrolled, tags=["matching"], dependencies=authed)
    def enrol(enrolment: Enrolment) -> Enrolled:
        """Store a consenting subject's protected template (403 consent_required without active consent)."""
        service.enrol(enrolment.subject, EnrolmentRecord.from_bytes(decode_message(enrolment.record)))
        return Enrolled(subject=enrolment.subject, enrolled=True)

    @app.post("/v1/verify", response_model=Outcome, tags=["matching"], dependencies=authed)
    def verify(request: Verification) -> Outcome:
        """1:1 for a purpose: match, no_match, or use_alternative (no consent covers it; not a rejection)."""
        probe = ProbeMessage.from_bytes(decode_message(request.probe))
        return Outcome(outcome=service.verify(request.subject, probe, request.purpose).value)

    @app.post("/v1/identify", response_model=Matches, tags=["matching"], dependencies=authed)
    def identify(request: Identification) -> Matches:
        """1:N for a purpose: consenting subjects who match, best first; no scores."""
        probe = ProbeMessage.from_bytes(decode_message(request.probe))
        found = service.identify(probe, request.purpose, k=request.k)
        return Matches(matches=[MatchOut(subject=m.subject, rank=m.rank) for m in found])

    @app.get("/v1/subjects/{subject}/report", tags=["accountability"], dependencies=authed)
    def subject_report(subject: str) -> dict[str, Any]:
        """What the service holds about the subject: consents and audit events, never template bytes."""
        return service.subject_report(subject).to_dict()

    @app.get("/v1/audit/verify", response_model=AuditCheck, tags=["accountability"], dependencies=authed)
    def audit_verify() -> AuditCheck:
        """Check the audit log's hash chain and signed head."""
        report = service.audit_verify()
        return AuditCheck(
            ok=report.ok,
            entries=report.entries,
            first_bad_seq=report.first_bad_seq,
            problem=report.problem,
            message=report.message,
            head_checked=report.head_checked,
        )

    @app.get("/v1/audit/export", tags=["accountability"], dependencies=authed)
    def audit_export() -> Response:
        """The audit log as JSON lines."""
        out = io.StringIO()
        service.export_audit(out)
        return Response(out.getvalue(), media_type="application/x-ndjson")

    return app


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(body(exc.code, exc.message), exc.status, headers=exc.headers)

    @app.exception_handler(FpmatchError)
    async def fpmatch_error(_: Request, exc: FpmatchError) -> JSONResponse:
        status, code = classify(exc)
        if status >= 500:
            log.error("request failed: %s: %s", type(exc).__name__, exc)
            return JSONResponse(body(code, "the service could not complete the request"), status)
        return JSONResponse(body(code, " ".join(str(exc).split())), status)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return JSONResponse(body("malformed_json", "the body is not valid JSON"), 400)
        details = [
            {"field": ".".join(str(part) for part in p.get("loc", ())), "problem": str(p.get("msg", ""))[:200]}
            for p in problems[:20]
        ]
        return JSONResponse(body("invalid_body", "the body does not fit this request", details=details), 422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):  # not UTF-8, nested too deep
            return JSONResponse(body("malformed_json", "the body is not valid JSON"), 400)
        return JSONResponse(body(code, str(exc.detail)), exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(body("internal_error", "the service could not complete the request"), 500)


__all__ = ["create_app"]
