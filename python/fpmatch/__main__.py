"""Command line: ``python -m fpmatch demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fpmatch", description="Privacy-preserving face matching.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="end-to-end demo on synthetic faces")
    demo.add_argument("--subjects", type=int, default=5000)
    demo.add_argument("--probes", type=int, default=500)
    demo.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run

            run(args.subjects, args.probes, args.seed)
    except Exception as exc:  # one line, non-zero exit
        print(f"fpmatch: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
