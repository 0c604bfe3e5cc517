"""Shared helpers for the cluster tests (not a test module): a real local Ray runtime, and a
sharded service beside a single one holding the same subjects."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

import service_support as ss
from fpmatch import MatchingService, PinVerifier

ray = pytest.importorskip("ray", reason="Ray is not installed (the cluster extra): cluster tests skipped")

from fpmatch.cluster import ShardedMatchingService  # noqa: E402


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
