#!/usr/bin/env python3
"""Service benchmark: the blind MatchingService end to end, beside plain FAISS on the same data.

One run, one scheme and index, on synthetic face embeddings
(:class:`fpmatch.synthetic.FaceGenerator`):

* consent and enrolment through the service: batch consent (one transaction
  per batch), then capture-edge records and batch enrolment (``enrol_many``);
  the rate counts the edge's work (hashing, rotation) and the service's
  (encryption, store, index);
* 1:1 verification and 1:N identification latency, one request at a time
  (median and p95), probes made by the edge; consent check, key holder
  decision and audit append included;
* identifications per second with ``--threads`` concurrent callers (audit
  appends are group-committed);
* store bytes per subject (the whole directory), peak RSS of the process;
* plain FAISS ``IndexFlatIP`` over the raw float32 gallery, same probes, same
  run: time per single query and its rank-1 subjects. ``rank1_agreement_with_plain``
  is the share of probes whose service answer (its rank-1 subject, or no match)
  equals plain cosine's (its nearest subject if it reaches the service's cosine
  threshold, else no match). For ``hash``, whose threshold is in code-score
  units, only the rank-1 subjects are compared.

The key holder runs in the same process with limits no run reaches.

Usage::

    python benchmarks/bench_service.py --scheme hybrid --index ivf --n 1000000 --json reports/service_hybrid_ivf_1m.json
    python benchmarks/bench_service.py --scheme hash --n 100000 --json reports/service_hash_100k.json
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
from _common import consents, cpu_model, identify_throughput, log, parties, peak_rss_mb, workload

import fpmatch
from fpmatch import MatchingService, ServiceKey
from fpmatch.synthetic import PROFILES

CHUNK = 10_000


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scheme", choices=("hash", "he", "hybrid"), default="hybrid")
    parser.add_argument("--index", choices=("flat", "ivf", "hnsw"), default="flat")
    parser.add_argument("--n", type=int, default=100_000, help="subjects enrolled")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="centred")
    parser.add_argument("--queries", type=int, default=300, help="single verifications and identifications timed")
    parser.add_argument("--threads", type=int, default=4, help="concurrent callers for the throughput figure")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the concurrent run")
    parser.add_argument("--target-fmr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="store directory (default: a temporary one, deleted after)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    with TemporaryDirectory(prefix="fpmatch-bench-", dir=None if args.dir is None else args.dir.parent) as tmp:
        directory = args.dir if args.dir is not None else Path(tmp) / "store"
        result = run(args, directory)
    result["command"] = " ".join(["python", "benchmarks/bench_service.py", *argv])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    log(json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}))
    return 0


def run(args: argparse.Namespace, directory: Path) -> dict:
    data = workload(args.profile, args.seed, args.n, args.queries)
    dim, names, gallery, mated, queries = data.dim, data.names, data.gallery, data.mated, data.queries
    edge, options = parties(args.scheme, dim, args.index, data.offset)
    if args.index == "ivf":
        options["ivf_train_at"] = min(10_000, args.n)
    service = MatchingService.open(directory, ServiceKey.generate(), edge=edge.profile, **options)

    log("consent")
    started = time.perf_counter()
    for start in range(0, args.n, CHUNK):
        service.grant_consents(consents(names[start : start + CHUNK]))
    consent_s = time.perf_counter() - started

    log("enrolment")
    edge_s = service_s = 0.0
    for start in range(0, args.n, CHUNK):
        t0 = time.perf_counter()
        records = edge.enrolments(gallery[start : start + CHUNK])
        t1 = time.perf_counter()
        service.enrol_many(names[start : start + CHUNK], records)
        t2 = time.perf_counter()
        edge_s += t1 - t0
        service_s += t2 - t1
        if start // CHUNK % 10 == 9:
            log(f"  {start + CHUNK} enrolled, {(start + CHUNK) / (edge_s + service_s):,.0f}/s")
    service.calibrate(calibration=edge.calibration(data.labelled, data.labels, args.target_fmr))
    threshold = float(service.threshold)

    log("plain IndexFlatIP")
    import faiss

    faiss.omp_set_num_threads(1)
    unit = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    plain = faiss.IndexFlatIP(dim)
    plain.add(unit)
    probes = mated / np.linalg.norm(mated, axis=1, keepdims=True)
    plain_ns = []
    plain_top: list[tuple[int, float]] = []
    for q in range(queries):
        t0 = time.perf_counter_ns()
        scores, ids = plain.search(probes[q : q + 1], 1)
        plain_ns.append(time.perf_counter_ns() - t0)
        plain_top.append((int(ids[0, 0]), float(scores[0, 0])))

    log("single requests")
    messages = [edge.probe(mated[q]) for q in range(queries)]
    for q in range(min(20, queries)):  # warm-up
        service.identify(messages[q], "entry", k=1)
    verify_ns, identify_ns, agree = [], [], 0
    for q in range(queries):
        t0 = time.perf_counter_ns()
        service.verify(names[q], messages[q], "entry")
        t1 = time.perf_counter_ns()
        found = service.identify(messages[q], "entry", k=1)
        t2 = time.perf_counter_ns()
        verify_ns.append(t1 - t0)
        identify_ns.append(t2 - t1)
        best, score = plain_top[q]
        if args.scheme == "hash":
            agree += bool(found) and found[0].subject == names[best] or not found and score < threshold
        else:
            agree += (found[0].subject if found else None) == (names[best] if score >= threshold else None)

    log(f"{args.threads} concurrent callers for {args.seconds:g} s")
    qps = identify_throughput(service, messages, args.threads, args.seconds)

    service.close()
    stored = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    ms = lambda ns, p: float(np.percentile(np.asarray(ns) / 1e6, p))  # noqa: E731
    return {
        "scheme": args.scheme,
        "index": args.index,
        "n": args.n,
        "dim": dim,
        "profile": args.profile,
        "consent_per_s": args.n / consent_s,
        "enrol_per_s": args.n / (edge_s + service_s),
        "enrol_service_per_s": args.n / service_s,
        "verify_ms_p50": ms(verify_ns, 50),
        "verify_ms_p95": ms(verify_ns, 95),
        "identify_ms_p50": ms(identify_ns, 50),
        "identify_ms_p95": ms(identify_ns, 95),
        "identify_qps_concurrent": qps,
        "threads": args.threads,
        "store_bytes_per_subject": stored / args.n,
        "peak_rss_bytes": int(peak_rss_mb() * 1024 * 1024),
        "plain_ms_per_query": ms(plain_ns, 50),
        "rank1_agreement_with_plain": agree / queries,
        "queries": queries,
        "threshold": threshold,
        "target_fmr": args.target_fmr,
        "fpmatch_version": fpmatch.__version__,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "date": _dt.date.today().isoformat(),
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
