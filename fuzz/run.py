"""Coverage-guided fuzzing of one target (fuzz/targets.py) with atheris.

    python fuzz/run.py TARGET [libFuzzer options such as -max_total_time=300] [CORPUS_DIR ...]

New inputs go to the first corpus directory; a finding is written as crash-* (see
-artifact_prefix) and can be replayed with ``python fuzz/run.py TARGET FILE``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["fpmatch", "targets"]):
    import targets


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: {sys.argv[0]} TARGET [libFuzzer options] [corpus...]; targets: {', '.join(targets.TARGETS)}")
    target = targets.TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0]] + sys.argv[2:], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
