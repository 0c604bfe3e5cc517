#!/usr/bin/env python3
"""Evaluation benchmark: accuracy, 1:N, ISO/IEC 24745 security figures and speed, in one run.

For each synthetic profile (``centred`` and ``offset`` by default), plain cosine
beside the ``hash``, ``he`` and ``hybrid`` schemes (:mod:`fpmatch.eval`):

* verification (ISO/IEC 19795-1): FMR/FNMR curves, EER, TAR at FAR 1e-3 and 1e-4;
* open-set identification: rank-1 and FNIR at FPIR 3e-3 (hash: exact flat index;
  he: the whole gallery under encryption; hybrid: hash shortlist re-scored under
  encryption). The encrypted schemes score a part of the pairs and searches
  (``--he-probes``, ``--he-nonmated``, ``--hybrid-impostor-pairs``), with plain
  cosine on the same part beside them; a FAR or FPIR the trials cannot support
  (fewer than 30 errors allowed at it) is reported as null with the reason;
* unlinkability: D_sys between codes under two keys (target <= 0.05);
* renewability: old codes against re-keyed codes of the same people, with
  Kolmogorov-Smirnov distances to the genuine and impostor scores;
* irreversibility: templates rebuilt from stored codes with and without the hash
  key, naively and with the removed offset restored, and the share accepted by
  plain matching at FMR 1e-3;
* speed against gallery size: enrolment rate, verify and identify latency of
  faiss ``IndexFlatIP`` (when importable), hash flat and IVF, he and hybrid (up to
  ``--encrypted-max-n``), one at a time on one thread; bytes per template.

Writes one JSON report (unlinkability, renewability and irreversibility also
under the keys ``d_sys``, ``renewability`` and ``irreversibility``) and, with
``--png-dir``, ``det.png``, ``speed.png`` and ``unlinkability.png`` (matplotlib's
Agg backend).

``--part accuracy`` and ``--part speed --update`` split a long run in two and
write the same report.

Usage::

    python benchmarks/bench_eval.py --json reports/eval.json --png-dir reports/eval
    python benchmarks/bench_eval.py --quick --json /tmp/eval.json --png-dir /tmp/eval
    python benchmarks/bench_eval.py --part accuracy --json reports/eval.json --png-dir reports/eval
    python benchmarks/bench_eval.py --part speed --update --million --json reports/eval.json --png-dir reports/eval
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _common import cpu_model, log, peak_rss_mb

from fpmatch._progress import progress_bars
from fpmatch.eval import (
    EncryptedSizes,
    load_labelled,
    report_summary,
    report_text,
    run_evaluation,
    speed_vs_gallery_size,
    split_labelled,
    write_report_pngs,
)
from fpmatch.synthetic import PROFILES

#: Settings of a full run and of ``--quick`` (explicit options win).
FULL = {"n": 10_000, "sizes": [1000, 10_000, 100_000], "queries": 200, "linkage_pairs": 1_000_000,
        "max_impostors": 4_000_000, "he_probes": 2000, "he_nonmated": 10_000,
        "hybrid_impostor_pairs": 300_000, "encrypted_max_n": 100_000}  # fmt: skip
QUICK = {"n": 2000, "sizes": [1000, 10_000], "queries": 50, "linkage_pairs": 200_000, "max_impostors": 1_000_000,
         "he_probes": 300, "he_nonmated": 1000, "hybrid_impostor_pairs": 30_000, "encrypted_max_n": 10_000}  # fmt: skip


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 16:
        raise argparse.ArgumentTypeError("gallery sizes must be integers of at least 16")
    return values


def _profile_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in PROFILES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"profiles must be among {sorted(PROFILES)}, got {text!r}")
    return list(dict.fromkeys(names))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", type=Path, required=True, metavar="OUT", help="write the report here")
    p.add_argument("--png-dir", type=Path, metavar="DIR", help="write det.png, speed.png, unlinkability.png here")
    p.add_argument("--n", type=int, help=f"identities enrolled for the accuracy figures (default {FULL['n']})")
    p.add_argument("--nonmated", type=int, help="non-mated 1:N searches (default: n)")
    p.add_argument(
        "--sizes", type=_int_list, help="gallery sizes for the speed curve (default 1000,10000,100000)"
    )
    p.add_argument("--million", action="store_true", help="add a 1,000,000 gallery to the speed curve (slow)")
    p.add_argument(
        "--profiles",
        type=_profile_list,
        help="synthetic profiles (default centred,offset; none when --embeddings is given)",
    )
    p.add_argument("--embeddings", type=Path, help="your labelled embeddings: .npz (embeddings, labels) or .npy")
    p.add_argument("--labels", type=Path, help="labels .npy for an .npy of embeddings")
    p.add_argument("--dataset-name", default="labelled", help="name of --embeddings in the report")
    p.add_argument("--queries", type=int, help=f"timed queries per gallery size (default {FULL['queries']})")
    p.add_argument("--warmup", type=int, default=10, help="untimed queries before each timed loop")
    p.add_argument("--k", type=int, default=10, help="neighbours per timed search")
    p.add_argument("--linkage-pairs", type=int, help="non-mated pairs for D_sys and renewability (default 1e6)")
    p.add_argument("--max-impostors", type=int, help="cap on verification impostor pairs (default 4e6)")
    p.add_argument(
        "--he-probes", type=int, help=f"mated probes the he / hybrid schemes score (default {FULL['he_probes']})"
    )
    p.add_argument(
        "--he-nonmated",
        type=int,
        help=f"non-mated searches of the he / hybrid schemes (default {FULL['he_nonmated']:,}, at most --nonmated)",
    )
    p.add_argument(
        "--hybrid-impostor-pairs",
        type=int,
        help=f"impostor pairs through the hybrid 1:1 path (default {FULL['hybrid_impostor_pairs']:,})",
    )
    p.add_argument("--shortlist", type=int, default=32, help="hybrid hash shortlist length (default 32)")
    p.add_argument(
        "--encrypted-max-n",
        type=int,
        help=f"largest gallery the he / hybrid schemes are timed at (default {FULL['encrypted_max_n']:,})",
    )
    p.add_argument("--no-encrypted", action="store_true", help="leave out the he and hybrid schemes")
    p.add_argument("--inversion-pairs", type=int, default=500_000, help="impostor pairs for the inversion threshold")
    p.add_argument("--bits", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: n 2000, sizes 1000,10000, 50 queries, 2e5 linkage pairs, 300 encrypted probes "
        "(explicit options win)",
    )
    p.add_argument(
        "--part",
        choices=["all", "accuracy", "speed"],
        default="all",
        help="run only the accuracy and security part, or only the speed sweep (default all)",
    )
    p.add_argument(
        "--update", action="store_true", help="add to the report already in --json, keeping the part not run"
    )
    p.add_argument("--progress", action="store_true", help="show progress bars even when stderr is not a terminal")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.profiles is None:
        args.profiles = [] if args.embeddings else ["centred", "offset"]
    base = QUICK if args.quick else FULL
    for name, value in base.items():
        if getattr(args, name) is None:
            setattr(args, name, list(value) if isinstance(value, list) else value)
    if args.million and 1_000_000 not in args.sizes:
        args.sizes.append(1_000_000)
    if args.nonmated is None:
        args.nonmated = args.n
    if args.no_encrypted:
        args.encrypted_max_n = 0
    if args.n < 2 or args.nonmated < 1 or args.queries < 1 or args.k < 1 or args.warmup < 0:
        p.error("--n must be >= 2; --nonmated, --queries and --k >= 1; --warmup >= 0")
    if args.linkage_pairs < 1 or args.max_impostors < 1 or args.bits < 8 or args.bits % 8:
        p.error("--linkage-pairs and --max-impostors must be positive, --bits a positive multiple of 8")
    if min(args.he_probes, args.he_nonmated, args.hybrid_impostor_pairs, args.shortlist, args.inversion_pairs) < 1:
        p.error("--he-probes, --he-nonmated, --hybrid-impostor-pairs, --shortlist, --inversion-pairs must be >= 1")
    if args.he_probes < 2 or args.encrypted_max_n < 0:
        p.error("--he-probes must be at least 2 and --encrypted-max-n non-negative")
    return args


#: Report sections the accuracy part writes; the speed part writes ``speed``.
ACCURACY_KEYS = ("kind", "fpmatch_version", "timestamp", "key", "schemes", "min_errors", "min_errors_note", "profiles",
                 "d_sys", "renewability", "irreversibility", "environment")  # fmt: skip


def run(args: argparse.Namespace, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the selected part(s); with ``previous`` (an earlier report), keep what this run does not redo."""
    started = time.perf_counter()
    load_start = os.getloadavg()
    bar = progress_bars(args.progress)
    report: dict[str, Any] = dict(previous or {})
    parameters: dict[str, Any] = dict(report.get("parameters") or {})
    notes: list[str] = []
    if args.part in ("all", "accuracy"):
        datasets = []
        if args.embeddings:
            embeddings, labels = load_labelled(args.embeddings, args.labels)
            datasets.append(split_labelled(embeddings, labels, name=args.dataset_name, seed=args.seed))
            log(f"{args.dataset_name}: {len(datasets[0].enrolment):,} people enrolled, "
                f"{len(datasets[0].strangers):,} strangers")  # fmt: skip
        encrypted = None
        if not args.no_encrypted:
            encrypted = EncryptedSizes(
                probes=args.he_probes,
                nonmated=args.he_nonmated,
                hybrid_impostor_pairs=args.hybrid_impostor_pairs,
                shortlist=args.shortlist,
            )
        log(f"accuracy: n={args.n:,}, non-mated searches {args.nonmated:,}, profiles {','.join(args.profiles)}")
        evaluation = run_evaluation(
            args.n,
            profiles=args.profiles,
            datasets=datasets,
            seed=args.seed,
            bits=args.bits,
            max_impostors=args.max_impostors,
            nonmated_searches=args.nonmated,
            linkage_pairs=args.linkage_pairs,
            encrypted=encrypted,
            inversion_pairs=args.inversion_pairs,
            progress=bar,
        )
        notes += evaluation["notes"]
        report.update({key: evaluation[key] for key in ACCURACY_KEYS})
        report["kind"] = "fpmatch evaluation benchmark (benchmarks/bench_eval.py)"
        report["environment"]["cpu_model"] = cpu_model()
        parameters.update(
            {
                "n": args.n,
                "nonmated_searches": args.nonmated,
                "linkage_pairs": args.linkage_pairs,
                "max_impostors": args.max_impostors,
                "encrypted": None
                if encrypted is None
                else {
                    "probes": encrypted.probes,
                    "nonmated": encrypted.nonmated,
                    "hybrid_impostor_pairs": encrypted.hybrid_impostor_pairs,
                    "shortlist": encrypted.shortlist,
                },
                "inversion_pairs": args.inversion_pairs,
            }
        )
    if args.part in ("all", "speed"):
        report["speed"] = {}
        for profile in args.profiles:
            log(f"speed: {profile}, sizes {','.join(str(s) for s in sorted(set(args.sizes)))}, {args.queries} queries")
            report["speed"][profile] = speed_vs_gallery_size(
                args.sizes,
                profile=profile,
                seed=args.seed,
                bits=args.bits,
                queries=args.queries,
                warmup=args.warmup,
                k=args.k,
                encrypted_max_n=args.encrypted_max_n,
                shortlist=args.shortlist,
                progress=bar,
            )
            notes += report["speed"][profile]["notes"]
        parameters.update(
            {
                "sizes": sorted(set(args.sizes)),
                "queries": args.queries,
                "warmup": args.warmup,
                "k": args.k,
                "encrypted_max_n": args.encrypted_max_n,
                "shortlist": args.shortlist,
            }
        )
    report.setdefault("speed", {})
    parameters.update({"profiles": args.profiles, "bits": args.bits, "seed": args.seed, "quick": args.quick})
    report["parameters"] = parameters
    total = time.perf_counter() - started
    load = {"start": [round(v, 2) for v in load_start], "end": [round(v, 2) for v in os.getloadavg()]}
    runs = dict(report.get("runs") or {})
    runs[args.part] = {
        "command": " ".join(["python", "benchmarks/bench_eval.py", *args.argv]),
        "total_s": total,
        "load_average": load,
        "peak_rss_mb": peak_rss_mb(),
    }
    if args.part == "all":
        runs.pop("accuracy", None)
        runs.pop("speed", None)
    report["runs"] = runs
    report["load_average"] = load
    report["total_s"] = total
    # Notes of the part not redone still hold; "all" redoes both.
    kept = [] if args.part == "all" else list(report.get("notes") or [])
    report["notes"] = list(dict.fromkeys(kept + notes))
    report["summary"] = report_summary(report)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    previous = None
    if args.update and args.json.exists():
        previous = json.loads(args.json.read_text(encoding="utf-8"))
    if args.part == "speed" and not (previous and previous.get("profiles")):
        raise SystemExit("--part speed adds to an earlier report: run --part accuracy first, then --update")
    report = run(args, previous)
    notes: list[str] = list(report["notes"])
    files: dict[str, str | None] = {"json": str(args.json)}
    if args.png_dir is not None:
        files.update(write_report_pngs(report, args.png_dir))
        if any(v is None for v in files.values()):
            notes.append("matplotlib is not installed: no plots were drawn (pip install matplotlib)")
    report["files"] = files
    report["notes"] = list(dict.fromkeys(notes))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    print(report_text(report))
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"load average {report['load_average']['start']} -> {report['load_average']['end']}; "
          f"{report['total_s']:.1f} s; wrote " + ", ".join(v for v in files.values() if v))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
