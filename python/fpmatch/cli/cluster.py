"""``fpmatch cluster up|status|down``: the Ray runtime a sharded matching service runs on.

These wrap Ray's own ``ray start``, ``ray status`` and ``ray stop`` (the
``ray`` command installed with the cluster extra), so that a node joins or
leaves a cluster the way Ray documents it. ``--dry-run`` prints the command
instead of running it. ``status`` then lists the replica actors of every
sharded service on the cluster, per shard the node of each replica. ``down``
stops every Ray process of this user on this node, as ``ray stop`` does.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ._common import CliError, add_command, add_group, positive_int

#: Ray's default port for the head node's control store.
DEFAULT_PORT = 6379


def _ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")  # the ray of this environment first
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if found is None:
        raise CliError("the ray command was not found: install the cluster extra (pip install 'fpmatch[cluster]')")
    return found


def ray_command(args: argparse.Namespace) -> list[str]:
    """The ``ray`` command line that ``args`` asks for (the executable first)."""
    if args.action == "up":
        if args.address:
            command = ["start", f"--address={args.address}"]
        else:
            command = ["start", "--head", f"--port={args.port}", "--include-dashboard=false"]
        if args.num_cpus is not None:
            command.append(f"--num-cpus={args.num_cpus}")
        return ["ray", *command]
    if args.action == "status":
        return ["ray", "status"] + ([f"--address={args.address}"] if args.address else [])
    return ["ray", "stop"]


def _cmd_cluster(args: argparse.Namespace) -> int:
    command = ray_command(args)
    if args.dry_run:
        print(" ".join(command))
        return 0
    result = subprocess.run([_ray_executable(), *command[1:]], check=False)
    if result.returncode:
        raise CliError(f"{' '.join(command)} failed with exit status {result.returncode} (its output is above)")
    if args.action == "up" and not args.address:
        print(f"head node up; join other nodes with: fpmatch cluster up --address <this host>:{args.port}")
    if args.action == "status":
        _print_replicas(args.address or "auto")
    return 0


def _print_replicas(address: str) -> None:
    """Per service and shard, the node of each replica actor; shards whose replicas share a node are flagged."""
    try:
        import ray

        from ..cluster.nodes import running_replicas
    except ImportError as exc:
        raise CliError("listing replicas needs Ray: install the cluster extra (pip install 'fpmatch[cluster]')") from exc
    ray.init(address=address, log_to_driver=False, configure_logging=False, logging_level="ERROR")
    try:
        found = running_replicas(ray)
    finally:
        ray.shutdown()
    print(f"replicas of sharded matching services: {len(found)}")
    shards: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for replica in found:
        shards.setdefault((replica["service"], replica["shard"]), []).append(replica)
    for (service, shard), replicas in shards.items():
        nodes = [r["node"] for r in replicas if r["node"]]
        where = "; ".join(
            f"replica {r['replica']} on node {r['node']} ({r['address']})" if r["node"] else f"replica {r['replica']} not answering"
            for r in replicas
        )
        flag = "  [replicas share a node: losing it loses the shard]" if len(set(nodes)) < len(nodes) else ""
        print(f"service {service} shard {shard}: {where}{flag}")


def add_commands(commands: Any) -> None:
    """Register ``cluster up``, ``cluster status`` and ``cluster down``."""
    cluster = add_group(
        commands, "cluster", "Start, inspect and stop the Ray runtime of a sharded matching service.",
        ["fpmatch cluster up", "fpmatch cluster up --address 10.0.0.1:6379", "fpmatch cluster status", "fpmatch cluster down"],
    )  # fmt: skip
    up = add_command(
        cluster, "up", "Start Ray on this node: a head node, or a worker joining one (--address).", _cmd_cluster,
        ["fpmatch cluster up --port 6379", "fpmatch cluster up --address 10.0.0.1:6379 --num-cpus 8"],
        "Runs ray start. Then, on any node, a ShardedMatchingService opened after\n"
        "ray.init(address='auto') places its replica actors over every node of the cluster.",
    )  # fmt: skip
    up.add_argument("--address", help="HOST:PORT of the head node to join (default: start a head node)")
    up.add_argument("--port", type=positive_int, default=DEFAULT_PORT, help=f"head node port (default {DEFAULT_PORT})")
    up.add_argument("--num-cpus", type=positive_int, help="CPUs Ray may use on this node (default: all)")
    status = add_command(
        cluster, "status", "Show the nodes and resources of the running cluster (ray status), and the node of each replica.",
        _cmd_cluster,
        ["fpmatch cluster status", "fpmatch cluster status --address 10.0.0.1:6379"],
    )  # fmt: skip
    status.add_argument("--address", help="HOST:PORT of the head node (default: the one this node runs or joined)")
    down = add_command(
        cluster, "down", "Stop every Ray process of this user on this node (ray stop).", _cmd_cluster,
        ["fpmatch cluster down"],
        "Replica actors on this node end; a ShardedMatchingService still running elsewhere\n"
        "replaces them on the nodes left, rebuilt from its store.",
    )  # fmt: skip
    for parser in (up, status, down):
        parser.add_argument("--dry-run", action="store_true", help="print the ray command instead of running it")
