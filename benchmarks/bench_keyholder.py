#!/usr/bin/env python3
"""Key holder service benchmark: decisions over loopback mutual TLS, beside the in-process key holder.

One run starts a real ``fpmatch keyholder serve`` (a subprocess with a test PKI,
a KEK-sealed key and its SQLite ledger, on a free loopback port) and measures:

* 1:1 ``decide`` latency (one encrypted score) and 1:N ``best`` latency
  (``--gallery`` scores in one request), median and p95, one request at a
  time, each beside the same request to the same key in process;
* requests per second (1:1 decisions) from ``--callers`` concurrent callers,
  each with its own client certificate;
* hybrid 1:1 verification through :class:`~fpmatch.MatchingService` (consent
  check, hash stage, encrypted re-scoring, decision, durable audit line) on
  one store, opened in turn with the in-process ``KeyHolder`` and with the
  ``RemoteKeyHolder``, rounds interleaved so that load from elsewhere on the
  machine falls on both alike.

Every remote request is admitted, answered and audited in one ledger
transaction (SQLite, synchronous=FULL), so the remote figures include a
durable write at the key holder. Limits are set so that no run reaches them.

Usage::

    python benchmarks/bench_keyholder.py --json reports/keyholder.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Callable

import numpy as np
from _common import cpu_model, log

import fpmatch
from fpmatch import CaptureEdge, HashKey, MatchingService, ServiceKey
from fpmatch.synthetic import FaceGenerator

#: Limits far above anything one run asks for.
UNLIMITED = [
    "--rate", "1000000", "--burst", "1000000", "--caller-requests-per-day", "1000000000",
    "--caller-scores-per-day", "1000000000", "--caller-released-per-day", "1000000000",
    "--subject-requests-per-day", "1000000000",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    directory: Path, sealed: Path, kek: Path, max_scores: int, workers: int
) -> tuple[subprocess.Popen, str]:
    address = f"127.0.0.1:{free_port()}"
    pki = directory / "pki"
    command = [
        sys.executable, "-m", "fpmatch", "keyholder", "serve", "--listen", address, "--key", str(sealed),
        "--kek", str(kek), "--cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
        "--ca", str(pki / "ca.crt"), "--ledger", str(directory / "ledger.sqlite"), "--workers", str(workers),
        "--max-scores-per-request", str(max_scores), "--unattested", *UNLIMITED,
    ]  # fmt: skip
    log_path = directory / "server.log"
    out = open(log_path, "wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while b"listening on" not in log_path.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the key holder did not start:\n{log_path.read_text()}")
        time.sleep(0.1)
    return process, address


def timed(call: Callable[[], object], times: int) -> list[float]:
    """Milliseconds of each of ``times`` calls."""
    out = []
    for _ in range(times):
        t0 = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values), p))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=128, help="template dimension of the raw decide/best requests")
    parser.add_argument("--gallery", type=int, default=4000, help="scores in one 1:N best request")
    parser.add_argument("--requests", type=int, default=300, help="single decide requests timed (best: a third)")
    parser.add_argument("--callers", type=int, default=4, help="concurrent callers for requests per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the concurrent run")
    parser.add_argument("--subjects", type=int, default=1000, help="subjects in the hybrid store")
    parser.add_argument("--verifications", type=int, default=200, help="hybrid verifications timed per key holder")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved local/remote rounds of the hybrid part")
    parser.add_argument("--workers", type=int, default=8, help="the key holder's request threads")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    with TemporaryDirectory(prefix="fpmatch-bench-kh-") as tmp:
        result = run(args, Path(tmp))
    result["command"] = " ".join(["python", "benchmarks/bench_keyholder.py", *argv])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    log(json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))}))
    return 0


def run(args: argparse.Namespace, directory: Path) -> dict:
    from fpmatch.he import ClientCredentials, EncryptedGallery, KeyHolder, RateLimit, RemoteKeyHolder
    from fpmatch.he.certs import make_test_pki
    from fpmatch.he.sealing import new_kek, read_kek, write_sealed
    from fpmatch.he.server import lifted_rate

    callers = [f"bench-{i}" for i in range(max(1, args.callers))]
    make_test_pki(directory / "pki", callers)
    limits = RateLimit(requests_per_second=1e9, burst=10**9, max_scores=1 << 21)
    local = KeyHolder(limits=lifted_rate(limits))
    kek = new_kek(directory / "kek.bin")
    sealed = write_sealed(directory / "keyholder.sealed", local, kek=read_kek(kek))
    log("starting the key holder service")
    process, address = start_server(directory, sealed, kek, max(args.gallery, 1), args.workers)

    def remote_for(caller: str) -> RemoteKeyHolder:
        pki = directory / "pki"
        credentials = ClientCredentials.from_files(pki / "ca.crt", pki / f"{caller}.crt", pki / f"{caller}.key")
        return RemoteKeyHolder(address, credentials, timeout=30)

    try:
        remote = remote_for(callers[0])
        assert remote.public_context() == local.public_context()

        log(f"raw requests: {args.gallery} templates, {args.dim}-D")
        rng = np.random.default_rng(0)
        templates = rng.standard_normal((args.gallery, args.dim))
        templates = (templates / np.linalg.norm(templates, axis=1, keepdims=True)).astype(np.float32)
        gallery = EncryptedGallery(local.public_context(), args.dim)
        names = [f"s{i}" for i in range(args.gallery)]
        gallery.enrol(names, templates)
        one = [gallery.verification_request(names[i], templates[i]).to_bytes() for i in range(8)]
        many = [gallery.identification_request(templates[i])[0].to_bytes() for i in range(3)]
        assert remote.decide(one[0], 0.5, caller="-") == [True]

        def decide(holder: object, i: list[int]) -> Callable[[], object]:
            def call() -> object:
                i[0] += 1
                return holder.decide(one[i[0] % len(one)], 0.5, caller="bench")  # type: ignore[attr-defined]

            return call

        def best(holder: object, i: list[int]) -> Callable[[], object]:
            def call() -> object:
                i[0] += 1
                return holder.best(many[i[0] % len(many)], 0.5, 1, caller="bench")  # type: ignore[attr-defined]

            return call

        timed(decide(remote, [0]), 20)  # warm-up: connection, code paths
        timed(decide(local, [0]), 20)
        decide_remote = timed(decide(remote, [0]), args.requests)
        decide_local = timed(decide(local, [0]), args.requests)
        n_best = max(10, args.requests // 3)
        timed(best(remote, [0]), 3)
        best_remote = timed(best(remote, [0]), n_best)
        best_local = timed(best(local, [0]), n_best)

        log(f"{len(callers)} concurrent callers for {args.seconds:g} s")
        clients = [remote_for(c) for c in callers]
        for c in clients:
            c.decide(one[0], 0.5, caller="-")
        done = [0] * len(clients)
        stop = time.perf_counter() + args.seconds

        def caller(slot: int) -> None:
            count = 0
            while time.perf_counter() < stop:
                clients[slot].decide(one[count % len(one)], 0.5, caller="-")
                count += 1
            done[slot] = count

        t0 = time.perf_counter()
        threads = [threading.Thread(target=caller, args=(s,)) for s in range(len(clients))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        requests_per_s = sum(done) / (time.perf_counter() - t0)
        for c in clients:
            c.close()

        hybrid = hybrid_verify(args, directory / "store", local, remote)
        remote.close()
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()

    result = {
        "decide_ms_p50": pct(decide_remote, 50),
        "decide_ms_p95": pct(decide_remote, 95),
        "decide_ms_p50_local": pct(decide_local, 50),
        "decide_ms_p95_local": pct(decide_local, 95),
        "best_ms_p50": pct(best_remote, 50),
        "best_ms_p95": pct(best_remote, 95),
        "best_ms_p50_local": pct(best_local, 50),
        "best_ms_p95_local": pct(best_local, 95),
        "remote_hop_ms_p50": pct(decide_remote, 50) - pct(decide_local, 50),
        "best_scores": args.gallery,
        "requests_per_s": requests_per_s,
        "concurrent_callers": len(callers),
        "concurrent_seconds": args.seconds,
        **hybrid,
        "dim": args.dim,
        "decide_requests": args.requests,
        "best_requests": n_best,
        "server_workers": args.workers,
        "transport": "gRPC over loopback, mutual TLS; one ledger transaction (SQLite WAL, synchronous=FULL) "
        "per request",
        "fpmatch_version": fpmatch.__version__,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "date": _dt.date.today().isoformat(),
    }
    return result


def hybrid_verify(args: argparse.Namespace, directory: Path, local: object, remote: object) -> dict:
    """Hybrid 1:1 verification through the service with each key holder, rounds interleaved."""
    log(f"hybrid store: {args.subjects} subjects")
    faces = FaceGenerator("centred", 1)
    people = faces.identities(args.subjects)
    stored, fresh = faces.samples(people), faces.samples(people)
    names = [f"p{i}" for i in range(args.subjects)]
    context = local.public_context()  # type: ignore[attr-defined]
    edge = CaptureEdge(HashKey.generate(), stored.shape[1], public_context=context)
    key = ServiceKey.generate()
    with MatchingService.open(directory, key, edge=edge.profile, keyholder=local) as svc:
        now = _dt.datetime.now(_dt.timezone.utc)
        svc.grant_consents(
            [
                fpmatch.ConsentRecord(
                    name, frozenset({"entry"}), now, now + timedelta(days=30), "v1", name, "app", True
                )
                for name in names
            ]
        )
        svc.enrol_many(names, edge.enrolments(stored))
        svc.calibrate(0.01)
    count = min(args.verifications, args.subjects)
    probes = [edge.probe(fresh[i]) for i in range(count)]
    times: dict[str, list[float]] = {"local": [], "remote": []}
    matched: dict[str, int] = {"local": 0, "remote": 0}
    per_round = max(1, count // max(1, args.rounds))
    for r in range(max(1, args.rounds)):
        chosen = range(r * per_round % count, r * per_round % count + per_round)
        pair = [("local", local), ("remote", remote)]
        for name, holder in pair if r % 2 == 0 else pair[::-1]:  # neither always goes first
            with MatchingService.open(directory, key, keyholder=holder) as svc:
                for i in range(5):  # warm-up after opening
                    svc.verify(names[i], probes[i], "entry")
                for i in chosen:
                    i %= count
                    t0 = time.perf_counter_ns()
                    outcome = svc.verify(names[i], probes[i], "entry")
                    times[name].append((time.perf_counter_ns() - t0) / 1e6)
                    matched[name] += outcome.value == "match"
    local_ms, remote_ms = pct(times["local"], 50), pct(times["remote"], 50)
    return {
        "hybrid_verify_ms_local": local_ms,
        "hybrid_verify_ms_remote": remote_ms,
        "hybrid_verify_ms_p95_local": pct(times["local"], 95),
        "hybrid_verify_ms_p95_remote": pct(times["remote"], 95),
        "hybrid_verify_remote_minus_local_ms": remote_ms - local_ms,
        "hybrid_verify_remote_over_local": remote_ms / local_ms,
        "hybrid_target_added_ms": 2.0,
        "hybrid_target_met": remote_ms - local_ms <= 2.0,
        "hybrid_subjects": args.subjects,
        "hybrid_dim": int(stored.shape[1]),
        "hybrid_verifications_each": len(times["local"]),
        "hybrid_match_rate_local": matched["local"] / len(times["local"]),
        "hybrid_match_rate_remote": matched["remote"] / len(times["remote"]),
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
