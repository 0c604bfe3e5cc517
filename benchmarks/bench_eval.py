#!/usr/bin/env python3
"""Evaluation benchmark: verification, 1:N, unlinkability, renewability and speed in one run.

For each synthetic profile (``centred`` and ``offset`` by default), plain cosine
and the ``hash`` scheme side by side (:mod:`fpmatch.evaluation`):

* verification (ISO/IEC 19795-1): FMR/FNMR curves, EER, TAR at FAR 1e-3 and 1e-4;
* open-set identification: rank-1 and FNIR at FPIR 3e-3 (hash: exact flat index);
* unlinkability: D_sys between codes under two keys (target <= 0.05);
* renewability: old codes against re-keyed codes of the same people, with
  Kolmogorov-Smirnov distances to the genuine and impostor scores;
* speed against gallery size: faiss ``IndexFlatIP`` (when importable), hash flat
  and hash IVF, one query at a time on one thread.

Writes one JSON report (unlinkability and renewability also under the keys
``d_sys`` and ``renewability``) and, with ``--png-dir``, ``det.png``,
``speed.png`` and ``unlinkability.png`` (matplotlib's Agg backend).

Usage::

    python benchmarks/bench_eval.py --json reports/eval.json --png-dir reports/eval
    python benchmarks/bench_eval.py --quick --json /tmp/eval.json --png-dir /tmp/eval
    python benchmarks/bench_eval.py --json reports/eval_1m.json --million
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

from fpmatch._progress import Progress, progress_wanted
from fpmatch.evaluation import (
    load_labelled,
    split_labelled,
    DEFAULT_FARS,
    DEFAULT_FPIRS,
    far_label,
    run_evaluation,
    speed_vs_gallery_size,
    write_det_png,
    write_speed_png,
    write_unlinkability_png,
)
from fpmatch.synthetic import PROFILES

#: Settings of a full run and of ``--quick``: n, sizes, queries, linkage pairs, impostor pairs.
FULL = {"n": 10_000, "sizes": [1000, 10_000, 100_000], "queries": 200, "linkage_pairs": 1_000_000,
        "max_impostors": 4_000_000}  # fmt: skip
QUICK = {"n": 2000, "sizes": [1000, 10_000], "queries": 50, "linkage_pairs": 200_000, "max_impostors": 1_000_000}


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
    p.add_argument("--bits", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: n 2000, sizes 1000,10000, 50 queries, 2e5 linkage pairs (explicit options win)",
    )
    p.add_argument("--progress", action="store_true", help="show progress bars even when stderr is not a terminal")
    args = p.parse_args(argv)
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
    if args.n < 2 or args.nonmated < 1 or args.queries < 1 or args.k < 1 or args.warmup < 0:
        p.error("--n must be >= 2; --nonmated, --queries and --k >= 1; --warmup >= 0")
    if args.linkage_pairs < 1 or args.max_impostors < 1 or args.bits < 8 or args.bits % 8:
        p.error("--linkage-pairs and --max-impostors must be positive, --bits a positive multiple of 8")
    return args


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """Headline figures per profile, for reading at a glance."""
    out: dict[str, Any] = {}
    for name, result in report["profiles"].items():
        schemes = result["schemes"]
        ident = result["identification"]
        link = report["d_sys"][name]
        renewal = report["renewability"][name]
        speed = report["speed"].get(name, {"points": []})
        out[name] = {
            "verification": {
                scheme: {
                    **{f"tar_at_far_{f}": v["tar"] for f, v in schemes[scheme]["tar_at_far"].items()},
                    "eer": schemes[scheme]["eer"],
                }
                for scheme in ("plain", "hash")
            },
            "identification": {
                scheme: {
                    "rank1": ident[scheme]["rank1"],
                    **{
                        f"fnir_at_fpir_{f}": {"rank1": v["fnir_rank1"], "candidate_list": v["fnir_candidate_list"]}
                        for f, v in ident[scheme]["at_fpir"].items()
                    },
                }
                for scheme in ("plain", "hash")
            },
            "d_sys": {k: link[k] for k in ("value", "value_kde", "sampling_floor", "meets_target")},
            "renewability": {
                "genuine_mean_std": [renewal["genuine_same_key"]["mean"], renewal["genuine_same_key"]["std"]],
                "impostor_mean_std": [renewal["impostor_same_key"]["mean"], renewal["impostor_same_key"]["std"]],
                "renewed_mean_std": [renewal["renewed_mated"]["mean"], renewal["renewed_mated"]["std"]],
                "ks_renewed_vs_impostor": renewal["ks_renewed_vs_impostor"]["statistic"],
                "ks_genuine_vs_impostor": renewal["ks_genuine_vs_impostor"]["statistic"],
            },
            "speed_ms": {
                str(point["n"]): {
                    key: point[key]["mean"] for key in ("plain_ms", "hash_flat_ms", "hash_ivf_ms") if key in point
                }
                for point in speed["points"]
            },
        }
    return out


def _print_table(report: dict[str, Any]) -> None:
    fars = [far_label(f) for f in DEFAULT_FARS]
    fpir = far_label(DEFAULT_FPIRS[0])
    print(f"{'profile':<9}{'scheme':<7}" + "".join(f"{'TAR@' + f:>10}" for f in fars)
          + f"{'EER':>8}{'rank-1':>8}{'FNIR@' + fpir:>11}{'(list)':>8}")  # fmt: skip
    for name, result in report["profiles"].items():
        ident = result["identification"]
        for scheme in ("plain", "hash"):
            figures = result["schemes"][scheme]
            point = ident[scheme]["at_fpir"][fpir]
            print(
                f"{name:<9}{scheme:<7}" + "".join(f"{figures['tar_at_far'][f]['tar']:>10.4f}" for f in fars)
                + f"{figures['eer']:>8.4f}{ident[scheme]['rank1']:>8.4f}"
                f"{point['fnir_rank1']:>11.4f}{point['fnir_candidate_list']:>8.4f}"
            )
    print()
    for name in report["profiles"]:
        link, renewal = report["d_sys"][name], report["renewability"][name]
        print(
            f"{name}: D_sys {link['value']:.4f} (KDE {link['value_kde']:.4f}, sampling floor "
            f"{link['sampling_floor']:.4f}, target <= {link['target']}; plain templates {link['reference']['plain_templates']:.3f})"
        )
        parts = []
        for key, label in (("genuine_same_key", "genuine"), ("impostor_same_key", "impostor"),
                           ("renewed_mated", "renewed")):  # fmt: skip
            parts.append(f"{label} {renewal[key]['mean']:+.4f} +/- {renewal[key]['std']:.4f}")
        print(
            f"{name}: scores " + ", ".join(parts)
            + f"; KS renewed/impostor {renewal['ks_renewed_vs_impostor']['statistic']:.4f}"
            f" (above {renewal['ks_renewed_vs_impostor']['a_above_b']:.4f}),"
            f" genuine/impostor {renewal['ks_genuine_vs_impostor']['statistic']:.4f}"
        )
    print()
    print(f"{'profile':<9}{'n':>10}{'plain ms':>10}{'flat ms':>10}{'IVF ms':>10}{'hash ms':>10}{'IVF agr':>9}")
    for name, speed in report["speed"].items():
        for point in speed["points"]:
            plain = f"{point['plain_ms']['mean']:>10.4f}" if "plain_ms" in point else f"{'-':>10}"
            print(
                f"{name:<9}{point['n']:>10,}{plain}{point['hash_flat_ms']['mean']:>10.4f}"
                f"{point['hash_ivf_ms']['mean']:>10.4f}{point['hash_probe_ms']['mean']:>10.4f}"
                f"{point['ivf_top1_agreement_with_flat']:>9.3f}"
            )


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    load_start = os.getloadavg()
    show = progress_wanted(args.progress)

    def bar(label: str, total: int) -> Progress:
        return Progress(label, total, enabled=show)

    datasets = []
    if args.embeddings:
        embeddings, labels = load_labelled(args.embeddings, args.labels)
        datasets.append(split_labelled(embeddings, labels, name=args.dataset_name, seed=args.seed))
        log(f"{args.dataset_name}: {len(datasets[0].enrolment):,} people enrolled, {len(datasets[0].strangers):,} strangers")
    log(f"accuracy: n={args.n:,}, non-mated searches {args.nonmated:,}, profiles {','.join(args.profiles)}")
    report = run_evaluation(
        args.n,
        profiles=args.profiles,
        datasets=datasets,
        seed=args.seed,
        bits=args.bits,
        max_impostors=args.max_impostors,
        nonmated_searches=args.nonmated,
        linkage_pairs=args.linkage_pairs,
        progress=bar,
    )
    report["kind"] = "fpmatch evaluation benchmark (benchmarks/bench_eval.py)"
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
            progress=bar,
        )
    report["parameters"] = {
        "n": args.n,
        "nonmated_searches": args.nonmated,
        "profiles": args.profiles,
        "sizes": sorted(set(args.sizes)),
        "queries": args.queries,
        "warmup": args.warmup,
        "k": args.k,
        "linkage_pairs": args.linkage_pairs,
        "max_impostors": args.max_impostors,
        "bits": args.bits,
        "seed": args.seed,
        "quick": args.quick,
    }
    report["environment"]["cpu_model"] = cpu_model()
    report["load_average"] = {"start": [round(v, 2) for v in load_start], "end": [round(v, 2) for v in os.getloadavg()]}
    report["peak_rss_mb"] = peak_rss_mb()
    report["total_s"] = time.perf_counter() - started
    report["summary"] = _summary(report)
    return report


def _write_pngs(report: dict[str, Any], directory: Path) -> dict[str, str | None]:
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, str | None] = {}
    for name, writer, data in (
        ("det", write_det_png, report),
        ("speed", write_speed_png, report["speed"]),
        ("unlinkability", write_unlinkability_png, report["d_sys"]),
    ):
        path = directory / f"{name}.png"
        if writer(data, path):
            files[name] = str(path)
        else:
            path.unlink(missing_ok=True)  # never leave an older run's plot beside this report
            files[name] = None
    return files


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    notes: list[str] = []
    files: dict[str, str | None] = {"json": str(args.json)}
    if args.png_dir is not None:
        files.update(_write_pngs(report, args.png_dir))
        if any(v is None for v in files.values()):
            notes.append("matplotlib is not installed: no plots were drawn (pip install matplotlib)")
    for speed in report["speed"].values():
        notes.extend(speed["notes"])
    report["files"] = files
    report["notes"] = list(dict.fromkeys(notes))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    _print_table(report)
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"load average {report['load_average']['start']} -> {report['load_average']['end']}; "
          f"{report['total_s']:.1f} s; wrote " + ", ".join(v for v in files.values() if v))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
