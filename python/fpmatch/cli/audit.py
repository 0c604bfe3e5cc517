"""``fpmatch audit verify|export`` and ``purge``: the store's audit log and its lapsed subjects."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._common import CliError, add_command, add_group, note
from ._parties import session, store_options


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    with session(args) as parties:
        report = parties.service.audit_verify()
    if report.ok:
        print(report.message)
        return 0
    note(f"audit chain broken: {report.message}")
    return 1


def _cmd_audit_export(args: argparse.Namespace) -> int:
    to_stdout = args.out == "-"
    target = Path(args.out)
    if not to_stdout and not args.force and (target.exists() or target.is_symlink()):
        raise CliError(f"{target} exists; pass --force to overwrite it")
    with session(args) as parties:
        service = parties.service
        report = service.audit_verify()
        if to_stdout:
            count = service.export_audit(sys.stdout)
        else:
            with open(target, "w" if args.force else "x", encoding="utf-8", newline="\n") as f:
                count = service.export_audit(f)
    if not to_stdout:
        print(f"exported {count} audit entries to {target}")
    if not report.ok:
        note(f"warning: the exported chain does not verify: {report.message}")
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    with session(args, announce_purge=False) as parties:
        purged = parties.purged
    for subject in purged:
        print(subject)
    note(f"purged {len(purged)} subject(s) whose consent lapsed" if purged else "nothing to purge")
    return 0


def add_commands(commands: Any) -> None:
    """Register ``audit verify``, ``audit export`` and ``purge``."""
    audit = add_group(
        commands, "audit", "Check and export the hash-chained audit log.",
        ["fpmatch audit verify", "fpmatch audit export audit.jsonl"],
    )  # fmt: skip
    audit_verify = add_command(
        audit,
        "verify",
        "Verify the audit chain and its keyed head; exit 1 and name the first broken entry if it fails.",
        _cmd_audit_verify,
        ["fpmatch audit verify"],
    )
    store_options(audit_verify)
    audit_export = add_command(
        audit,
        "export",
        "Write the audit log as JSON lines (pseudonyms, never biometric data or scores).",
        _cmd_audit_export,
        ["fpmatch audit export audit.jsonl", "fpmatch audit export - | jq .event"],
    )
    audit_export.add_argument("out", metavar="OUT.jsonl", help="file to create, or - for stdout")
    audit_export.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    store_options(audit_export)

    purge = add_command(
        commands,
        "purge",
        "Erase every subject whose consent lapsed; print their names, one per line.",
        _cmd_purge,
        ["fpmatch purge", "fpmatch purge > purged.txt"],
        "Names, not pseudonyms: the operator holds them already, and the audit log records each purge\n"
        "under the pseudonym. Every store command also purges lapsed subjects when it opens the store\n"
        "(and says so on stderr); this command does only that.",
    )
    store_options(purge)
