#!/usr/bin/env python3
"""Erasure benchmark: what one withdrawal costs as the store grows, embedded SQLite beside PostgreSQL.

A withdrawal deletes the subject's code and ciphertext slot in one transaction
and then makes the deletion final in the storage files before it returns
(``Store.scrub``): SQLite zeroes the pages it frees (``secure_delete``), checkpoints
and truncates its write-ahead log and searches the template tables' pages for the
erased bytes (rebuilding the file if one is found); PostgreSQL rewrites the template tables
(``VACUUM FULL``), retires the WAL (``pg_switch_wal()`` and ``CHECKPOINT``) and,
its data directory being readable here, searches the tables' files and the WAL
for the erased bytes. The PostgreSQL server is a throwaway one started by this
run (the distribution's ``initdb``/``pg_ctl``, as the tests start it).

Per backend and store size: withdrawal latency (p50, max) over ``--withdrawals``
withdrawals of enrolled subjects, one at a time, and the template tables' size.
The baseline is the SQLite store of the same size in the same run:
``postgres_over_sqlite`` is the ratio of their p50 latencies.

Usage::

    python benchmarks/bench_erasure.py --sizes 2000,20000 --withdrawals 10 --json reports/erasure_hybrid.json
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
from _common import consents, cpu_model, log, parties, workload

import fpmatch
from fpmatch import MatchingService, ServiceKey
from fpmatch.store_sqlite import DATABASE

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

CHUNK = 5_000


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2000,20000", help="subjects enrolled, comma separated")
    parser.add_argument("--scheme", choices=("hash", "he", "hybrid"), default="hybrid")
    parser.add_argument("--withdrawals", type=int, default=10, help="withdrawals timed per store")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    import postgres_support  # the tests' throwaway server

    reason = postgres_support.unavailable_reason()
    if reason is not None:
        log(f"no PostgreSQL server can run here: {reason}")
        return 2
    server = postgres_support.PostgresServer(postgres_support.find_binaries())
    try:
        with TemporaryDirectory(prefix="fpmatch-bench-erasure-") as tmp:
            rows = run(args, Path(tmp), server)
    finally:
        server.stop()
    result = {
        "scheme": args.scheme,
        "withdrawals": args.withdrawals,
        "results": rows,
        "fpmatch_version": fpmatch.__version__,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "date": _dt.date.today().isoformat(),
        "command": " ".join(["python", "benchmarks/bench_erasure.py", *argv]),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run(args: argparse.Namespace, root: Path, server) -> list[dict]:
    sizes = [int(n) for n in args.sizes.split(",")]
    data = workload("centred", args.seed, max(sizes), 1)
    edge, options = parties(args.scheme, data.dim, "flat")
    key = ServiceKey.generate()
    calibration = edge.calibration(data.labelled, data.labels, 1e-3)
    rng = np.random.default_rng(args.seed)
    rows = []
    for n in sizes:
        names = data.names[:n]
        leaving = [names[i] for i in rng.choice(n, size=min(args.withdrawals, n), replace=False)]
        timed = {}
        for backend in ("sqlite", "postgres"):
            database = server.conninfo() if backend == "postgres" else None
            service = MatchingService.open(root / f"{backend}-{n}", key, edge=edge.profile, database=database, **options)
            try:
                log(f"{backend}, {n} subjects: enrolment")
                for start in range(0, n, CHUNK):
                    chunk = names[start : start + CHUNK]
                    service.grant_consents(consents(chunk))
                    service.enrol_many(chunk, edge.enrolments(data.gallery[start : start + len(chunk)]))
                service.calibrate(calibration=calibration)
                size = _template_bytes(service, backend, root / f"{backend}-{n}")
                ms = []
                for name in leaving:
                    t0 = time.perf_counter_ns()
                    assert service.withdraw(name)
                    ms.append((time.perf_counter_ns() - t0) / 1e6)
            finally:
                service.close()
            timed[backend] = ms
            rows.append({
                "backend": backend, "n": n, "template_table_bytes": size,
                "withdraw_ms_p50": float(np.percentile(ms, 50)), "withdraw_ms_max": float(max(ms)),
            })  # fmt: skip
            log(f"  {json.dumps(rows[-1])}")
        ratio = float(np.percentile(timed["postgres"], 50) / np.percentile(timed["sqlite"], 50))
        rows[-1]["postgres_over_sqlite"] = rows[-2]["postgres_over_sqlite"] = ratio
    return rows


def _template_bytes(service: MatchingService, backend: str, directory: Path) -> int:
    """Bytes of the tables a scrub rewrites (PostgreSQL), or of the database file (SQLite)."""
    if backend == "sqlite":
        return sum(p.stat().st_size for p in directory.glob(f"{DATABASE}*"))
    db = service.store._database()
    return int(db.conn.execute("SELECT pg_total_relation_size('subjects') + pg_total_relation_size('he_rows')").fetchone()[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
