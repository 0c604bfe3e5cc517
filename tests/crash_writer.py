"""Writer process for test_crash_safety: enrols and withdraws in a loop until killed.

usage: crash_writer.py DIRECTORY KEY_FILE ROUND WITHDRAWN_LOG [CRASH_POINT]

Prints "ready" once the store is open, then one line per iteration. A subject
is appended to WITHDRAWN_LOG only after withdraw() returned. With CRASH_POINT,
the process kills itself at that point of the first operation that reaches it:
"enrol-committed" (enrolment committed, index not yet updated),
"withdraw-committed" (withdrawal committed, WAL not yet scrubbed) or
"cache-written" (index cache written to a temporary file, not yet renamed).
"""

from __future__ import annotations

import os
import random
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fpmatch import Gallery, HashKey, MatchingService  # noqa: E402
from fpmatch.store import Store  # noqa: E402
from service_support import DIM, sample  # noqa: E402


def die(*_: Any, **__: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    if point == "enrol-committed":
        Gallery.add_codes = die  # type: ignore[method-assign, assignment]
    elif point == "withdraw-committed":
        Store.scrub = die  # type: ignore[method-assign, assignment]
    elif point == "cache-written":
        os.replace = die  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown crash point {point}")


def main() -> None:
    directory, key_file, round_, log_path = sys.argv[1:5]
    crash_point = sys.argv[5] if len(sys.argv) > 5 else None
    service = MatchingService.open(directory, HashKey.load(key_file), dim=DIM)
    rng = random.Random(int(round_))
    enrolled = service.enrolled()
    if crash_point is not None:
        arm(crash_point)
    print("ready", flush=True)
    with open(log_path, "a") as log:
        for i in range(1_000_000):
            name = f"r{round_}-{i}"
            service.grant_consent(
                name,
                ["entry"],
                notice_version="v1",
                evidence_ref=f"form-{name}",
                method="in-app",
                separate=True,
                retention=timedelta(days=365),
            )
            service.enrol(name, sample(name, 0))
            enrolled.append(name)
            if rng.random() < 0.3 or crash_point == "withdraw-committed":
                victim = enrolled.pop(rng.randrange(len(enrolled)))
                service.withdraw(victim)
                log.write(victim + "\n")
                log.flush()
            if rng.random() < 0.3 or crash_point == "cache-written":
                service.save_index()
            print(i, flush=True)


if __name__ == "__main__":
    main()
