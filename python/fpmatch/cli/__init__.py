"""The ``fpmatch`` command line.

A deployment has three parties, and the store commands play all three on one
machine, each from its own key file: the capture edge (``--key``, the hash or
transform key) turns .npy templates into protected messages; the matching
service (``--service-key``) stores and matches those messages and holds
neither other key; the key holder (``--keyholder-key``, hybrid and he stores)
holds the CKKS secret key and answers only decisions on encrypted scores.

Exit status: 0 when a command ran (``verify`` and ``identify`` print their
outcome; ``--exit-code`` turns it into the status), 1 when ``audit verify``
finds the chain broken, 2 on an error or a usage error, with one line
``fpmatch: error: ...`` on stderr. Set ``FPMATCH_DEBUG=1`` for tracebacks.

This module assembles the parser and runs a command; each command group lives in
its own module (:mod:`.demo`, :mod:`.bench`, :mod:`.keys`, :mod:`.consent`,
:mod:`.matching` for enrol, calibrate, verify and identify, :mod:`.audit` with
purge, :mod:`.keyholder` for the key holder service, :mod:`.cluster` for the Ray runtime), the parties and the store session in :mod:`._parties`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ..errors import FpmatchError
from . import audit, bench, cluster, consent, demo, keyholder, keys, matching, serve
from ._common import FORMATTER, CliError, examples_epilog, note, one_line
from ._parties import ROLES
from .matching import VERIFY_STATUS


def build_parser() -> argparse.ArgumentParser:
    """The ``fpmatch`` argument parser (environment defaults are read now)."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="fpmatch",
        description="Privacy-preserving face matching over protected templates.\n\n" + ROLES,
        epilog=examples_epilog(
            "fpmatch keys new ~/keys/edge.key",
            "fpmatch keys new --kind service ~/keys/service.key",
            "fpmatch keys new --kind keyholder ~/keys/keyholder.key",
            "export FPMATCH_STORE=/srv/faces FPMATCH_KEY=~/keys/edge.key \\",
            "    FPMATCH_SERVICE_KEY=~/keys/service.key FPMATCH_KEYHOLDER_KEY=~/keys/keyholder.key",
            "fpmatch consent grant alice --purpose payment --notice-version 2026-01 \\",
            "    --evidence form-81 --method signed-form --retention-days 365 --dim 512",
            "fpmatch enrol alice --template alice.npy",
            "fpmatch calibrate --target-fmr 1e-4 --templates labelled.npy --labels labels.npy",
            "fpmatch verify alice --probe probe.npy --purpose payment",
        )
        + "\n\nexit status: 0 ran (see verify/identify --exit-code), 1 audit chain broken, 2 error.\n"
        "FPMATCH_DEBUG=1 shows a traceback on errors.",
        formatter_class=FORMATTER,
    )
    parser.add_argument("--version", action="version", version=f"fpmatch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (demo, bench, keys, consent, matching, audit, keyholder, serve, cluster):  # the order of --help
        group.add_commands(commands)
    return parser


def _status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser = build_parser()
    debug = os.environ.get("FPMATCH_DEBUG", "") not in ("", "0")
    try:
        args = parser.parse_args(argv)
        return int(args.handler(args))
    except SystemExit as exc:  # --help, --version and usage errors (2)
        return _status(exc.code)
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    except BrokenPipeError:  # e.g. `fpmatch audit export - | head`
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except (CliError, FpmatchError, OSError, ValueError) as exc:
        if debug:
            raise
        note(f"error: {one_line(exc)}")
        return 2
    except Exception as exc:  # a bug: still one line, the traceback on request
        if debug:
            raise
        note(f"error: unexpected {type(exc).__name__}: {one_line(exc)} (FPMATCH_DEBUG=1 shows the traceback)")
        return 2


__all__ = ["CliError", "VERIFY_STATUS", "build_parser", "main"]
