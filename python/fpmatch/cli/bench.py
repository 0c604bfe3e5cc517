"""``fpmatch bench``: evaluate every scheme on synthetic faces and write a report directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .._progress import progress_bars
from ._common import CliError, add_command, note, positive_int


def _size_list(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 16:
        raise argparse.ArgumentTypeError(f"gallery sizes must be integers of at least 16, got {text!r}")
    return values


#: `fpmatch bench` settings, and those of `--quick` (options given explicitly win).
_BENCH_FULL = {"n": 2000, "nonmated": 10_000, "sizes": [1000, 10_000], "queries": 100, "linkage_pairs": 1_000_000,
               "max_impostors": 4_000_000, "he_probes": 2000, "he_nonmated": 10_000,
               "hybrid_impostor_pairs": 300_000}  # fmt: skip
_BENCH_QUICK = {"n": 400, "nonmated": 1000, "sizes": [1000], "queries": 20, "linkage_pairs": 50_000,
                "max_impostors": 200_000, "he_probes": 150, "he_nonmated": 400,
                "hybrid_impostor_pairs": 10_000}  # fmt: skip


def _cmd_bench(args: argparse.Namespace) -> int:
    from ..eval import (
        EncryptedSizes,
        report_summary,
        report_text,
        run_evaluation,
        speed_vs_gallery_size,
        write_report_pngs,
    )

    preset = _BENCH_QUICK if args.quick else _BENCH_FULL
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.he_probes < 2:
        raise CliError("--he-probes must be at least 2")
    if args.n < 2:
        raise CliError("--n must be at least 2")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = progress_bars(args.progress)
    profiles = args.profile or ["centred", "offset"]
    encrypted = None
    if not args.no_encrypted:
        encrypted = EncryptedSizes(
            probes=args.he_probes, nonmated=args.he_nonmated, hybrid_impostor_pairs=args.hybrid_impostor_pairs
        )
    report = run_evaluation(
        args.n,
        profiles=profiles,
        seed=args.seed,
        bits=args.bits,
        max_impostors=args.max_impostors,
        nonmated_searches=args.nonmated,
        linkage_pairs=args.linkage_pairs,
        encrypted=encrypted,
        progress=bar,
    )
    report["speed"] = {
        profile: speed_vs_gallery_size(
            args.sizes,
            profile=profile,
            seed=args.seed,
            bits=args.bits,
            queries=args.queries,
            encrypted_max_n=0 if args.no_encrypted else max(args.sizes),
            progress=bar,
        )
        for profile in profiles
    }
    report["parameters"] = {
        "n": args.n,
        "nonmated_searches": args.nonmated,
        "profiles": profiles,
        "sizes": sorted(set(args.sizes)),
        "queries": args.queries,
        "linkage_pairs": args.linkage_pairs,
        "max_impostors": args.max_impostors,
        "encrypted": None if encrypted is None else {
            "probes": encrypted.probes,
            "nonmated": encrypted.nonmated,
            "hybrid_impostor_pairs": encrypted.hybrid_impostor_pairs,
            "shortlist": encrypted.shortlist,
        },
        "bits": args.bits,
        "seed": args.seed,
        "quick": args.quick,
    }
    report["summary"] = report_summary(report)
    plots = write_report_pngs(report, out)
    notes = list(report["notes"])
    for speed in report["speed"].values():
        notes.extend(speed["notes"])
    if any(path is None for path in plots.values()):
        notes.append("matplotlib is not installed: no plots were drawn (pip install matplotlib)")
    report["notes"] = list(dict.fromkeys(notes))
    report["files"] = {"report": "report.json"}
    report["files"].update({name: f"{name}.png" if path else None for name, path in plots.items()})
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")

    print(report_text(report))
    for line in report["notes"]:
        note(line)
    drawn = [f"{name}.png" for name, path in plots.items() if path]
    print(f"wrote {out / 'report.json'}" + (f" and {', '.join(drawn)}" if drawn else ""))
    return 0


def add_commands(commands: Any) -> None:
    """Register ``bench``."""
    bench = add_command(
        commands,
        "bench",
        "Evaluate plain cosine and the hash, he and hybrid schemes on synthetic faces; write a report directory.",
        _cmd_bench,
        ["fpmatch bench", "fpmatch bench --quick --out /tmp/bench", "fpmatch bench --out eval --profile offset"],
        "Per profile: TAR at FAR 1e-3 and 1e-4, EER, rank-1, open-set FNIR at FPIR 3e-3 (plain, hash, and the\n"
        "encrypted he and hybrid schemes on a part of the pairs, plain beside them on the same part),\n"
        "unlinkability (D_sys) and renewability under a second key, irreversibility (templates rebuilt\n"
        "from the codes with and without the key), and enrolment, verify and identify speed against\n"
        "gallery size. A rate the trials cannot support (fewer than 30 errors allowed at it) is null.\n"
        "Writes report.json, det.png, unlinkability.png and speed.png (plots need matplotlib; he and\n"
        "hybrid need TenSEAL). About 8 minutes on 2 cores; --quick well under one. For larger runs,\n"
        "benchmarks/bench_eval.py.",
    )
    bench.add_argument(
        "-o", "--out", metavar="DIR", default="fpmatch-bench", help="report directory (default fpmatch-bench)"
    )
    bench.add_argument("--quick", action="store_true", help="a smoke run at small sizes (explicit options win)")
    bench.add_argument("--n", type=positive_int, help="identities in the gallery (default 2000; quick 400)")
    bench.add_argument(
        "--nonmated", type=positive_int, help="non-mated 1:N searches (default 10000, enough for FPIR 3e-3)"
    )
    bench.add_argument(
        "--profile",
        action="append",
        choices=["centred", "offset"],
        help="synthetic profile; repeat for several (default both)",
    )
    bench.add_argument("--seed", type=int, default=0, help="random seed; the key derives from it too (default 0)")
    bench.add_argument("--bits", type=positive_int, default=1024, help="code length (default 1024)")
    bench.add_argument("--max-impostors", type=positive_int, help="cap on impostor pairs per profile (default 4e6)")
    bench.add_argument("--linkage-pairs", type=positive_int, help="non-mated pairs for D_sys (default 1e6)")
    bench.add_argument(
        "--sizes", type=_size_list, help="gallery sizes of the speed curve, comma-separated (default 1000,10000)"
    )
    bench.add_argument("--queries", type=positive_int, help="timed queries per gallery size (default 100)")
    bench.add_argument("--he-probes", type=positive_int, help="mated probes he and hybrid score (default 2000)")
    bench.add_argument("--he-nonmated", type=positive_int, help="non-mated searches of he and hybrid (default 10000)")
    bench.add_argument(
        "--hybrid-impostor-pairs", type=positive_int, help="impostor pairs through hybrid's 1:1 path (default 3e5)"
    )
    bench.add_argument("--no-encrypted", action="store_true", help="leave out the he and hybrid schemes")
    bench.add_argument("--progress", action="store_true", help="show progress bars even when stderr is not a terminal")
