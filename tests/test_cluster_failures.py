"""Replica failures during traffic, on a real local Ray runtime: replicas are killed (``ray.kill``) at
random moments while identifications, verifications, enrolments and withdrawals run. Every answer is
the single service's answer or a retriable ShardUnavailableError, never a wrong MATCH; replacements
are rebuilt from the store and rejoin; nothing acknowledged is lost and no withdrawn subject returns."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

import service_support as ss
from cluster_support import Traffic, open_sharded, open_single, populate, ray_runtime, wait_until_whole  # noqa: F401
from fpmatch import VerificationOutcome
from fpmatch.errors import ShardUnavailableError

pytestmark = pytest.mark.usefixtures("ray_runtime")


def _retrying(action: Any, attempts: int = 200) -> Any:
    """A write retried while its shard is unavailable (it was not committed then)."""
    for _ in range(attempts):
        try:
            return action()
        except ShardUnavailableError:
            time.sleep(0.05)
    raise AssertionError("the shard never came back")


@pytest.mark.parametrize("scheme", ["hybrid", "hash"])
def test_killing_replicas_during_traffic(tmp_path: Path, scheme: str, ray_runtime: Any) -> None:  # noqa: F811
    clock = ss.ManualClock()
    names = [f"p{i}" for i in range(30)]
    rng = random.Random(15)
    with open_sharded(tmp_path / "sharded", clock, scheme, shards=2, replicas=2, call_timeout=20) as sharded, open_single(
        tmp_path / "single", clock, scheme
    ) as single:
        populate([sharded, single], names)
        replicas = sharded.service.replicas
        enrolled, withdrawn = set(names), set()
        killed: list[Any] = []
        with Traffic(sharded, single, names + [f"new{i}" for i in range(6)], seed=15) as traffic:
            for round_ in range(6):
                time.sleep(rng.uniform(0.1, 0.6))
                shard = rng.randrange(2)
                handles = [h for h in replicas.handles(shard) if h not in killed]  # a killed one may not be found yet
                if handles:
                    killed.append(rng.choice(handles))
                    ray_runtime.kill(killed[-1])  # at a random moment of the traffic
                with traffic.lock:  # a write right after the kill: it must reach every live replica and the replacement
                    if round_ % 2 == 0:
                        name = f"new{round_}"
                        for deployment in (sharded, single):
                            ss.grant(deployment.service, name)
                        _retrying(lambda: sharded.enrol(name, ss.sample(name, 0)))
                        single.enrol(name, ss.sample(name, 0))
                        enrolled.add(name)
                    else:
                        name = sorted(enrolled - withdrawn)[round_]
                        assert _retrying(lambda: sharded.withdraw(name)) is True
                        single.withdraw(name)
                        withdrawn.add(name)
        assert not traffic.wrong, traffic.wrong[:5]
        assert traffic.answered > 0
        wait_until_whole(sharded)
        assert len(killed) >= 4 and len(replicas.rejoined) == len(killed)
        report = sharded.check_integrity()  # every replica, old and rebuilt, equals the store
        assert report.ok, report.problems
        assert set(sharded.enrolled()) == enrolled - withdrawn
        for name in sorted(enrolled - withdrawn):  # nothing acknowledged is lost
            assert sharded.identify(ss.sample(name, 1), "entry") == single.identify(ss.sample(name, 1), "entry")
        for name in withdrawn:  # and no withdrawn subject comes back
            assert all(m.subject != name for m in sharded.identify(ss.sample(name, 1), "entry"))
            assert sharded.verify(name, ss.sample(name, 1), "entry") is VerificationOutcome.USE_ALTERNATIVE
