"""``python -m fpmatch`` and the ``fpmatch`` entry point; the commands live in :mod:`fpmatch.cli`."""

from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    from .cli import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
