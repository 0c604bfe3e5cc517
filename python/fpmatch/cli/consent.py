"""``fpmatch consent grant|withdraw|show``: the consent that every match needs."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from typing import Any

from ._common import add_command, add_group, positive_int
from ._parties import session, store_options


_MAX_RETENTION_DAYS = 36_525


def _retention_days(text: str) -> int:
    value = positive_int(text)
    if value > _MAX_RETENTION_DAYS:
        raise argparse.ArgumentTypeError(f"retention is at most {_MAX_RETENTION_DAYS} days, got {value}")
    return value


def _cmd_consent_grant(args: argparse.Namespace) -> int:
    with session(args) as parties:
        record = parties.service.grant_consent(
            args.subject,
            args.purpose,
            notice_version=args.notice_version,
            evidence_ref=args.evidence,
            method=args.method,
            separate=True,
            retention=timedelta(days=args.retention_days),
        )
    print(json.dumps(record.to_dict(), sort_keys=True))
    return 0


def _cmd_consent_withdraw(args: argparse.Namespace) -> int:
    with session(args) as parties:
        service = parties.service
        pending = [r for r in service.consents(args.subject) if r.withdrawn_at is None]
        erased = service.withdraw(args.subject, args.consent_id)
        still_enrolled = args.subject in service
    if not pending:
        print(f"{args.subject}: no consent to withdraw (the request is in the audit log)")
        return 0
    count = 1 if args.consent_id else len(pending)
    if erased:
        held = "protected template erased"
    elif still_enrolled:
        held = "still enrolled under another active consent"
    else:
        held = "no template was held"
    print(f"{args.subject}: withdrew {count} consent record(s); {held}")
    return 0


def _cmd_consent_show(args: argparse.Namespace) -> int:
    with session(args) as parties:
        report = parties.service.subject_report(args.subject)
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def add_commands(commands: Any) -> None:
    """Register ``consent grant``, ``consent withdraw`` and ``consent show``."""
    consent = add_group(
        commands, "consent", "Record, withdraw and show consent.",
        ["fpmatch consent grant alice --purpose payment ...", "fpmatch consent show alice"],
    )  # fmt: skip
    grant = add_command(
        consent,
        "grant",
        "Record a subject's separate consent to biometric matching for named purposes.",
        _cmd_consent_grant,
        [
            "fpmatch consent grant alice --purpose payment --purpose entry \\",
            "    --notice-version 2026-01 --evidence form-81 --method signed-form --retention-days 365",
        ],
        "Only separate consent can be recorded here: use this command only when the subject agreed\n"
        "to biometric matching apart from any other terms. Bundled consent cannot authorise it.\n"
        "Prints the consent record as JSON (its consent_id is what `withdraw --consent-id` takes).",
    )
    grant.add_argument("subject", metavar="SUBJECT")
    grant.add_argument(
        "--purpose", action="append", required=True, help="a purpose such as payment or entry; repeat for several"
    )
    grant.add_argument("--notice-version", required=True, metavar="V", help="version of the privacy notice shown")
    grant.add_argument("--evidence", required=True, metavar="REF", help="reference to the proof kept elsewhere")
    grant.add_argument("--method", required=True, metavar="M", help="how consent was given, e.g. signed-form, in-app")
    grant.add_argument(
        "--retention-days",
        required=True,
        type=_retention_days,
        metavar="N",
        help="consent term in days; the code is erased when it ends",
    )
    store_options(grant)
    withdraw = add_command(
        consent,
        "withdraw",
        "Withdraw a subject's consent; with none left active, their code is erased at once.",
        _cmd_consent_withdraw,
        ["fpmatch consent withdraw alice", "fpmatch consent withdraw alice --consent-id 3f2a..."],
    )
    withdraw.add_argument("subject", metavar="SUBJECT")
    withdraw.add_argument("--consent-id", metavar="ID", help="withdraw only this record (default: all of them)")
    store_options(withdraw)
    show = add_command(
        consent,
        "show",
        "Print what the store holds about a subject as JSON (consents, audit events; never template bytes).",
        _cmd_consent_show,
        ["fpmatch consent show alice"],
    )
    show.add_argument("subject", metavar="SUBJECT")
    store_options(show)
