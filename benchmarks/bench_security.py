#!/usr/bin/env python3
"""Inversion of hash codes with and without the key (ISO/IEC 24745 irreversibility).

An attacker who holds the stored codes and the hash key rebuilds each template
as normalise(W (2c - 1)), W the key's projection with unit columns (the naive
attacker). The store also keeps the offset direction u and the share a the
scheme removes before projecting, so a stronger attacker adds a u back and
rescales to unit length. One without the key can only try another key's
projection, with or without the offset; where the scheme removes an offset,
the offset direction alone (the model's mean face, no codes) is reported too.
Reported per attacker: cosine of the reconstructions to the originals, and the
share a plain-cosine matcher accepts against a fresh sample of the same face at
FMR 1e-3 (threshold from impostor pairs of enrolled and fresh samples).

    python benchmarks/bench_security.py --json reports/security_centred.json
    python benchmarks/bench_security.py --profile offset --json reports/security_offset.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

import fpmatch
from fpmatch.eval import evaluate_inversion
from fpmatch.synthetic import PROFILES, FaceGenerator

#: Samples of people never enrolled that estimate the model's offset direction.
OFFSET_SAMPLES = 2000


def run(n: int, bits: int, profile: str, seed: int, impostor_pairs: int = 500_000) -> dict[str, Any]:
    """Draw ``n`` people (an enrolled and a fresh sample each) and attack their codes."""
    gen = FaceGenerator(profile, seed)
    people = gen.identities(n)
    enrolled, fresh = gen.samples(people), gen.samples(people)
    dim = enrolled.shape[1]
    offset = fpmatch.estimate_offset(gen.samples(gen.identities(OFFSET_SAMPLES)))
    # Keys from the seed, so that a run can be repeated; they protect nothing.
    rng = np.random.default_rng([seed, 0x5EC])
    scheme = fpmatch.CancellableHash(fpmatch.HashKey(rng.bytes(32)), dim, bits, offset=offset)
    other = fpmatch.CancellableHash(fpmatch.HashKey(rng.bytes(32)), dim, bits, offset=offset)
    result = evaluate_inversion(enrolled, fresh, scheme, other, far=1e-3, impostor_pairs=impostor_pairs, seed=seed)
    return {"profile": profile, "seed": seed, **result}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--n", type=int, default=3000, help="people attacked (default 3000)")
    p.add_argument("--bits", type=int, default=1024)
    p.add_argument("--profile", choices=sorted(PROFILES), default="centred")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--impostor-pairs", type=int, default=500_000, help="pairs behind the FMR 1e-3 threshold")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.n < 2 or args.impostor_pairs < 1:
        p.error("--n must be at least 2 and --impostor-pairs positive")
    result = run(args.n, args.bits, args.profile, args.seed, args.impostor_pairs)
    given = argv if argv is not None else sys.argv[1:]
    result["command"] = " ".join(["python", "benchmarks/bench_security.py", *given])
    text = json.dumps(result, indent=2, allow_nan=False)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
