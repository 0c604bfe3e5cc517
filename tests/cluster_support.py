"""Shared helpers for the cluster tests (not a test module): a real local Ray runtime, and a
sharded service beside a single one holding the same subjects."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

import service_support as ss
from fpmatch import MatchingService, PinVerifier

ray = pytest.importorskip("ray", reason="Ray is not installed (the cluster extra): cluster tests skipped")

from fpmatch.cluster import ShardedMatchingService  # noqa: E402
from fpmatch.errors import ShardUnavailableError  # noqa: E402


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[Any]:
    """A new local Ray runtime on two CPUs, shut down after the module (never one already
    running on the machine, which ``ray.init()`` would otherwise join)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def open_sharded(directory: Path, clock: ss.ManualClock, scheme: str, **kwargs: Any) -> ss.Deployment:
    return _deployment(ShardedMatchingService, directory, clock, scheme, kwargs)


def open_single(directory: Path, clock: ss.ManualClock, scheme: str, **kwargs: Any) -> ss.Deployment:
    return _deployment(MatchingService, directory, clock, scheme, kwargs)


def _deployment(
    service: type[MatchingService], directory: Path, clock: ss.ManualClock, scheme: str, kwargs: dict[str, Any]
) -> ss.Deployment:
    capture = ss.edge(scheme)
    kwargs.setdefault("alternative", PinVerifier(cost=2**10, clock=clock))
    if capture.profile.encrypted:
        kwargs.setdefault("keyholder", ss.keyholder())
    return ss.Deployment(service.open(directory, ss.SERVICE_KEY, edge=capture.profile, clock=clock, **kwargs), capture)


def populate(deployments: list[ss.Deployment], names: list[str], purposes: tuple[str, ...] = ("entry",)) -> None:
    """Grant and enrol ``names`` (in one batch) in each deployment, and calibrate it at the edge."""
    templates = np.stack([ss.sample(name, 0) for name in names])
    for deployment in deployments:
        for name in names:
            ss.grant(deployment.service, name, purposes)
        deployment.enrol_many(names, templates)
        ss.calibrate(deployment)


def answers(deployment: ss.Deployment, probes: dict[str, np.ndarray], purpose: str = "entry") -> dict[str, Any]:
    """Every probe's identification (k=3) and, for probes named after a subject, its verification."""
    found: dict[str, Any] = {}
    for label, probe in probes.items():
        message = deployment.edge.probe(probe)
        found[f"identify {label}"] = [m.subject for m in deployment.service.identify(message, purpose, 3)]
        found[f"verify {label}"] = deployment.service.verify(label.split("#")[0], message, purpose)
    return found


class Traffic:
    """Identifications and verifications of ``people`` in a thread while a test breaks things, each
    compared with the single service's answer. Writers hold ``lock`` so that both services hold the
    same subjects whenever an answer is compared. Counts ``answered`` and ``unavailable`` (the
    retriable ShardUnavailableError); ``wrong`` lists every answer that differed."""

    def __init__(self, sharded: ss.Deployment, single: ss.Deployment, people: list[str], seed: int) -> None:
        self.sharded, self.single, self.people = sharded, single, people
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.answered = self.unavailable = 0
        self.wrong: list[tuple[Any, ...]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-test-traffic")

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            name = self.rng.choice(self.people)
            probe = ss.sample(name, 1)
            with self.lock:
                try:
                    got = self.sharded.identify(probe, "entry", 3)
                except ShardUnavailableError:
                    self.unavailable += 1
                    continue
                expected = self.single.identify(probe, "entry", 3)
                if got != expected:
                    self.wrong.append((name, got, expected))
                self.answered += 1
                try:
                    outcome = self.sharded.verify(name, probe, "entry")
                except ShardUnavailableError:
                    self.unavailable += 1
                    continue
                if outcome != self.single.verify(name, probe, "entry"):
                    self.wrong.append((name, outcome))
                self.answered += 1


def wait_until_whole(sharded: ss.Deployment, timeout: float = 120.0) -> None:
    """Until every shard has all its replicas live again: lost ones nobody asked since are found by a
    ping, and their replacements have rejoined."""
    replicas = sharded.service.replicas
    whole = [replicas.replicas] * replicas.shards
    deadline = time.monotonic() + timeout
    while replicas.repairing() or replicas.check() != whole:
        assert time.monotonic() < deadline, "replacements did not rejoin"
        time.sleep(0.2)
