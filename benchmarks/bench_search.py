#!/usr/bin/env python3
"""Search benchmark: plain cosine search vs. the protected ``hash`` scheme.

On synthetic face embeddings with identity structure
(:class:`fpmatch.synthetic.FaceGenerator`), one run measures, on the same
gallery and the same probes:

* the unprotected baseline: exact inner-product search with faiss
  ``IndexFlatIP`` over the raw float32 gallery;
* the ``hash`` scheme: keyed cancellable codes (offset estimated on
  embeddings of *other*, non-enrolled identities), searched exactly with
  :class:`fpmatch.FlatIndex` and approximately with :class:`fpmatch.HNSWIndex`.

Data:

* gallery: one sample of each of ``n`` identities (row i is identity i);
* probes: a fresh sample of each of ``queries`` randomly chosen enrolled
  identities (mated probes);
* verification set: ``max(queries, 20000)`` genuine pairs (the mated probes,
  then fresh samples of further enrolled identities, each against its enrolled
  sample) and 2,000,000 impostor pairs (random pairs of distinct gallery rows).

Latency is measured the way a single request is served: queries are issued one
at a time, on one thread, after a few warm-up queries; every search (plain and
hashed) asks for the same ``k``. Hashing the probe is timed separately and the
hashed latencies are reported both without and with it.

Usage::

    python benchmarks/bench_search.py --n 1000000 --profile centred --json out.json
    python benchmarks/bench_search.py --quick --profile offset --json quick.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from _common import cpu_model as _cpu_model
from _common import log as _log
from _common import peak_rss_mb as _peak_rss_mb

import fpmatch
from fpmatch.codes import hamming_pairs, weighted_pairs
from fpmatch.synthetic import PROFILES, FaceGenerator

try:
    import faiss
except ImportError:  # pragma: no cover - reported to the user
    sys.exit("bench_search.py needs faiss-cpu for the plain baseline: pip install faiss-cpu")

TARGET_FAR = 1e-4
FAR_KEY = "tar_at_far_1e-4"
#: Rows drawn (identities, samples) or scored per step; bounds temporary memory.
CHUNK = 65536

REQUIRED_KEYS = (
    "n",
    "dim",
    "profile",
    "code_bits",
    "plain_ms_per_query",
    "hash_flat_ms_per_query",
    "hash_scalable_ms_per_query",
    "rank1_agreement_flat",
    "rank1_agreement_scalable",
    "shortlist_recall_at_32",
    FAR_KEY,
    "bytes_per_template",
    "enrol_per_s",
)


# -- helpers -----------------------------------------------------------------





def _stats(samples_ns: list[int] | np.ndarray) -> dict[str, float]:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return {
        "mean": float(ms.mean()),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
    }


def _pair_dots(x: np.ndarray, a: np.ndarray, y: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Inner products x[a[i]] . y[b[i]] (cosines for unit rows), in chunks."""
    out = np.empty(len(a), dtype=np.float32)
    for s in range(0, len(a), CHUNK):
        e = min(s + CHUNK, len(a))
        out[s:e] = np.einsum("ij,ij->i", x[a[s:e]], y[b[s:e]])
    return out


def _tar_plain(genuine: np.ndarray, impostor: np.ndarray, far: float) -> dict[str, float]:
    """Similarity scores, accept iff score >= threshold.

    The threshold is the lowest one whose FAR on the impostor scores is at most
    ``far``: just above the (floor(far * M) + 1)-th highest impostor score, so
    ties at that score are rejected (conservative).
    """
    m = len(impostor)
    allowed = int(math.floor(far * m + 1e-9))
    if allowed >= m:
        threshold = float(impostor.min())
    else:
        kth = float(np.partition(impostor, m - 1 - allowed)[m - 1 - allowed])
        threshold = float(np.nextafter(np.float32(kth), np.float32(np.inf)))
    return {
        "threshold": threshold,
        "tar": float(np.mean(genuine >= threshold)),
        "far": float(np.mean(impostor >= threshold)),
        "impostor_pairs": m,
        "genuine_pairs": len(genuine),
    }


