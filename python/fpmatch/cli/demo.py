"""``fpmatch demo``: the default deployment on synthetic faces."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import CliError, add_command, positive_int


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run

    if args.photos is not None:
        from ..faces.demo import run as run_photos

        run_photos(args.photos)
        return 0
    if args.probes > args.subjects:
        raise CliError(f"--probes ({args.probes}) cannot exceed --subjects ({args.subjects})")
    run(args.subjects, args.probes, args.seed, profiles=args.profile or ("centred", "offset"))
    return 0


def add_commands(commands: Any) -> None:
    """Register ``demo``."""
    demo = add_command(
        commands,
        "demo",
        "Run the default deployment (key holder, capture edge, matching service) on synthetic faces.",
        _cmd_demo,
        [
            "fpmatch demo",
            "fpmatch demo --subjects 5000 --probes 500 --profile centred",
            "fpmatch demo --photos ../shared/faces",
        ],
        "Creates the three parties' keys and a store in a temporary directory, records consent,\n"
        "enrols in batches, calibrates at the edge from labelled templates, verifies and identifies\n"
        "mated and non-mated probes, withdraws a subject, and prints the figures. The hybrid scheme\n"
        "needs TenSEAL; without it the demo runs the hash scheme and says so.",
    )
    demo.add_argument("--subjects", type=positive_int, default=2000, help="subjects per profile (default 2000)")
    demo.add_argument(
        "--probes", type=positive_int, default=200, help="mated and non-mated probes per profile (default 200)"
    )
    demo.add_argument(
        "--profile",
        action="append",
        choices=["centred", "offset"],
        help="synthetic model: centred (512-D) or offset (dlib-like, 128-D); repeat for both (default both)",
    )
    demo.add_argument("--seed", type=int, default=7, help="random seed of the synthetic faces (default 7)")
    demo.add_argument(
        "--photos",
        metavar="DIR",
        help="run on photos instead (fpmatch[faces]): PERSON_N.jpg files, the first of each person enrolled",
    )
