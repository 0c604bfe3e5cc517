#!/usr/bin/env python3
"""Cluster benchmark: the sharded matching service on a local Ray runtime, beside a single service.

One run, one scheme, every (shards, replicas) configuration asked for, on
synthetic face embeddings (:class:`fpmatch.synthetic.FaceGenerator`):

* the same subjects are enrolled in a single :class:`MatchingService` and in
  one store per shard count (a store keeps its placement), through the same
  capture edge and in-process key holder;
* per configuration: identification latency one request at a time (p50, p95),
  identifications per second with ``--threads`` concurrent callers, rank-1
  agreement with the single service on the same probes, and the recovery time
  after one replica of shard 0 is killed (``ray.kill``): from the kill until a
  replacement rebuilt from the store has rejoined;
* the single service's identification latency in the same run
  (``single_node_identify_ms_p50``): the fan-out overhead is the difference.

Ray runs on this machine with ``--num-cpus`` CPUs: with few cores, throughput
does not grow with shards; the per-shard figures are what capacity planning
extrapolates from (README, "Many machines").

Usage::

    python benchmarks/bench_cluster.py --shards 1,2,4 --replicas 1,2 --scheme hybrid --n 20000 --json reports/cluster_hybrid_20k.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
from _common import consents, cpu_model, identify_throughput, log, parties, workload

import fpmatch
from fpmatch import MatchingService, ServiceKey

CHUNK = 5_000


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", default="1,2,4", help="shard counts, comma separated")
    parser.add_argument("--replicas", default="1,2", help="replicas per shard, comma separated")
    parser.add_argument("--scheme", choices=("hash", "he", "hybrid"), default="hybrid")
    parser.add_argument("--index", choices=("flat", "ivf", "hnsw"), default="flat")
    parser.add_argument("--n", type=int, default=20_000, help="subjects enrolled")
    parser.add_argument("--queries", type=int, default=200, help="identifications timed one at a time")
    parser.add_argument("--threads", type=int, default=4, help="concurrent callers for the throughput figure")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the concurrent run")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray runtime")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    import ray

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with TemporaryDirectory(prefix="fpmatch-bench-cluster-") as tmp:
            result = run(args, Path(tmp))
    finally:
        ray.shutdown()
    result["command"] = " ".join(["python", "benchmarks/bench_cluster.py", *argv])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["configurations"]:
        log(json.dumps(row))
    return 0


def run(args: argparse.Namespace, root: Path) -> dict:
    from fpmatch.cluster import ShardedMatchingService

    data = workload("centred", args.seed, args.n, args.queries)
    dim, names, queries = data.dim, data.names, data.queries
    edge, options = parties(args.scheme, dim, args.index)
    key = ServiceKey.generate()
    calibration = edge.calibration(data.labelled, data.labels, 1e-3)
    records = [edge.enrolments(data.gallery[s : s + CHUNK]) for s in range(0, args.n, CHUNK)]
    messages = [edge.probe(data.mated[q]) for q in range(queries)]

    def populate(service: MatchingService) -> float:
        started = time.perf_counter()
        for i, start in enumerate(range(0, args.n, CHUNK)):
            chunk = names[start : start + CHUNK]
            service.grant_consents(consents(chunk))
            service.enrol_many(chunk, records[i])
        service.calibrate(calibration=calibration)
        return args.n / (time.perf_counter() - started)

    log("single service")
    single = MatchingService.open(root / "single", key, edge=edge.profile, **options)
    single_rate = populate(single)
    single_ms, single_top = _timed(single, messages)
    single.close()
    log(f"  identify p50 {np.percentile(single_ms, 50):.2f} ms")

    rows = []
    for shards in [int(s) for s in args.shards.split(",")]:
        directory = root / f"shards-{shards}"
        replica_counts = [int(r) for r in args.replicas.split(",")]
        service = ShardedMatchingService.open(directory, key, edge=edge.profile, shards=shards, replicas=replica_counts[0], **options)
        log(f"{shards} shards: enrolment")
        rate = populate(service)
        service.close()
        for replicas in replica_counts:
            log(f"{shards} shards x {replicas} replicas")
            started = time.perf_counter()
            service = ShardedMatchingService.open(directory, key, shards=shards, replicas=replicas, **options)
            open_s = time.perf_counter() - started
            try:
                ms, top = _timed(service, messages)
                qps = identify_throughput(service, messages, args.threads, args.seconds)
                recovery = _recovery(service)
            finally:
                service.close()
            rows.append(
                {
                    "shards": shards,
                    "replicas": replicas,
                    "n": args.n,
                    "identify_qps": qps,
                    "identify_ms_p50": float(np.percentile(ms, 50)),
                    "identify_ms_p95": float(np.percentile(ms, 95)),
                    "single_node_identify_ms_p50": float(np.percentile(single_ms, 50)),
                    "fanout_overhead_ms_p50": float(np.percentile(ms, 50) - np.percentile(single_ms, 50)),
                    "recovery_s": recovery,
                    "agreement_with_single": float(np.mean([a == b for a, b in zip(top, single_top)])),
                    "open_s": open_s,
                    "enrol_per_s": rate,
                }
            )
            log(f"  {json.dumps(rows[-1])}")
    return {
        "scheme": args.scheme,
        "index": args.index,
        "n": args.n,
        "dim": dim,
        "queries": queries,
        "threads": args.threads,
        "ray_num_cpus": args.num_cpus,
        "single_node_identify_ms_p50": float(np.percentile(single_ms, 50)),
        "single_node_identify_ms_p95": float(np.percentile(single_ms, 95)),
        "single_node_enrol_per_s": single_rate,
        "configurations": rows,
        "fpmatch_version": fpmatch.__version__,
        "ray_version": __import__("ray").__version__,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "date": _dt.date.today().isoformat(),
    }


def _timed(service: MatchingService, messages: list) -> tuple[list[float], list[str | None]]:
    """Milliseconds per identification (k=1, one at a time) and each rank-1 subject (None: no match)."""
    for message in messages[:20]:  # warm-up
        service.identify(message, "entry", k=1)
    ms, top = [], []
    for message in messages:
        t0 = time.perf_counter_ns()
        found = service.identify(message, "entry", k=1)
        ms.append((time.perf_counter_ns() - t0) / 1e6)
        top.append(found[0].subject if found else None)
    return ms, top


def _recovery(service) -> float:
    """Seconds from killing one replica of shard 0 until its replacement has rejoined."""
    import ray

    replicas = service.replicas
    before = len(replicas.rejoined)
    target = replicas.handles(0)[0]
    t0 = time.monotonic()
    ray.kill(target)
    while len(replicas.rejoined) == before:
        replicas.check()  # finds the dead replica (as the next request to it would) and waits for the rebuild
        time.sleep(0.01)
        if time.monotonic() - t0 > 600:
            raise RuntimeError("the replacement did not rejoin in 10 minutes")
    return replicas.rejoined[-1][1] - t0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