def _tar_hash(genuine: np.ndarray, impostor: np.ndarray, far: float, bits: int) -> dict[str, float]:
    """Hamming distances, accept iff distance <= threshold.

    The threshold is the largest distance whose FAR (share of impostor pairs at
    or below it) is at most ``far``; -1 (accept nothing) if there is none.
    """
    counts = np.bincount(impostor, minlength=bits + 1)
    far_at = np.cumsum(counts) / len(impostor)
    ok = np.flatnonzero(far_at <= far)
    threshold = int(ok[-1]) if len(ok) else -1
    return {
        "threshold_distance": threshold,
        "threshold_score": float(math.cos(math.pi * threshold / bits)) if threshold >= 0 else None,
        "tar": float(np.mean(genuine <= threshold)),
        "far": float(np.mean(impostor <= threshold)),
        "impostor_pairs": len(impostor),
        "genuine_pairs": len(genuine),
    }


def _nearest_first(labels: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ordered by ascending distance (stable: equal distances keep their order)."""
    order = np.argsort(distances, axis=1, kind="stable")
    return np.take_along_axis(labels, order, axis=1), np.take_along_axis(distances, order, axis=1)


# -- timed search loops --------------------------------------------------------


def _time_plain(index, probes: np.ndarray, k: int, warmup: int):
    nq = len(probes)
    for i in range(warmup):
        index.search(probes[i % nq : i % nq + 1], k)
    labels = np.empty((nq, k), dtype=np.int64)
    times = np.empty(nq, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(nq):
        q = probes[i : i + 1]
        t0 = clock()
        _, lab = index.search(q, k)
        times[i] = clock() - t0
        labels[i] = lab[0]
    return labels, times


def _time_hashed(index, scheme, probes: np.ndarray, k: int, warmup: int, shortlist: int | None):
    """Per query: hash the probe, then search; both on one thread.

    ``shortlist`` None: Hamming search. Otherwise the probe's bit reliabilities
    come with its code and that many Hamming neighbours are re-ranked by
    weighted distance (what :class:`fpmatch.Gallery` does).
    """
    nq = len(probes)

    def protect(q: np.ndarray) -> tuple:
        return (scheme.protect(q),) if shortlist is None else scheme.protect_with_reliability(q)

    def search(hashed: tuple):
        if shortlist is None:
            return index.search(hashed[0], k, n_threads=1)
        return index.search_weighted(hashed[0], hashed[1], k, shortlist, n_threads=1)

    for i in range(warmup):
        search(protect(probes[i % nq : i % nq + 1]))
    labels = np.empty((nq, k), dtype=np.int64)
    distances = np.empty((nq, k), dtype=np.float64)
    hash_ns = np.empty(nq, dtype=np.int64)
    search_ns = np.empty(nq, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(nq):
        q = probes[i : i + 1]
        t0 = clock()
        hashed = protect(q)
        t1 = clock()
        res = search(hashed)
        t2 = clock()
        hash_ns[i] = t1 - t0
        search_ns[i] = t2 - t1
        labels[i] = res.labels[0]
        distances[i] = res.distances[0]
    return labels, distances, hash_ns, search_ns


# -- the benchmark ---------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    phases: dict[str, float] = {}
    n, nq, k = args.n, args.queries, args.k
    if k < 32:
        raise SystemExit("--k must be at least 32 (shortlist recall at 32 is reported)")
    if n < max(k, 2):
        raise SystemExit(f"--n must be at least {max(k, 2)}")
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 0xBE7C]))
    gen = FaceGenerator(args.profile, args.seed)
    dim = gen.profile.dim

    # Which enrolled identities are probed, and which give the extra genuine pairs.
    probe_ids = rng.choice(n, nq, replace=nq > n)
    n_genuine = max(nq, args.genuine_pairs)
    extra = n_genuine - nq
    genuine_ids = np.concatenate([probe_ids, rng.choice(n, extra, replace=extra > n)]).astype(np.int64)
    needed, inverse = np.unique(genuine_ids, return_inverse=True)

    # Gallery: identities and their enrolled samples, drawn in chunks; only the
    # identity vectors needed for fresh samples are kept.
    _log(f"generating gallery: {n:,} identities, profile {args.profile} ({dim}-D)")
    t = time.perf_counter()
    gallery = np.empty((n, dim), dtype=np.float32)
    kept = np.empty((len(needed), dim), dtype=np.float32)
    for s in range(0, n, CHUNK):
        e = min(s + CHUNK, n)
        ident = gen.identities(e - s)
        gallery[s:e] = gen.samples(ident)
        lo, hi = np.searchsorted(needed, [s, e])
        kept[lo:hi] = ident[needed[lo:hi] - s]
        del ident
    # Fresh (non-gallery) samples: mated probes first, then the extra genuine ones.
    genuine_probes = gen.samples(kept[inverse])
    del kept
    probes = np.ascontiguousarray(genuine_probes[:nq])
    # Enrolment-free offset estimate: samples of other identities, never enrolled.
    other = gen.samples(gen.identities(args.offset_samples))
    phases["generate_s"] = time.perf_counter() - t

    offset = fpmatch.estimate_offset(other)
    other_mean_norm = float(np.linalg.norm(other.astype(np.float64).mean(axis=0)))
    del other

    # -- verification pairs (plain scores) ----------------------------------
    # Genuine: each fresh sample against its enrolled one. Impostor: a fresh
    # sample against the enrolled sample of another identity.
    _log(f"plain verification scores: {n_genuine:,} genuine, {args.impostor_pairs:,} impostor pairs")
    t = time.perf_counter()
    imp_a = rng.integers(0, n_genuine, args.impostor_pairs)
    imp_b = rng.integers(0, n - 1, args.impostor_pairs)
    imp_b += imp_b >= genuine_ids[imp_a]  # another identity's gallery row
    gen_idx = np.arange(n_genuine)
    plain_gen = _pair_dots(genuine_probes, gen_idx, gallery, genuine_ids)
    plain_imp = _pair_dots(genuine_probes, imp_a, gallery, imp_b)
    plain_tar = _tar_plain(plain_gen, plain_imp, TARGET_FAR)
    del plain_gen, plain_imp
    phases["plain_verification_s"] = time.perf_counter() - t

    # -- hash scheme: enrolment (hash + add to the flat index) ----------------
    key = fpmatch.HashKey.generate()
    settings = {"offset": offset, "offset_removal": args.offset_removal, "scheme": args.scheme}
    enrol_scheme = fpmatch.CancellableHash(key, dim, args.bits, n_threads=args.threads, **settings)
    probe_scheme = fpmatch.CancellableHash(key, dim, args.bits, n_threads=1, **settings)
    weighted = args.scoring == "weighted"
    if args.shortlist is None:
        args.shortlist = fpmatch.gallery.default_shortlist(probe_scheme)
    shortlist_depth = args.shortlist if weighted else None
    ids = np.arange(n, dtype=np.int64)
    _log(f"enrolling {n:,} templates ({args.bits} bits, {args.threads} threads)")
    flat = fpmatch.FlatIndex(args.bits)
    t = time.perf_counter()
    codes = enrol_scheme.protect(gallery)
    flat.add(codes, ids, n_threads=args.threads)
    enrol_s = time.perf_counter() - t
    phases["enrol_s"] = enrol_s

    # Hash verification scores.
    t = time.perf_counter()
    if weighted:
        genuine_codes, reliability = enrol_scheme.protect_with_reliability(genuine_probes)
        score = enrol_scheme.weighted_score
        hash_gen = score(weighted_pairs(genuine_codes, reliability, gen_idx, codes, genuine_ids))
        hash_imp = score(weighted_pairs(genuine_codes, reliability, imp_a, codes, imp_b))
        hash_tar = _tar_plain(hash_gen, hash_imp, TARGET_FAR)
        del reliability
    else:
        genuine_codes = enrol_scheme.protect(genuine_probes)
        hash_gen = hamming_pairs(genuine_codes, gen_idx, codes, genuine_ids)
        hash_imp = hamming_pairs(genuine_codes, imp_a, codes, imp_b)
        hash_tar = _tar_hash(hash_gen, hash_imp, TARGET_FAR, args.bits)
    del hash_gen, hash_imp, genuine_codes, genuine_probes, imp_a, imp_b
    phases["hash_verification_s"] = time.perf_counter() - t

    # -- plain baseline index ---------------------------------------------------
    faiss.omp_set_num_threads(1)
    _log("building plain IndexFlatIP")
    t = time.perf_counter()
    plain = faiss.IndexFlatIP(dim)
    plain.add(gallery)
    phases["plain_build_s"] = time.perf_counter() - t
    del gallery  # the index holds its own copy
    gc.collect()

    # -- scalable index over codes ------------------------------------------------
    t = time.perf_counter()
    if args.scalable == "ivf":
        _log(f"training and filling IVF (nlist={args.nlist}, prefix {args.prefix_bits} bits, {args.threads} threads)")
        scalable = fpmatch.IVFIndex(args.bits, args.nlist, args.prefix_bits, args.nprobe[0], args.rerank)
        scalable.train(codes, n_threads=args.threads)
        sweep_name, sweep_values = "nprobe", args.nprobe
    else:
        _log(f"building HNSW (m={args.hnsw_m}, ef_construction={args.ef_construction}, {args.threads} threads)")
        scalable = fpmatch.HNSWIndex(args.bits, args.hnsw_m, args.ef_construction, args.ef_search[0])
        sweep_name, sweep_values = "ef_search", args.ef_search
    scalable.add(codes, ids, n_threads=args.threads)
    scalable_build_s = time.perf_counter() - t
    phases["scalable_build_s"] = scalable_build_s
    mac = os.urandom(32)
    scalable_bytes = len(scalable.serialize(mac))
    flat_bytes = len(flat.serialize(mac))
    del codes
    gc.collect()

    # -- timed searches, one query at a time, one thread ----------------------------
    _log(f"timing {nq} queries one at a time (k={k}, 1 thread)")
    t = time.perf_counter()
    plain_labels, plain_ns = _time_plain(plain, probes, k, args.warmup)
    flat_labels, flat_dist, flat_hash_ns, flat_ns = _time_hashed(flat, probe_scheme, probes, k, args.warmup, shortlist_depth)
    sweep = []
    for value in sweep_values:
        setattr(scalable, sweep_name, value)
        run_v = _time_hashed(scalable, probe_scheme, probes, k, args.warmup, shortlist_depth)
        lab, _ = _nearest_first(run_v[0], run_v[1])
        agree = float(np.mean(lab[:, 0] == plain_labels[:, 0]))
        sweep.append({sweep_name: value, "ms_per_query": _stats(run_v[3])["mean"], "rank1_agreement": agree,
                      "shortlist_recall_at_32": float(np.mean((lab[:, :32] == plain_labels[:, :1]).any(axis=1)))})
        _log(f"  {args.scalable} {sweep_name}={value}: {sweep[-1]['ms_per_query']:.3f} ms, rank-1 agreement {agree:.3f}")
        chosen = run_v
        if agree >= 0.97:
            break
    sc_labels, sc_dist, sc_hash_ns, sc_ns = chosen
    phases["timed_search_s"] = time.perf_counter() - t

    # Results are meant to come back nearest first; check, and order them if not,
    # so that rank-based figures do not depend on it (outside the timed region).
    flat_sorted = bool((np.diff(flat_dist, axis=1) >= 0).all())
    sc_sorted = bool((np.diff(sc_dist, axis=1) >= 0).all())
    flat_labels, flat_dist = _nearest_first(flat_labels, flat_dist)
    sc_labels, sc_dist = _nearest_first(sc_labels, sc_dist)

    # -- accuracy ---------------------------------------------------------------------
    plain_top1 = plain_labels[:, 0]
    shortlist = min(32, k)
    res: dict = {}
    res["n"] = n
    res["dim"] = dim
    res["profile"] = args.profile
    res["code_bits"] = args.bits
    res["scheme"] = args.scheme
    res["offset_removal"] = args.offset_removal if offset is not None else None
    res["scoring"] = args.scoring
    res["weighted_shortlist"] = shortlist_depth
    res["queries"] = nq
    res["search_k"] = k

    plain_t = _stats(plain_ns)
    flat_t = _stats(flat_ns)
    sc_t = _stats(sc_ns)
    hash_ns = np.concatenate([flat_hash_ns, sc_hash_ns])
    hash_t = _stats(hash_ns)
    flat_incl = _stats(flat_hash_ns + flat_ns)
    sc_incl = _stats(sc_hash_ns + sc_ns)

    res["plain_ms_per_query"] = plain_t["mean"]
    res["plain_ms_p50"] = plain_t["p50"]
    res["plain_ms_p99"] = plain_t["p99"]
    res["hash_probe_ms"] = hash_t["mean"]
    res["hash_probe_ms_p50"] = hash_t["p50"]
    res["hash_probe_ms_p99"] = hash_t["p99"]
    res["hash_flat_ms_per_query"] = flat_t["mean"]
    res["hash_flat_ms_p50"] = flat_t["p50"]
    res["hash_flat_ms_p99"] = flat_t["p99"]
    res["hash_flat_ms_per_query_incl_hashing"] = flat_incl["mean"]
    res["hash_flat_ms_p50_incl_hashing"] = flat_incl["p50"]
    res["hash_flat_ms_p99_incl_hashing"] = flat_incl["p99"]
    res["hash_scalable_ms_per_query"] = sc_t["mean"]
    res["hash_scalable_ms_p50"] = sc_t["p50"]
    res["hash_scalable_ms_p99"] = sc_t["p99"]
    res["hash_scalable_ms_per_query_incl_hashing"] = sc_incl["mean"]
    res["hash_scalable_ms_p50_incl_hashing"] = sc_incl["p50"]
    res["hash_scalable_ms_p99_incl_hashing"] = sc_incl["p99"]
    res["flat_speedup_vs_plain"] = plain_t["mean"] / flat_t["mean"]
    res["scalable_speedup_vs_plain"] = plain_t["mean"] / sc_t["mean"]
    res["flat_speedup_vs_plain_incl_hashing"] = plain_t["mean"] / flat_incl["mean"]
    res["scalable_speedup_vs_plain_incl_hashing"] = plain_t["mean"] / sc_incl["mean"]

    res["rank1_agreement_flat"] = float(np.mean(flat_labels[:, 0] == plain_top1))
    res["rank1_agreement_scalable"] = float(np.mean(sc_labels[:, 0] == plain_top1))
    res["shortlist_recall_at_32"] = float(
        np.mean((flat_labels[:, :shortlist] == plain_top1[:, None]).any(axis=1))
    )
    res["shortlist_recall_at_32_scalable"] = float(
        np.mean((sc_labels[:, :shortlist] == plain_top1[:, None]).any(axis=1))
    )
    res["plain_rank1_accuracy"] = float(np.mean(plain_top1 == probe_ids))
    res["hash_flat_rank1_accuracy"] = float(np.mean(flat_labels[:, 0] == probe_ids))
    res["hash_scalable_rank1_accuracy"] = float(np.mean(sc_labels[:, 0] == probe_ids))
    # HNSW against exact Hamming search: top-1 found at the exact best distance.
    res["scalable_recall_at_1_vs_flat"] = float(np.mean(sc_dist[:, 0] == flat_dist[:, 0]))
    res["flat_results_sorted"] = flat_sorted
    res["scalable_results_sorted"] = sc_sorted

    res[FAR_KEY] = {"plain": plain_tar["tar"], "hash": hash_tar["tar"]}
    res[f"{FAR_KEY}_plain"] = plain_tar["tar"]
    res[f"{FAR_KEY}_hash"] = hash_tar["tar"]
    res["far_achieved"] = {"plain": plain_tar["far"], "hash": hash_tar["far"]}
    res["far_achieved_plain"] = plain_tar["far"]
    res["far_achieved_hash"] = hash_tar["far"]
    res["verification"] = {"target_far": TARGET_FAR, "plain": plain_tar, "hash": hash_tar}

    res["bytes_per_template"] = probe_scheme.code_size
    res["plain_bytes_per_template"] = 4 * dim
    res["scalable_index"] = args.scalable
    res["scalable_serialized_bytes_per_template"] = scalable_bytes / n
    res["flat_serialized_bytes_per_template"] = flat_bytes / n
    res["enrol_per_s"] = n / enrol_s
    res["enrol_threads"] = args.threads
    res["scalable_build_s"] = scalable_build_s
    res["scalable_setting"] = sweep[-1]
    res["scalable_sweep"] = sweep

    res["offset_used"] = offset is not None
    res["offset_sample_mean_norm"] = other_mean_norm
    res["parameters"] = {
        "n": n,
        "profile": args.profile,
        "queries": nq,
        "bits": args.bits,
        "scheme": args.scheme,
        "offset_removal": args.offset_removal,
        "scoring": args.scoring,
        "shortlist": args.shortlist,
        "seed": args.seed,
        "scalable": args.scalable,
        "nlist": args.nlist,
        "prefix_bits": args.prefix_bits,
        "rerank": args.rerank,
        "nprobe_sweep": args.nprobe,
        "hnsw_m": args.hnsw_m,
        "ef_construction": args.ef_construction,
        "ef_search_sweep": args.ef_search,
        "threads": args.threads,
        "k": k,
        "warmup": args.warmup,
        "genuine_pairs": n_genuine,
        "impostor_pairs": args.impostor_pairs,
        "offset_samples": args.offset_samples,
        "quick": args.quick,
    }
    res["scan_kernel"] = fpmatch.scan_kernel()
    res["cpu_model"] = _cpu_model()
    res["cpu_count"] = os.cpu_count()
    res["numpy_version"] = np.__version__
    res["faiss_version"] = getattr(faiss, "__version__", "unknown")
    res["fpmatch_version"] = fpmatch.__version__
    res["python_version"] = platform.python_version()
    res["platform"] = platform.platform()
    res["timestamp"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    res["phases_s"] = phases
    res["peak_rss_mb"] = _peak_rss_mb()
    res["runtime_s"] = time.perf_counter() - t_start
    return res


def _setting(point: dict) -> str:
    name = "nprobe" if "nprobe" in point else "ef_search"
    return f"{name}={point[name]}"


def _table(r: dict) -> str:
    lines = [
        f"fpmatch search benchmark: n={r['n']:,}  profile={r['profile']} ({r['dim']}-D)  "
        f"bits={r['code_bits']}  queries={r['queries']}  k={r['search_k']}  "
        f"offset={'removed' if r['offset_used'] else 'none'}  kernel={r['scan_kernel']}",
        "",
        f"{'':<26}{'ms/query':>10}{'p50':>9}{'p99':>9}{'+hash ms':>10}{'speedup':>9}"
        f"{'rank-1 agr':>12}{'recall@32':>11}{'rank-1 acc':>12}",
        f"{'plain IndexFlatIP':<26}{r['plain_ms_per_query']:>10.3f}{r['plain_ms_p50']:>9.3f}"
        f"{r['plain_ms_p99']:>9.3f}{'-':>10}{1.0:>9.2f}{'-':>12}{'-':>11}{r['plain_rank1_accuracy']:>12.4f}",
        f"{'hash FlatIndex (exact)':<26}{r['hash_flat_ms_per_query']:>10.3f}{r['hash_flat_ms_p50']:>9.3f}"
        f"{r['hash_flat_ms_p99']:>9.3f}{r['hash_flat_ms_per_query_incl_hashing']:>10.3f}"
        f"{r['flat_speedup_vs_plain']:>9.2f}{r['rank1_agreement_flat']:>12.4f}"
        f"{r['shortlist_recall_at_32']:>11.4f}{r['hash_flat_rank1_accuracy']:>12.4f}",
        f"{'hash ' + r['scalable_index'].upper() + ' ' + _setting(r['scalable_setting']):<26}{r['hash_scalable_ms_per_query']:>10.3f}{r['hash_scalable_ms_p50']:>9.3f}"
        f"{r['hash_scalable_ms_p99']:>9.3f}{r['hash_scalable_ms_per_query_incl_hashing']:>10.3f}"
        f"{r['scalable_speedup_vs_plain']:>9.2f}{r['rank1_agreement_scalable']:>12.4f}"
        f"{r['shortlist_recall_at_32_scalable']:>11.4f}{r['hash_scalable_rank1_accuracy']:>12.4f}",
        "",
        f"probe hashing: {r['hash_probe_ms']:.3f} ms mean (p99 {r['hash_probe_ms_p99']:.3f})",
        f"TAR @ FAR 1e-4: plain {r[f'{FAR_KEY}_plain']:.4f} (FAR {r['far_achieved_plain']:.2e})   "
        f"hash {r[f'{FAR_KEY}_hash']:.4f} (FAR {r['far_achieved_hash']:.2e})",
        f"bytes/template: plain {r['plain_bytes_per_template']}   hash code {r['bytes_per_template']}   "
        f"{r['scalable_index'].upper()} serialised {r['scalable_serialized_bytes_per_template']:.1f}",
        f"enrolment: {r['enrol_per_s']:,.0f} templates/s ({r['enrol_threads']} threads)   "
        f"{r['scalable_index'].upper()} build: {r['scalable_build_s']:.2f} s",
        f"runtime {r['runtime_s']:.1f} s   peak RSS {r['peak_rss_mb']:,.0f} MB",
    ]
    for name, key in (("FlatIndex", "flat_results_sorted"), (r["scalable_index"], "scalable_results_sorted")):
        if not r[key]:
            lines.append(f"note: {name}.search returned neighbours out of distance order; re-ordered here")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, help="gallery size (enrolled identities)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="centred")
    p.add_argument("--queries", type=int, default=1000, help="mated probes, searched one at a time")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--bits", type=int, default=1024)
    p.add_argument("--scheme", choices=list(fpmatch.hashing.SCHEMES), default=fpmatch.hashing.SCHEME)
    p.add_argument("--offset-removal", type=float, default=fpmatch.hashing.DEFAULT_OFFSET_REMOVAL)
    p.add_argument(
        "--scoring",
        choices=["weighted", "hamming"],
        default="weighted",
        help="weighted: probe bit reliabilities re-rank a Hamming shortlist and score verification "
        "(as fpmatch.Gallery does); hamming: plain code-to-code distances",
    )
    p.add_argument(
        "--shortlist",
        type=int,
        help="weighted: Hamming neighbours re-ranked (default: as fpmatch.Gallery, 1024 with an offset, else 128)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scalable", choices=["ivf", "hnsw"], default="ivf", help="the scalable index to measure")
    p.add_argument("--nlist", type=int, default=1024, help="IVF lists")
    p.add_argument("--prefix-bits", type=int, default=256, help="IVF: code bits compared in the list scan")
    p.add_argument("--rerank", type=int, default=256, help="IVF: shortlist re-ranked by full codes")
    p.add_argument(
        "--nprobe",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[128, 256, 384, 512, 768],
        help="comma-separated IVF list counts to sweep; the headline is the smallest reaching "
        "rank-1 agreement 0.97, else the largest",
    )
    p.add_argument("--hnsw-m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=40)
    p.add_argument(
        "--ef-search",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[64, 128, 256, 512],
        help="comma-separated HNSW search beams to sweep (as --nprobe for IVF)",
    )
    p.add_argument("--threads", type=int, default=2, help="threads for enrolment and the HNSW build")
    p.add_argument("--k", type=int, default=32, help="neighbours per search (>= 32), same for every index")
    p.add_argument("--warmup", type=int, default=10, help="untimed queries before each timed loop")
    p.add_argument("--genuine-pairs", type=int, default=20000, help="genuine pairs: max(queries, this)")
    p.add_argument("--impostor-pairs", type=int, default=2_000_000)
    p.add_argument("--offset-samples", type=int, default=2000, help="non-enrolled samples for the offset")
    p.add_argument("--quick", action="store_true", help="smoke test: n=20000, queries=200 (overrides both)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.queries = 20000, 200
    if args.n is None:
        p.error("--n is required (or --quick)")
    if args.queries < 1 or args.impostor_pairs < 1 or args.threads < 1 or args.offset_samples < 2:
        p.error("--queries, --impostor-pairs, --threads must be >= 1 and --offset-samples >= 2")
    if args.impostor_pairs * TARGET_FAR < 1:
        _log(f"warning: {args.impostor_pairs} impostor pairs cannot resolve FAR {TARGET_FAR:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    missing = [key for key in REQUIRED_KEYS if key not in result]
    assert not missing, missing
    print(_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
