"""Which node each replica actor runs on: the R replicas of a shard on R distinct nodes.

A replica is pinned with Ray's node-affinity scheduling (hard: it runs on that
node or fails to start, and is then placed again) on the least-loaded live
node that holds no other replica of its shard and has the resources the actor
asks for. A replacement also avoids, where it can, the node its lost
predecessor ran on. A cluster with fewer such nodes than replicas per shard
cannot keep a shard's replicas apart: they share the least-loaded nodes, a
warning is logged and the status says so.

Replicas are named actors in the :data:`NAMESPACE` namespace, named
``<service>/shard-<s>/replica-<n>``, so that any process connected to the
cluster (``fpmatch cluster status``) can list them and ask each for its node.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Collection, Mapping, Sequence

log = logging.getLogger("fpmatch.cluster")

#: Ray namespace of every replica actor.
NAMESPACE = "fpmatch"
#: Ray's actor options that reserve resources, and the resource each names on a node.
_RESOURCE_OPTIONS = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}
_NAME = re.compile(r"^(?P<service>[0-9a-f]+)/shard-(?P<shard>\d+)/replica-(?P<serial>\d+)$")


def replica_name(service: str, shard: int, serial: int) -> str:
    return f"{service}/shard-{shard}/replica-{serial}"


def demand(options: Mapping[str, Any]) -> dict[str, float]:
    """The node resources a replica with these actor options needs (zero amounts left out)."""
    needed = {resource: float(options.get(option) or 0) for option, resource in _RESOURCE_OPTIONS.items()}
    needed.update({name: float(amount) for name, amount in (options.get("resources") or {}).items()})
    return {name: amount for name, amount in needed.items() if amount > 0}


def able_nodes(nodes: Sequence[Mapping[str, Any]], needed: Mapping[str, float]) -> list[str]:
    """Ids of the live nodes (entries of ``ray.nodes()``) whose resources cover ``needed``, in id order."""
    return sorted(
        node["NodeID"]
        for node in nodes
        if node.get("Alive") and all(node.get("Resources", {}).get(r, 0) >= a for r, a in needed.items())
    )


def choose(
    nodes: Sequence[str], avoid: Collection[str], load: Mapping[str, int], suspect: Collection[str] = ()
) -> tuple[str | None, bool]:
    """(node, apart): the least-loaded of ``nodes`` (ties: lowest id) outside ``avoid`` (the nodes of
    the shard's other replicas), outside ``suspect`` too when possible; ``apart`` is False when every
    node is in ``avoid`` and the replica must share one. (None, False) when ``nodes`` is empty."""
    apart = [n for n in nodes if n not in avoid]
    pool = [n for n in apart if n not in suspect] or apart or list(nodes)
    if not pool:
        return None, False
    return min(pool, key=lambda n: (load.get(n, 0), n)), bool(apart)


class NodeChooser:
    """Picks the node of the next replica among the cluster's live nodes that can hold it."""

    def __init__(self, ray: Any, options: Mapping[str, Any]) -> None:
        self._ray = ray
        self._demand = demand(options)

    def choose(self, avoid: Collection[str], load: Mapping[str, int], suspect: Collection[str] = ()) -> tuple[str | None, bool]:
        """:func:`choose` among the live nodes that have the resources a replica asks for."""
        return choose(able_nodes(self._ray.nodes(), self._demand), avoid, load, suspect)

    def strategy(self, node: str) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(node, soft=False)


def running_replicas(ray: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every replica actor of every sharded service on the cluster Ray is connected to, asked for its
    node: dicts of service, shard, replica (its serial number), node (id, or None when it does not
    answer within ``timeout``) and address (the node's IP), sorted by service, shard and replica."""
    addresses = {node["NodeID"]: node.get("NodeManagerAddress") for node in ray.nodes()}
    found = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        match = _NAME.match(entry["name"]) if entry.get("namespace") == NAMESPACE else None
        if match is None:
            continue
        try:
            node = ray.get(ray.get_actor(entry["name"], namespace=NAMESPACE).node.remote(), timeout=timeout)
        except Exception:  # gone or silent since it was listed
            node = None
        found.append({
            "service": match["service"], "shard": int(match["shard"]), "replica": int(match["serial"]),
            "node": node, "address": addresses.get(node) if node else None,
        })  # fmt: skip
    return sorted(found, key=lambda r: (r["service"], r["shard"], r["replica"]))
