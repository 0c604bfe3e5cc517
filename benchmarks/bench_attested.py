#!/usr/bin/env python3
"""Key holder compute per request in attested mode, beside the unattested request, in one run.

In process, one key, one thread, rounds interleaved so that load from elsewhere on the
machine falls on both alike:

* 1:1: ``decide`` on one encrypted score the service computed (a hybrid row request)
  against ``decide_attested`` on a signed probe and one signed template (parse, check
  two Ed25519 signatures and the nonce, compute the score, decrypt it);
* 1:N shortlist: ``best`` on ``--shortlist`` scores against ``best_attested`` on a
  signed probe and ``--shortlist`` signed templates.

Signed probes are made before each timed round (signing is the capture edge's work);
the key holder's freshness window is widened so none goes stale while a round waits.

Usage::

    python benchmarks/bench_attested.py --json reports/attested.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
from _common import cpu_model, log

import fpmatch
from fpmatch import CaptureEdge, CancellableHash, EdgeKeys, EdgeSigningKey, HashKey
from fpmatch.he import HybridGallery, KeyHolder
from fpmatch.he.attested import AttestedRequest
from fpmatch.he.server import lifted_rate
from fpmatch.he.keyholder import RateLimit


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shortlist", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    templates = rng.standard_normal((args.shortlist, args.dim)).astype(np.float32)
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    probe = templates[0] + 0.5 * rng.standard_normal(args.dim).astype(np.float32) / np.sqrt(args.dim)
    probe = (probe / np.linalg.norm(probe)).astype(np.float32)

    base = KeyHolder()
    key = HashKey(os.urandom(32))
    signing = EdgeSigningKey.generate()
    edge = CaptureEdge(key, args.dim, scheme="hybrid", public_context=base.public_context(), signing_key=signing)
    keys = EdgeKeys()
    keys.add(signing.public_bytes, edge.profile.profile_id)
    limits = lifted_rate(RateLimit(max_attested=max(64, args.shortlist)))
    plain = KeyHolder.from_bytes(base.to_bytes(), limits=limits)
    attested = KeyHolder.from_bytes(base.to_bytes(), limits=limits, edge_keys=keys, freshness=3600.0)

    names = [f"s{i}" for i in range(args.shortlist)]
    log(f"encrypting {args.shortlist} templates at the edge and in the gallery")
    signed = [r.attestation for r in edge.enrolments(templates, names)]
    gallery = HybridGallery(CancellableHash(key, args.dim), base.public_context(), shortlist=args.shortlist)
    gallery.enrol(names, templates)
    one = gallery.scores_for(names[:1], probe).to_bytes()
    many = gallery.scores_for(names, probe).to_bytes()

    figures: dict[str, list[float]] = {k: [] for k in ("decide", "decide_attested", "best", "best_attested")}
    sizes: dict[str, int] = {}
    for _ in range(args.rounds):
        verify = AttestedRequest(edge.probe(probe, purpose="entry", subject="s0").to_bytes(), [signed[0]]).to_bytes()
        identify = AttestedRequest(edge.probe(probe, purpose="entry", identify=True).to_bytes(), list(signed)).to_bytes()
        sizes = {"decide": len(one), "decide_attested": len(verify), "best": len(many), "best_attested": len(identify)}
        figures["decide"].append(timed(lambda: plain.decide(one, 0.5, caller="bench")))
        figures["decide_attested"].append(timed(lambda: attested.decide_attested(verify, 0.5, caller="bench")))
        figures["best"].append(timed(lambda: plain.best(many, 0.5, 5, caller="bench")))
        figures["best_attested"].append(timed(lambda: attested.best_attested(identify, 0.5, 5, caller="bench")))

    median = {k: float(np.median(v)) for k, v in figures.items()}
    result = {
        "benchmark": "bench_attested",
        "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "fpmatch": fpmatch.__version__,
        "cpu": cpu_model(),
        "dim": args.dim,
        "shortlist": args.shortlist,
        "rounds": args.rounds,
        "decide_ms_p50": median["decide"],
        "decide_attested_ms_p50": median["decide_attested"],
        "decide_attested_ratio": median["decide_attested"] / median["decide"],
        "best_ms_p50": median["best"],
        "best_attested_ms_p50": median["best_attested"],
        "best_attested_ratio": median["best_attested"] / median["best"],
        "request_bytes": sizes,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
