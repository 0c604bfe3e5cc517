"""Request and response bodies. Capture-edge messages travel as base64 of their ``to_bytes()``."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..edge import MAX_MESSAGE_BYTES

#: Longest base64 text of a capture-edge message.
MAX_MESSAGE_TEXT = 4 * ((MAX_MESSAGE_BYTES + 2) // 3)


def _subject() -> Any:
    return Field(min_length=1, max_length=256, description="the subject's identifier at this business")


def _purpose() -> Any:
    return Field(min_length=1, max_length=64, description="the purpose of the request, e.g. entry or payment")


def _message(kind: str) -> Any:
    return Field(max_length=MAX_MESSAGE_TEXT, description=f"base64 of {kind}.to_bytes() from the capture edge")


def _is_base64(value: str) -> str:
    decode_message(value)
    return value


#: A capture-edge message field: strict base64, checked when the body is read.
Base64Text = Annotated[str, AfterValidator(_is_base64)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def decode_message(text: str) -> bytes:
    """Strict base64 (standard alphabet, padded) of a capture-edge message."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


class ConsentGrant(Body):
    subject: str = _subject()
    purposes: list[str] = Field(min_length=1, max_length=32)
    notice_version: str = Field(min_length=1, max_length=128)
    evidence_ref: str = Field(min_length=1, max_length=256)
    method: str = Field(min_length=1, max_length=64)
    separate: bool = Field(description="given separately from other terms; bundled consent is refused")
    retention_days: Optional[int] = Field(default=None, ge=1, le=36500)
    expires_at: Optional[datetime] = Field(default=None, strict=False, description="ISO 8601 with a zone; or give retention_days")


class Withdrawal(Body):
    consent_id: Optional[str] = Field(default=None, max_length=128, description="one consent; all when absent")


class Enrolment(Body):
    subject: str = _subject()
    record: Base64Text = _message("EnrolmentRecord")


class Verification(Body):
    subject: str = _subject()
    purpose: str = _purpose()
    probe: Base64Text = _message("ProbeMessage")


class Identification(Body):
    purpose: str = _purpose()
    probe: Base64Text = _message("ProbeMessage")
    k: int = Field(default=5, ge=1, le=100)


class Outcome(BaseModel):
    outcome: str = Field(description="match, no_match or use_alternative (send the person to the non-biometric method)")


class MatchOut(BaseModel):
    subject: str
    rank: int


class Matches(BaseModel):
    matches: list[MatchOut]


class Erased(BaseModel):
    erased: bool = Field(description="whether the subject's protected template was erased")


class Enrolled(BaseModel):
    subject: str
    enrolled: bool


class Health(BaseModel):
    status: str
    version: str


class AuditCheck(BaseModel):
    ok: bool
    entries: int
    first_bad_seq: Optional[int]
    problem: Optional[str]
    message: str
    head_checked: bool


ConsentOut = dict[str, Any]

__all__ = [
    "AuditCheck",
    "ConsentGrant",
    "Enrolled",
    "Enrolment",
    "Erased",
    "Health",
    "Identification",
    "MatchOut",
    "Matches",
    "Outcome",
    "Verification",
    "Withdrawal",
    "decode_message",
]
