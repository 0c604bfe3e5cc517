"""Writer process for test_crash_safety: enrols and withdraws in a loop until killed.

usage: crash_writer.py DIRECTORY KEYS_DIR SCHEME ROUND WITHDRAWN_LOG [CRASH_POINT]

KEYS_DIR holds the service key (service.key) and, for the encrypted schemes,
the key holder's secret (keyholder.key); the capture edge uses the test key.
Prints "ready" once the store is open, then one line per iteration. A subject
is appended to WITHDRAWN_LOG (with the hex of the protected bytes the store
held of them) only after withdraw() returned. With CRASH_POINT, the process
kills itself at that point of the first operation that reaches it:
"enrol-committed" (enrolment committed, gallery not yet updated),
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

import service_support  # noqa: E402
from fpmatch import MatchingService, ServiceKey  # noqa: E402
from fpmatch.galleries.codes import CodeTable  # noqa: E402
from fpmatch.he import KeyHolder  # noqa: E402
from fpmatch.he.blocks import CiphertextBlocks  # noqa: E402
from fpmatch.store import Store  # noqa: E402
from service_support import OPEN_LIMITS, protected_bytes, sample  # noqa: E402


def die(*_: Any, **__: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    if point == "enrol-committed":
        CodeTable.add = die  # type: ignore[method-assign, assignment]
        CiphertextBlocks.apply = die  # type: ignore[method-assign, assignment]
    elif point == "withdraw-committed":
        Store.scrub = die  # type: ignore[method-assign, assignment]
    elif point == "cache-written":
        os.replace = die  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown crash point {point}")


def main() -> None:
    directory, keys, scheme, round_, log_path = sys.argv[1:6]
    crash_point = sys.argv[6] if len(sys.argv) > 6 else None
    service_support.SCHEME = scheme
    options: dict[str, Any] = {}
    if scheme != "hash":
        holder = KeyHolder.load(Path(keys) / "keyholder.key", limits=OPEN_LIMITS)
        service_support._KEYHOLDER[:] = [holder]
        options["keyholder"] = holder
    edge = service_support.edge()
    service = MatchingService.open(directory, ServiceKey.load(Path(keys) / "service.key"), edge=edge.profile, **options)
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
            service.enrol(name, edge.enrolment(sample(name, 0)))
            enrolled.append(name)
            if rng.random() < 0.3 or crash_point == "withdraw-committed":
                victim = enrolled.pop(rng.randrange(len(enrolled)))
                held = protected_bytes(service, victim)
                service.withdraw(victim)
                log.write(victim + " " + ",".join(part.hex() for part in held) + "\n")
                log.flush()
            if rng.random() < 0.3 or crash_point == "cache-written":
                service.save_index()
            print(i, flush=True)


if __name__ == "__main__":
    main()
