"""Losing a node, on a real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a
head and two worker nodes, each its own raylet and processes). The replicas of each shard run on
distinct nodes; removing a worker node during identifications and verifications leaves every answer
the single service's (no shard is ever unavailable); replacements are rebuilt on the nodes left, still
apart; every subject still identifies and a subject withdrawn before the loss does not come back."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

import service_support as ss
from cluster_support import Traffic, open_sharded, open_single, populate, ray, wait_until_whole
from fpmatch import VerificationOutcome
from fpmatch.cluster.nodes import running_replicas

cluster_utils = pytest.importorskip("ray.cluster_utils", reason="ray.cluster_utils is not available: node-loss tests skipped")

#: Each node of the test cluster: one CPU, a small object store.
NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A head and two worker nodes on this machine, shut down after the module."""
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(**NODE)
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def _two_workers(cluster: Any) -> list[Any]:
    """The cluster's worker nodes, one added back if an earlier test removed one."""
    while len(cluster.worker_nodes) < 2:
        cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    return sorted(cluster.worker_nodes, key=lambda node: node.node_id)


def _live_nodes() -> set[str]:
    return {node["NodeID"] for node in ray.nodes() if node["Alive"]}


@pytest.mark.parametrize("scheme", ["hash", "hybrid"])
def test_losing_a_node_during_traffic(tmp_path: Path, scheme: str, ray_cluster: Any) -> None:
    workers = _two_workers(ray_cluster)
    clock = ss.ManualClock()
    names = [f"p{i}" for i in range(30)]
    with open_sharded(tmp_path / "sharded", clock, scheme, shards=2, replicas=2, call_timeout=20) as sharded, open_single(
        tmp_path / "single", clock, scheme
    ) as single:
        populate([sharded, single], names)
        for deployment in (sharded, single):
            assert deployment.withdraw("p0") is True  # withdrawn before the loss
        before = sharded.service.cluster_status()
        assert before["placement"] == "distinct nodes" and before["replicas_apart"] and before["live_nodes"] == 3
        assert all(len(set(shard["nodes"])) == 2 for shard in before["shards"]), before
        listed = [(r["shard"], r["node"]) for r in running_replicas(ray) if r["service"] == before["service"]]
        assert sorted(listed) == sorted((s["shard"], node) for s in before["shards"] for node in s["nodes"])

        load = Counter(node for shard in before["shards"] for node in shard["nodes"])
        victim = max(workers, key=lambda worker: (load[worker.node_id], worker.node_id))  # the busiest worker goes
        assert load[victim.node_id] >= 1
        replicas = sharded.service.replicas
        with Traffic(sharded, single, names, seed=16) as traffic:
            time.sleep(1.0)
            lost_at = time.monotonic()
            ray_cluster.remove_node(victim)
            wait_until_whole(sharded)
            time.sleep(0.5)  # traffic on the rebuilt replicas too
        recovery = max(moment for _, moment in replicas.rejoined) - lost_at
        print(f"\n{scheme}: node with {load[victim.node_id]} replica(s) removed; rebuilt and rejoined after {recovery:.2f} s; "
              f"{traffic.answered} answers, {traffic.unavailable} unavailable")  # fmt: skip
        assert not traffic.wrong, traffic.wrong[:5]
        assert traffic.answered > 0
        assert traffic.unavailable == 0  # a shard's other replica was on another node: never unavailable

        after = sharded.service.cluster_status()
        live = _live_nodes()
        assert victim.node_id not in live and after["live_nodes"] == 2
        assert len(replicas.rejoined) == load[victim.node_id]
        assert after["replicas_apart"] and after["placement"] == "distinct nodes"
        for shard in after["shards"]:
            assert len(shard["nodes"]) == 2 and set(shard["nodes"]) <= live
        report = sharded.check_integrity()  # the rebuilt replicas equal the store
        assert report.ok, report.problems
        for name in names[1:]:  # every subject still identifies, as with the single service
            probe = ss.sample(name, 1)
            assert sharded.identify(probe, "entry", 3) == single.identify(probe, "entry", 3)
            assert sharded.identify(probe, "entry", 1)[0].subject == name
        assert "p0" not in sharded  # and the one withdrawn before the loss does not come back
        assert all(m.subject != "p0" for m in sharded.identify(ss.sample("p0", 1), "entry"))
        assert sharded.verify("p0", ss.sample("p0", 1), "entry") is VerificationOutcome.USE_ALTERNATIVE


def test_fewer_nodes_than_replicas_is_logged_and_reported(tmp_path: Path, ray_cluster: Any, caplog: Any) -> None:
    """Four replicas on three nodes cannot all be apart: they share as few nodes as possible, a warning
    is logged, the status says so, and ``fpmatch cluster status`` flags the shard."""
    _two_workers(ray_cluster)
    with caplog.at_level(logging.WARNING, logger="fpmatch.cluster"):
        with open_sharded(tmp_path / "s", ss.ManualClock(), "hash", shards=1, replicas=4) as crowded:
            status = crowded.service.cluster_status()
            shown = subprocess.run(
                [sys.executable, "-m", "fpmatch", "cluster", "status", "--address", ray_cluster.address],
                capture_output=True, text=True, timeout=180, check=False,
            )  # fmt: skip
    assert not status["replicas_apart"] and status["placement"].startswith("shared nodes")
    (shard,) = status["shards"]
    assert len(shard["nodes"]) == 4 and set(shard["nodes"]) == _live_nodes()
    assert any("share a node" in record.getMessage() for record in caplog.records)
    assert shown.returncode == 0, shown.stderr
    (line,) = [line for line in shown.stdout.splitlines() if line.startswith(f"service {status['service']} shard 0:")]
    assert all(node in line for node in shard["nodes"]) and "replicas share a node" in line


def test_a_scheduling_strategy_of_the_callers_own_is_kept(tmp_path: Path, ray_cluster: Any) -> None:
    with open_sharded(tmp_path / "s", ss.ManualClock(), "hash", shards=1, replicas=1,
                      actor_options={"num_cpus": 0, "scheduling_strategy": "SPREAD"}) as svc:  # fmt: skip
        status = svc.service.cluster_status()
    assert status["placement"] == "the scheduling_strategy of actor_options"
    assert len(status["shards"][0]["nodes"]) == 1 and status["shards"][0]["nodes"][0] in _live_nodes()
