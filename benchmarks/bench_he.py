#!/usr/bin/env python3
"""HE benchmark: the ``he`` and ``hybrid`` schemes beside plain cosine and ``hash``.

On synthetic face embeddings (:class:`fpmatch.synthetic.FaceGenerator`), one
run measures:

* 1:1 verification latency, ``he`` (packed gallery) and ``hybrid``: probe in,
  decision out, key holder in the same process;
* packed 1:N throughput at n = 10,000 and 100,000: templates scored per second
  on one core by the matching side (the encrypted inner products), and
  separately the key holder's decision time for the same request;
* ``hybrid`` identification latency at n = 100,000 (hash shortlist with an
  exact flat Hamming index, encrypted re-scoring, decision), and at
  n = 1,000,000 with the hash search run on 10^6 codes and the encrypted
  re-scoring run on that search's actual shortlist;
* 1:N at ``--n`` enrolled (default: the larger packed size) on ``--threads``
  threads: identification latency with the native scoring kernel beside the
  numpy reference it replaced (same gallery, same run), ciphertext bytes
  scanned per second beside a plain streaming read of the same arrays
  (``memory_bandwidth_gb_s``), plain faiss-cpu ``IndexFlatIP`` on the same
  templates (``plain_flat_ms``), and rank-1 agreement with plain cosine;
  a batch of ``--batch`` probes scored in one sweep (``he_identify_batch_per_s``:
  probes identified per second, key holder included, beside the matching
  side alone); enrolment rate and the gallery's resident memory against its
  ciphertext bytes;
* bytes per template of every scheme;
* TAR at FAR = 1e-4 of plain cosine, ``hash``, ``he`` and ``hybrid`` on the
  same pairs. Encrypted scores are computed from the secret-key decryption of
  the stored templates and the quantised probes, which is bit-identical to
  what the key holder decrypts; the run checks that identity on a sample.

Data: the gallery is one sample of each of n identities; probes are fresh
samples of enrolled identities (mated); impostor pairs pair a probe with
another identity's enrolled template. Latencies are single requests on one
thread, after warm-up. ``--quick`` runs everything at reduced sizes.

Usage::

    python benchmarks/bench_he.py --json reports/he.json
    python benchmarks/bench_he.py --quick --profile offset --json quick.json
    python benchmarks/bench_he.py --part he --n 1000000 --threads 2 --batch 16 --json reports/he_1m.json
    # the same as the first, in two shorter runs:
    python benchmarks/bench_he.py --part he --json reports/he.json
    python benchmarks/bench_he.py --part hybrid --update --json reports/he.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

from contextlib import nullcontext

import numpy as np
from _common import cpu_model as _cpu_model
from _common import log as _log
from _common import peak_rss_mb as _peak_rss_mb

import fpmatch
from fpmatch.codes import hamming_pairs
from fpmatch.gallery import default_shortlist
from fpmatch import CancellableHash, FlatIndex, HashKey, IVFIndex, _core, estimate_offset
from fpmatch.he import EncryptedGallery, HybridGallery, KeyHolder, PublicContext, RateLimit
from fpmatch.he.params import DEFAULT_PARAMS, HEParams
from fpmatch.he import _kernel, _zeros
from fpmatch.he._encoding import quantise
from fpmatch.he.audit import SecretKeyAudit
from fpmatch.synthetic import PROFILES, FaceGenerator

TARGET_FAR = 1e-4
FAR_KEY = "tar_at_far_1e-4"
CALLER = "bench"
CHUNK = 65536




def _ms(samples_ns: list[int]) -> dict[str, float]:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return {"p50": float(np.median(ms)), "mean": float(ms.mean()), "p95": float(np.percentile(ms, 95))}


def _timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter_ns()
    out = fn(*args, **kwargs)
    return out, time.perf_counter_ns() - start


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _tar(genuine: np.ndarray, impostor: np.ndarray, far: float) -> dict[str, float]:
    """Accept iff score >= threshold; the threshold is the lowest whose impostor FAR is <= far."""
    m = len(impostor)
    allowed = int(math.floor(far * m + 1e-9))
    kth = float(np.partition(impostor, m - 1 - allowed)[m - 1 - allowed])
    threshold = float(np.nextafter(kth, np.inf))
    return {
        "threshold": threshold,
        "tar": float(np.mean(genuine >= threshold)),
        "far": float(np.mean(impostor >= threshold)),
        "genuine_pairs": len(genuine),
        "impostor_pairs": m,
    }


def _tar_hash(genuine: np.ndarray, impostor: np.ndarray, far: float, bits: int) -> dict[str, float]:
    """Accept iff Hamming distance <= threshold; the largest threshold with FAR <= far."""
    far_at = np.cumsum(np.bincount(impostor, minlength=bits + 1)) / len(impostor)
    ok = np.flatnonzero(far_at <= far)
    threshold = int(ok[-1]) if len(ok) else -1
    return {
        "threshold_distance": threshold,
        "tar": float(np.mean(genuine <= threshold)),
        "far": float(np.mean(impostor <= threshold)),
        "genuine_pairs": len(genuine),
        "impostor_pairs": len(impostor),
    }


def _impostor_pairs(rng: np.random.Generator, n: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` pairs (a, b) of distinct indices below n."""
    a, b = rng.integers(0, n, count), rng.integers(0, n, count)
    same = a == b
    while same.any():
        b[same] = rng.integers(0, n, int(same.sum()))
        same = a == b
    return a, b


def _pair_scores(left: np.ndarray, a: np.ndarray, right: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(len(a), dtype=np.float64)
    for s in range(0, len(a), CHUNK):
        e = min(s + CHUNK, len(a))
        out[s:e] = np.einsum("ij,ij->i", left[a[s:e]], right[b[s:e]])
    return out


def _decrypted_packed(gallery: EncryptedGallery, audit: SecretKeyAudit, names: list[str]) -> np.ndarray:
    """The integer template values the secret key recovers from the packed gallery, per subject."""
    d, n = gallery.dim, gallery.block_size
    blocks: list[np.ndarray] = []
    current: list[np.ndarray] = []
    for c0, c1 in gallery.ciphertexts():
        current.append(audit.decrypt(c0, c1))
        if len(current) == d:
            blocks.append(np.stack(current).T)  # (n slots, d)
            current = []
    out = np.empty((len(names), d), dtype=np.float64)
    for i, name in enumerate(names):
        b, t = gallery.location(name)
        out[i] = blocks[b][t]
    assert all(block.shape == (n, d) for block in blocks)
    return out


def _decrypted_hybrid(gallery: HybridGallery, audit: SecretKeyAudit, names: list[str]) -> np.ndarray:
    d = gallery.dim
    rows = sorted({gallery.location(name)[0] for name in names})
    plain = {}
    ciphertexts = list(gallery.ciphertexts())
    for r in rows:
        plain[r] = audit.decrypt(*ciphertexts[r])
    out = np.empty((len(names), d), dtype=np.float64)
    for i, name in enumerate(names):
        r, p = gallery.location(name)
        out[i] = plain[r][p * d : (p + 1) * d]
    return out


def _python_scores(gallery: HybridGallery, names: list[str], probe: np.ndarray):  # type: ignore[no-untyped-def]
    """The request as built before the one native call: names turned into slots, the request assembled
    in Python over SEAL's NTT (the scoring kernels native)."""
    slots = np.array([gallery._slot[gallery.id_of(name)] for name in names], dtype=np.int64)
    return gallery.ciphertext_rows.request_reference(slots, gallery._probe_values(probe))


def _python_path(gallery: HybridGallery, probe: np.ndarray):  # type: ignore[no-untyped-def]
    """Shortlist and request as built before the one native call."""
    names = gallery.shortlist_for(probe)
    return names, _python_scores(gallery, names, probe)


class _Setup:
    """Data and parties shared by the parts of a run."""

    def __init__(self, args: argparse.Namespace, n_gen: int) -> None:
        profile = PROFILES[args.profile]
        self.dim = dim = profile.dim
        self.n_small = args.n_small
        _log(f"generating {n_gen} {dim}-D templates ({args.profile})")
        gen = FaceGenerator(profile, args.seed)
        self.gallery = np.empty((n_gen, dim), dtype=np.float32)
        first_ids = None
        for s in range(0, n_gen, CHUNK):
            e = min(s + CHUNK, n_gen)
            ids = gen.identities(e - s)
            self.gallery[s:e] = gen.samples(ids)
            if first_ids is None:
                first_ids = ids[: min(self.n_small, e - s)].copy()
        assert first_ids is not None and len(first_ids) == self.n_small
        self.probes = gen.samples(first_ids)  # mated probe i belongs to identity i
        self.full_dim_plain_tar = None
        self.basis: np.ndarray | None = None
        if args.dim is not None and args.dim != dim:
            self._reduce(args, gen)
            dim = self.dim
        self.names = [f"id{i:07d}" for i in range(n_gen)]
        self.unit_probes = _unit(self.probes)
        self.rng = np.random.default_rng(args.seed + 1)
        self.q_idx = self.rng.choice(self.n_small, min(args.queries, self.n_small), replace=False)
        self._tmp = TemporaryDirectory(prefix="bench-he-")
        limits = RateLimit(requests_per_second=1e9, burst=10**9, max_scores=1 << 23, max_k=100)
        params = HEParams(
            coeff_mod_bit_sizes=(args.data_prime_bits, DEFAULT_PARAMS.coeff_mod_bit_sizes[1]),
            template_scale_bits=args.template_scale_bits,
            probe_scale_bits=args.probe_scale_bits,
        )
        self.holder = KeyHolder(params, limits=limits)
        self.audit = SecretKeyAudit(self.holder.save(Path(self._tmp.name) / "he.key"))
        self.public = PublicContext(self.holder.public_context())
        # Enrolment-free identities of the same model (a generator with another seed
        # would be another model, with another offset direction).
        model_samples = gen.samples(gen.identities(5000))
        offset = estimate_offset(model_samples if self.basis is None else model_samples @ self.basis)
        self.scheme = CancellableHash(HashKey(np.random.default_rng(args.seed).bytes(32)), dim, args.bits, offset)
        # Verification pairs: probe i with enrolled template i (genuine) or j != i (impostor).
        n = self.n_small
        self.genuine = np.arange(n)
        self.imp_a, self.imp_b = _impostor_pairs(self.rng, n, args.impostor_pairs)
        enrolled = _unit(self.gallery[:n])
        self.plain_genuine = _pair_scores(self.unit_probes, self.genuine, enrolled, self.genuine)
        self.plain_impostor = _pair_scores(self.unit_probes, self.imp_a, enrolled, self.imp_b)
        self.plain_tar = _tar(self.plain_genuine, self.plain_impostor, TARGET_FAR)

    def _reduce(self, args: argparse.Namespace, gen: FaceGenerator) -> None:
        """Project gallery and probes on the top --dim principal directions of enrolment-free
        samples of the same model (what a model with fewer dimensions would give), keeping the
        full-dimension plain TAR of the same pairs for comparison."""
        n = self.n_small
        imp_a, imp_b = _impostor_pairs(np.random.default_rng(args.seed + 2), n, args.impostor_pairs)
        full_probes, full_enrolled = _unit(self.probes), _unit(self.gallery[:n])
        self.full_dim_plain_tar = _tar(
            _pair_scores(full_probes, np.arange(n), full_enrolled, np.arange(n)),
            _pair_scores(full_probes, imp_a, full_enrolled, imp_b),
            TARGET_FAR,
        )
        _, _, vt = np.linalg.svd(gen.samples(gen.identities(5000)).astype(np.float64), full_matrices=False)
        self.basis = basis = vt[: args.dim].T.astype(np.float32)
        _log(f"projecting {self.dim}-D templates on {args.dim} principal directions")
        for s in range(0, len(self.gallery), CHUNK):
            self.gallery[s : s + CHUNK, : args.dim] = self.gallery[s : s + CHUNK] @ basis
        self.gallery = self.gallery[:, : args.dim].copy()
        self.probes = np.ascontiguousarray(self.probes @ basis)
        self.dim = args.dim

    def encrypted_tar(self, decrypted: np.ndarray, probe_bits: int) -> tuple[dict, float, np.ndarray]:
        """TAR of scores rebuilt from decrypted templates, the worst error, and the probe weights."""
        weights = quantise(self.unit_probes, probe_bits).astype(np.float64)
        scale = 2.0 ** -(self.holder.params.template_scale_bits + probe_bits)
        genuine = _pair_scores(weights, self.genuine, decrypted, self.genuine) * scale
        impostor = _pair_scores(weights, self.imp_a, decrypted, self.imp_b) * scale
        worst = max(np.abs(genuine - self.plain_genuine).max(), np.abs(impostor - self.plain_impostor).max())
        return _tar(genuine, impostor, TARGET_FAR), float(worst), weights * scale

    def close(self) -> None:
        self._tmp.cleanup()


def _part_he(args: argparse.Namespace, d: _Setup, result: dict) -> None:
    """The packed gallery: 1:1 latency, 1:N throughput, TAR."""
    holder, names, probes, q_idx = d.holder, d.names, d.probes, d.q_idx
    packed: dict[int, EncryptedGallery] = {}
    enrol_rate = {}
    _warm_encryption(d.public, d.dim)
    for n in (args.n_small, args.n_large):
        _log(f"he: enrolling {n} templates into packed blocks")
        g, ns = _enrolled(d, n, result)
        packed[n] = g
        enrol_rate[n] = n / (ns / 1e9)
    result["he_enrol_per_s"] = enrol_rate[args.n_large]
    result["he_enrol"] = {
        "per_s": {str(n): rate for n, rate in enrol_rate.items()},
        "note": "templates encrypted and placed per second, in batches of 65,536; SEAL makes every "
        "ciphertext in worker processes (one per core; a block's worth each at a time while this "
        "process fills the blocks already made), started before timing (a service starts them once)",
    }
    g_small = packed[args.n_small]

    for i in q_idx[:5]:
        g_small.verify(names[i], probes[i], holder, 0.5, caller=CALLER)
    total, build, decide = [], [], []
    for i in q_idx:
        total.append(_timed(g_small.verify, names[i], probes[i], holder, 0.5, caller=CALLER)[1])
        request, ns_b = _timed(g_small.verification_request, names[i], probes[i])
        build.append(ns_b)
        decide.append(_timed(holder.decide, request.to_bytes(), 0.5, caller=CALLER)[1])
    result["verify_ms"] = _ms(total)["p50"]
    result["verify_he"] = {"total_ms": _ms(total), "matching_side_ms": _ms(build), "key_holder_ms": _ms(decide)}
    _log(f"he 1:1: {result['verify_ms']:.2f} ms per verification")

    throughput = {}
    reps = args.throughput_reps
    for n, g in packed.items():
        for i in q_idx[:2]:
            g.identification_request(probes[i])
        side, keyh, whole = [], [], []
        for i in q_idx[:reps]:
            (request, _slots), ns = _timed(g.identification_request, probes[i])
            side.append(ns)
            keyh.append(_timed(holder.best, request.to_bytes(), 0.5, 5, caller=CALLER)[1])
            whole.append(_timed(g.identify, probes[i], holder, 0.5, 5, caller=CALLER)[1])
        per_s = n / (np.median(side) / 1e9)
        with _kernel.reference_scoring():
            numpy_side = [_timed(g.identification_request, probes[i])[1] for i in q_idx[:reps]]
        entry = {
            "templates_per_s_per_core": per_s,
            "templates_per_s_per_core_numpy": n / (np.median(numpy_side) / 1e9),
            "matching_side_ms": _ms(side),
            "key_holder_ms": _ms(keyh),
            "key_holder_templates_per_s": n / (np.median(keyh) / 1e9),
            "identify_ms": _ms(whole),
            "blocks": math.ceil(n / g.block_size),
            "enrol_per_s": enrol_rate[n],
        }
        if args.threads > 1:
            g.n_threads = args.threads
            g.identification_request(probes[q_idx[0]])
            par = [_timed(g.identification_request, probes[i])[1] for i in q_idx[:reps]]
            entry[f"templates_per_s_{args.threads}_threads"] = n / (np.median(par) / 1e9)
            g.n_threads = 1
        throughput[str(n)] = entry
        _log(f"he 1:N n={n}: {per_s:,.0f} templates/s/core, key holder {entry['key_holder_ms']['p50']:.1f} ms")
    result["packed"] = throughput
    result["packed_templates_per_s_per_core"] = throughput[str(args.n_large)]["templates_per_s_per_core"]
    _part_scale(args, d, result, packed)

    _log("he: TAR at FAR 1e-4")
    decrypted = _decrypted_packed(g_small, d.audit, names[: args.n_small])
    tar, worst, weights = d.encrypted_tar(decrypted, g_small.probe_scale_bits)
    # What the key holder decrypts equals the rebuilt scores, bit for bit.
    for i in q_idx[:3]:
        request, slots = g_small.identification_request(probes[i])
        order = [int(g_small.subject_at(slot)[2:]) for slot in slots]
        assert np.array_equal(d.audit.scores(request), decrypted[order] @ weights[i]), "rebuilt scores differ"
    codes_g = d.scheme.protect(d.gallery[: args.n_small])
    codes_p = d.scheme.protect(probes)
    hash_genuine = hamming_pairs(codes_p, d.genuine, codes_g, d.genuine)
    hash_tar = _tar_hash(hash_genuine, hamming_pairs(codes_p, d.imp_a, codes_g, d.imp_b), TARGET_FAR, args.bits)
    details = {"plain": d.plain_tar, "hash": hash_tar, "he": tar}
    result.setdefault(FAR_KEY, {}).update({k: v["tar"] for k, v in details.items()})
    result.setdefault("tar_details", {}).update(details)
    result.setdefault("max_abs_score_error", {})["he"] = worst
    result.setdefault("bytes_per_template", {}).update(
        {"plain": 4 * d.dim, "hash": d.scheme.code_size, "he": g_small.bytes_per_template}
    )
    stored = packed[args.n_large].stored_bytes() / args.n_large
    result.setdefault("stored_bytes_per_enrolled_template", {})["he"] = stored


def _rss_bytes() -> int:
    """This process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _warm_encryption(public: PublicContext, dim: int) -> None:
    """Start the encryption worker processes and give them the public context, as a running
    service has them."""
    _zeros.start_workers(wait=60.0)
    public.encrypt_zeros(dim, packed=True)


def _enrolled(d: "_Setup", n: int, result: dict) -> tuple[EncryptedGallery, int]:
    """A packed gallery of the first n templates, the ns its enrolment took, and its resident memory."""
    before = _rss_bytes()
    g = EncryptedGallery(d.public, d.dim, n_threads=1)
    _, ns = _timed(_enrol, g, d.names[:n], d.gallery[:n])
    grown = _rss_bytes() - before
    result.setdefault("he_gallery_rss", {})[str(n)] = {
        "rss_growth_bytes": grown,
        "ciphertext_bytes": g.stored_bytes(),
        "rss_over_ciphertext_bytes": grown / g.stored_bytes(),
    }
    result[f"he_gallery_rss_bytes_{_label(n)}"] = grown
    return g, ns


def _enrol(gallery: EncryptedGallery, names: list[str], templates: np.ndarray) -> None:
    """Enrol in batches, so that memory holds one batch's staged blocks at a time."""
    for s in range(0, len(names), CHUNK):
        gallery.enrol(names[s : s + CHUNK], templates[s : s + CHUNK])


def _label(n: int) -> str:
    """1000000 -> "1m", 100000 -> "100k"."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _part_scale(args: argparse.Namespace, d: _Setup, result: dict, packed: dict[int, EncryptedGallery]) -> None:
    """1:N at --n: the native kernel against the numpy reference, memory bandwidth, plain IndexFlatIP."""
    import faiss

    holder, names, probes, q_idx = d.holder, d.names, d.probes, d.q_idx
    n, threads, reps = args.n, args.threads, args.throughput_reps
    g = packed.get(n)
    if g is None:
        _log(f"he: enrolling {n} templates for the --n run")
        g, ns = _enrolled(d, n, result)
        result["he_enrol"]["per_s"][str(n)] = n / (ns / 1e9)
    blocks = g.blocks.arrays()  # the arrays identification scans
    scanned = sum(block.nbytes for block in blocks)
    timed = q_idx[:reps]
    weights = quantise(d.unit_probes[q_idx[0]], g.probe_scale_bits)
    q = g.context.ring.q

    _log(f"plain IndexFlatIP on the same {n} templates")
    index = faiss.IndexFlatIP(d.dim)
    for s in range(0, n, CHUNK):
        index.add(_unit(d.gallery[s : min(s + CHUNK, n)]).astype(np.float32))
    unit_probes = d.unit_probes.astype(np.float32)

    def identify_once(i: int, n_threads: int, reference: bool, out: dict[str, list[int]]) -> None:
        g.n_threads = n_threads
        with _kernel.reference_scoring() if reference else nullcontext():
            (request, _slots), ns = _timed(g.identification_request, probes[i])
            out["side"].append(ns)
            out["key_holder"].append(_timed(holder.best, request.to_bytes(), 0.5, 5, caller=CALLER)[1])
            out["whole"].append(_timed(g.identify, probes[i], holder, 0.5, 5, caller=CALLER)[1])

    # One round of every measurement per probe, so that load from other jobs falls on all alike.
    _log(f"he n={n}: native kernel on {threads} thread(s) and on 1, numpy reference, plain read, IndexFlatIP")
    configs = {"native": (threads, False), "native_1_thread": (1, False), "numpy_reference": (1, True)}
    counts = sorted({threads, 1}, reverse=True)
    runs: dict[str, dict[str, list[int]]] = {name: {"side": [], "key_holder": [], "whole": []} for name in configs}
    kernel_ns: dict[int, list[int]] = {t: [] for t in counts}
    read_ns: dict[int, list[int]] = {t: [] for t in counts}
    plain_ns: dict[int, list[int]] = {t: [] for t in counts}
    for round_ in range(len(timed) + 1):  # the first round warms up and is dropped
        i = timed[max(0, round_ - 1)]
        keep = round_ > 0
        for t in counts:
            faiss.omp_set_num_threads(t)
            for samples, fn, call_args in (
                (read_ns[t], _core.modular_read, (blocks,)),
                (kernel_ns[t], _core.modular_combine, (blocks, weights, q)),
            ):
                ns = _timed(fn, *call_args, n_threads=t)[1]
                if keep:
                    samples.append(ns)
            ns = _timed(index.search, unit_probes[i : i + 1], 5)[1]
            if keep:
                plain_ns[t].append(ns)
        for name, (n_threads, reference) in configs.items():
            identify_once(i, n_threads, reference, runs[name] if keep else {k: [] for k in runs[name]})
    plain_ms = {t: _ms(ns) for t, ns in plain_ns.items()}
    plain_top = index.search(unit_probes[q_idx], 1)[1][:, 0]
    batch = _batch_rates(args, d, g, blocks, q)
    del index

    def gb_s(samples: list[int]) -> float:
        return scanned / float(np.median(samples))  # bytes per ns = GB/s

    _log(f"he n={n}: rank-1 against plain cosine ({len(q_idx)} probes)")
    g.n_threads = threads
    he_top = []
    for i in q_idx:
        found = g.identify(probes[i], holder, -1.0, 1, caller=CALLER)
        he_top.append(int(found[0].subject[2:]) if found else -1)

    ms = {name: {part: _ms(samples) for part, samples in run.items()} for name, run in runs.items()}
    label = _label(n)
    native, baseline = ms["native"]["whole"]["p50"], ms["numpy_reference"]["whole"]["p50"]
    result[f"he_identify_ms_{label}"] = native
    result[f"he_identify_ms_{label}_numpy"] = baseline
    result["he_scan_gb_s"] = gb_s(runs["native"]["side"])
    result["memory_bandwidth_gb_s"] = gb_s(read_ns[threads])
    result["plain_flat_ms"] = plain_ms[threads]["p50"]
    result[f"plain_flat_ms_{label}"] = plain_ms[threads]["p50"]
    result["he_bytes_per_template"] = g.bytes_per_template
    result[f"he_identify_batch_per_s_{label}"] = batch["identify_per_s"]
    result["he_batch"] = batch
    result["he_scale"] = {
        "n": n,
        "threads": threads,
        "kernel": _core.modular_kernels()[0],
        "ciphertext_bytes_scanned": scanned,
        "identify_ms": {name: m["whole"] for name, m in ms.items()},
        "matching_side_ms": {name: m["side"] for name, m in ms.items()},
        "key_holder_ms": {name: m["key_holder"] for name, m in ms.items()},
        "he_scan_gb_s": {name: gb_s(run["side"]) for name, run in runs.items()},
        "kernel_only_gb_s": {f"{t}_threads": gb_s(ns) for t, ns in kernel_ns.items()},
        "memory_bandwidth_gb_s": {f"{t}_threads": gb_s(ns) for t, ns in read_ns.items()},
        "plain_flat_ms": {f"{t}_threads": m for t, m in plain_ms.items()},
        "ratios": {
            "identify_speedup_vs_numpy": baseline / native,
            "identify_speedup_vs_numpy_1_thread": baseline / ms["native_1_thread"]["whole"]["p50"],
            "matching_side_speedup_vs_numpy": ms["numpy_reference"]["side"]["p50"] / ms["native"]["side"]["p50"],
            "he_scan_over_memory_bandwidth": gb_s(runs["native"]["side"]) / gb_s(read_ns[threads]),
            "he_identify_over_plain_flat": native / plain_ms[threads]["p50"],
        },
        "rank1_agreement_with_plain": float(np.mean(np.array(he_top) == plain_top)),
        "rank1_accuracy": {"plain": float(np.mean(plain_top == q_idx)), "he": float(np.mean(np.array(he_top) == q_idx))},
        "queries": {"timed": int(len(timed)), "rank1": int(len(q_idx))},
        "load_average": list(os.getloadavg()),
        "note": "identify: probe in, 5 best above 0.5 out, key holder in process; matching side: the encrypted "
        "scores only; numpy_reference: the scoring code the native kernel replaced, one thread; memory "
        "bandwidth: one plain read of the same ciphertext arrays; every measurement taken once per probe in "
        "turn; rank-1: top-1 of identify at threshold -1 (decision noise included) against IndexFlatIP's top-1",
    }
    _log(
        f"he n={n}: identify {native:.1f} ms native ({threads} threads) vs {baseline:.1f} ms numpy; scan "
        f"{result['he_scan_gb_s']:.1f} GB/s, read {result['memory_bandwidth_gb_s']:.1f} GB/s; plain "
        f"{result['plain_flat_ms']:.1f} ms; rank-1 agreement {result['he_scale']['rank1_agreement_with_plain']:.3f}"
    )


def _batch_rates(args: argparse.Namespace, d: "_Setup", g: EncryptedGallery, blocks: list, q: int) -> dict:
    """Probes per second when ``--batch`` probes share one sweep, beside one probe at a time."""
    probes = d.probes[d.q_idx[: args.batch]]
    g.n_threads = args.threads
    weights = np.stack([quantise(u, g.probe_scale_bits) for u in d.unit_probes[d.q_idx[: args.batch]]])
    g.identification_requests(probes)  # warm-up
    kernel, side, whole, single = [], [], [], []
    for _ in range(max(1, args.throughput_reps // 2)):
        kernel.append(_timed(_core.modular_combine, blocks, weights, q, n_threads=args.threads)[1])
        side.append(_timed(g.identification_requests, probes)[1])
        whole.append(_timed(g.identify_batch, probes, d.holder, 0.5, 5, caller=CALLER)[1])
        single.append(_timed(_core.modular_combine, blocks, weights[0], q, n_threads=args.threads)[1])
    m = len(probes)

    def per_s(samples: list[int], count: int) -> float:
        return count / (float(np.median(samples)) / 1e9)

    _log(f"he batch of {m}: {per_s(whole, m):.1f} probes/s identified, matching side {per_s(side, m):.1f}/s")
    return {
        "batch": m,
        "threads": args.threads,
        "identify_per_s": per_s(whole, m),
        "matching_side_per_s": per_s(side, m),
        "kernel_per_s": per_s(kernel, m),
        "kernel_one_probe_per_s": per_s(single, 1),
        "note": "identify: one sweep for the batch, then one key holder decision (5 best above 0.5) per "
        "probe, in process; matching side: the batch's encrypted scores only; kernel: the scoring sweep "
        "alone, for the batch and for one probe",
    }


def _part_hybrid(args: argparse.Namespace, d: _Setup, result: dict) -> None:
    """The hybrid scheme at n_large, the hash search at n_hash with HE on its shortlist, TAR."""
    holder, names, probes, q_idx, scheme = d.holder, d.names, d.probes, d.q_idx, d.scheme
    n_large, n_hash = args.n_large, args.n_hash
    _log(f"hybrid: enrolling {n_large} templates (codes + encrypted)")
    hybrid = HybridGallery(scheme, d.public, shortlist=args.shortlist)
    _, ns = _timed(hybrid.enrol, names[:n_large], d.gallery[:n_large])
    result["hybrid_enrol_per_s"] = n_large / (ns / 1e9)
    for i in q_idx[:5]:
        hybrid.identify(probes[i], holder, 0.5, caller=CALLER)
    total, search, rescore, decide, verify = [], [], [], [], []
    one_call, python_path = [], []
    for i in q_idx:
        total.append(_timed(hybrid.identify, probes[i], holder, 0.5, 5, caller=CALLER)[1])
        shortlist, ns_s = _timed(hybrid.shortlist_for, probes[i])
        request, ns_r = _timed(hybrid.scores_for, shortlist, probes[i])
        search.append(ns_s)
        rescore.append(ns_r)
        decide.append(_timed(holder.best, request.to_bytes(), 0.5, 5, caller=CALLER)[1])
        verify.append(_timed(hybrid.verify, names[i], probes[i], holder, 0.5, caller=CALLER)[1])
        first_native = len(one_call) % 2 == 0  # alternate which path runs first: no order bias
        if not first_native:
            (python_names, python), ns_p = _timed(_python_path, hybrid, probes[i])
        (native_names, native), ns_n = _timed(hybrid.shortlist_scores, probes[i])
        if first_native:
            (python_names, python), ns_p = _timed(_python_path, hybrid, probes[i])
        assert native_names == python_names and native is not None and native.to_bytes() == python.to_bytes()
        one_call.append(ns_n)
        python_path.append(ns_p)
    result["hybrid_ms_100k"] = _ms(total)["p50"]  # at n_large: 100,000 unless told otherwise
    result["hybrid_100k"] = {
        "n": n_large,
        "index": args.hash_index if args.hash_index == "flat" else f"ivf nlist={args.nlist} nprobe={args.nprobe}",
        "shortlist": args.shortlist,
        "total_ms": _ms(total),
        "hash_search_ms": _ms(search),
        "he_rescore_ms": _ms(rescore),
        "key_holder_ms": _ms(decide),
        "shortlist_and_scores_ms": {
            "native_one_call": _ms(one_call),
            "python_path": _ms(python_path),
            "speedup": _ms(python_path)["p50"] / _ms(one_call)["p50"],
            "note": "probe in, shortlist and encrypted scores out (identical bytes, checked per query): one native "
            "call (hash search, ids to slots, probe NTT, re-scoring) beside the path it replaced (search, Python "
            "glue, SEAL's NTT through a Python list, native scoring kernels)",
        },
    }
    result["verify_ms_hybrid"] = _ms(verify)["p50"]
    _log(f"hybrid n={n_large}: {result['hybrid_ms_100k']:.2f} ms per identification")

    _log(f"hash: protecting {n_hash} templates, {args.hash_index} index")
    index: FlatIndex | IVFIndex = FlatIndex(args.bits)
    if args.hash_index == "ivf":
        index = IVFIndex(args.bits, nlist=args.nlist, nprobe=args.nprobe)
    for s in range(0, n_hash, CHUNK):
        e = min(s + CHUNK, n_hash)
        codes = scheme.protect(d.gallery[s:e])
        if isinstance(index, IVFIndex) and not index.is_trained:
            index.train(codes)  # the first chunk: tens of thousands of codes
        index.add(codes, np.arange(s, e, dtype=np.int64))
    # As HybridGallery's hash stage (Gallery.identify): probe-weighted re-ranking of a Hamming shortlist.
    depth = default_shortlist(scheme)
    probe_codes, probe_weights = scheme.protect_with_reliability(probes[q_idx])
    index.search_weighted(probe_codes[:2], probe_weights[:2], args.shortlist, depth, n_threads=1)
    shortlists, search_ns = [], []
    for j in range(len(q_idx)):
        one = slice(j, j + 1)
        res, ns = _timed(index.search_weighted, probe_codes[one], probe_weights[one], args.shortlist, depth, n_threads=1)
        search_ns.append(ns)
        shortlists.append([int(x) for x in res.labels[0] if x >= 0])
    union = sorted({x for s in shortlists for x in s})
    shortlisted = HybridGallery(scheme, d.public, shortlist=args.shortlist)
    shortlisted.enrol([names[x] for x in union], d.gallery[union])
    # The one native call over the same index: ids with a slot are the shortlists' union, which holds
    # every id those searches return, so the call shortlists exactly what the search above did.
    rows = shortlisted.ciphertext_rows
    rows.n_threads = 1
    slot_of_id = np.full(n_hash, -1, dtype=np.int64)
    for x in union:
        row, position = shortlisted.location(names[x])
        slot_of_id[x] = row * shortlisted.group + position
    rescore_ns, decide_ns, whole_ns, one_call_ns, one_call_whole_ns, python_whole_ns = [], [], [], [], [], []
    for j, i in enumerate(q_idx):
        code_ns = _timed(scheme.protect_with_reliability, probes[i])[1]
        request, ns_r = _timed(_python_scores, shortlisted, [names[x] for x in shortlists[j]], probes[i])
        ns_d = _timed(holder.best, request.to_bytes(), 0.5, 5, caller=CALLER)[1]
        rescore_ns.append(ns_r)
        decide_ns.append(ns_d)
        whole_ns.append(code_ns + search_ns[j] + ns_r + ns_d)
        code, reliability = scheme.protect_with_reliability(probes[i])
        values = shortlisted._probe_values(probes[i])
        # The Python path's search again, next to the one call: both timed under the same load.
        search_again = (index.search_weighted, code, reliability, args.shortlist, depth)
        if j % 2:  # alternate which runs first, as above
            ns_s = _timed(*search_again, n_threads=1)[1]
        (ids, native), ns_n = _timed(
            rows.identify, index.native, code[0], reliability[0], args.shortlist, depth, slot_of_id, values
        )
        if not j % 2:
            ns_s = _timed(*search_again, n_threads=1)[1]
        assert ids == shortlists[j] and native is not None and native.to_bytes() == request.to_bytes()
        one_call_ns.append(ns_n)
        one_call_whole_ns.append(code_ns + ns_n + ns_d)
        python_whole_ns.append(code_ns + ns_s + ns_r + ns_d)
    result["hybrid_ms_1m"] = _ms(whole_ns)["p50"]  # at n_hash: 1,000,000 unless told otherwise
    result["hybrid_1m"] = {
        "n": n_hash,
        "index": args.hash_index if args.hash_index == "flat" else f"ivf nlist={args.nlist} nprobe={args.nprobe}",
        "shortlist": args.shortlist,
        "total_ms": _ms(whole_ns),
        "hash_search_ms": _ms(search_ns),
        "he_rescore_ms": _ms(rescore_ns),
        "key_holder_ms": _ms(decide_ns),
        "hamming_depth": depth,
        "note": "probe hashing with bit reliabilities + search over all codes (weighted re-ranking of a Hamming "
        "shortlist, as Gallery.identify) + encrypted re-scoring of that search's shortlist (Python glue over "
        "SEAL's NTT, as before the one native call) + decision",
        "native": {
            "total_ms": _ms(one_call_whole_ns),
            "one_call_ms": _ms(one_call_ns),
            "python_path_total_ms": _ms(python_whole_ns),
            "speedup": _ms(python_whole_ns)["p50"] / _ms(one_call_whole_ns)["p50"],
            "note": "probe hashing + one native call (search, ids to slots, probe NTT, re-scoring; one thread; "
            "the same shortlist and bytes as the search and re-scoring above, checked per query) + decision; "
            "python_path_total_ms: the same sum with the search (timed again beside the call) and the Python "
            "re-scoring; speedup: its median over total_ms's",
        },
    }
    result["hybrid_ms_1m_native"] = _ms(one_call_whole_ns)["p50"]
    _log(f"hybrid n={n_hash}: {result['hybrid_ms_1m']:.2f} ms per identification, "
         f"{result['hybrid_ms_1m_native']:.2f} ms with the one native call")

    _log("hybrid: TAR at FAR 1e-4, decisions against plain cosine")
    decrypted = _decrypted_hybrid(hybrid, d.audit, names[: args.n_small])
    tar, worst, _ = d.encrypted_tar(decrypted, hybrid.probe_scale_bits)
    result.setdefault(FAR_KEY, {}).update({"plain": d.plain_tar["tar"], "hybrid": tar["tar"]})
    result.setdefault("tar_details", {}).update({"plain": d.plain_tar, "hybrid": tar})
    result.setdefault("max_abs_score_error", {})["hybrid"] = worst
    threshold = d.plain_tar["threshold"]
    unit_gallery = _unit(d.gallery[:n_large]).astype(np.float32)
    index_of = {name: j for j, name in enumerate(names[:n_large])}
    agreement = {}
    for k in (1, 5):
        counts = {"identical": 0, "shortlist_miss": 0, "within_1e-3": 0, "other": 0}
        for i in q_idx:
            plain = unit_gallery @ d.unit_probes[i].astype(np.float32)
            order = np.argsort(-plain)[:k]
            expected = [names[j] for j in order if plain[j] >= threshold]
            got = [m.subject for m in hybrid.identify(probes[i], holder, threshold, k, caller=CALLER)]
            if got == expected:
                counts["identical"] += 1
                continue
            shortlist = set(hybrid.shortlist_for(probes[i]))
            involved = np.array([plain[index_of[name]] for name in set(expected) | set(got)])
            ranked = np.sort(np.array([plain[index_of[name]] for name in shortlist]))[::-1][: k + 1]
            if not set(expected) <= shortlist:
                counts["shortlist_miss"] += 1
            elif np.abs(involved - threshold).min() < 1e-3 or (np.diff(ranked) > -1e-3).any():
                counts["within_1e-3"] += 1
            else:
                counts["other"] += 1
        agreement[f"top{k}"] = counts
    result["hybrid_decisions_vs_plain"] = {
        "n": n_large,
        "threshold": threshold,
        "queries": int(len(q_idx)),
        "note": "plain: exact cosine over the whole gallery; shortlist_miss: a subject plain accepts is not "
        "in the hash shortlist; within_1e-3: the scores involved are within 1e-3 of the threshold or of each other",
        **agreement,
    }
    result.setdefault("bytes_per_template", {}).update(
        {"plain": 4 * d.dim, "hash": scheme.code_size, "hybrid": hybrid.bytes_per_template}
    )
    stored = hybrid.rows * 2 * d.public.ring.n * 8 / n_large + scheme.code_size
    result.setdefault("stored_bytes_per_enrolled_template", {})["hybrid"] = stored


def run(args: argparse.Namespace, result: dict | None = None) -> dict:
    """Run the selected parts, adding to ``result`` (a previous run's, with --update)."""
    result = {} if result is None else result
    n_gen = args.n_large if args.part == "he" else max(args.n_large, args.n_hash)
    if args.part in ("all", "he"):
        n_gen = max(n_gen, args.n)
    result.setdefault("load_average_at_start", {})[args.part] = list(os.getloadavg())
    data = _Setup(args, n_gen)
    try:
        if args.part in ("all", "he"):
            _part_he(args, data, result)
        if args.part in ("all", "hybrid"):
            _part_hybrid(args, data, result)
    finally:
        data.close()
    result.setdefault("load_average_at_end", {})[args.part] = list(os.getloadavg())
    result["params"] = {
        "poly_modulus_degree": data.holder.params.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(data.holder.params.coeff_mod_bit_sizes),
        "template_scale_bits": data.holder.params.template_scale_bits,
        "probe_scale_bits": data.holder.params.probe_scale_bits,
        "decision_noise": data.holder.decision_noise,
    }
    result.update(
        {
            "profile": args.profile,
            "dim": data.dim,
            "plain_tar_full_dim": data.full_dim_plain_tar,
            "quick": args.quick,
            "n_small": args.n_small,
            "n_large": args.n_large,
            "n_hash": args.n_hash,
            "n": args.n,
            "threads": args.threads,
            "queries": int(len(data.q_idx)),
            "impostor_pairs": args.impostor_pairs,
            "public_context_bytes": len(data.holder.public_context()),
            "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "peak_rss_mb": _peak_rss_mb(),
            "numpy_version": np.__version__,
            "fpmatch_version": fpmatch.__version__,
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    try:
        import tenseal

        result["tenseal_version"] = tenseal.__version__
    except Exception:  # pragma: no cover
        pass
    return result


def _table(r: dict) -> str:
    b, t = r.get("bytes_per_template", {}), r.get(FAR_KEY, {})
    lines = [f"{'scheme':<8} {'bytes/template':>15} {'TAR@FAR=1e-4':>13}"]
    lines += [f"{k:<8} {b[k]:>15,} {t[k]:>13.4f}" for k in ("plain", "hash", "he", "hybrid") if k in b and k in t]
    if r.get("plain_tar_full_dim"):
        lines.append(f"plain before projecting to {r['dim']}-D: TAR@FAR=1e-4 {r['plain_tar_full_dim']['tar']:.4f}")
    if "verify_ms" in r:
        lines.append(f"he 1:1 verify            {r['verify_ms']:.2f} ms")
        for n, v in r["packed"].items():
            lines.append(
                f"he packed 1:N n={n:<8} {v['templates_per_s_per_core']:>12,.0f} templates/s/core, "
                f"key holder {v['key_holder_ms']['p50']:.1f} ms"
            )
    if "he_scale" in r:
        s = r["he_scale"]
        label = _label(s["n"])
        lines += [
            f"he identify n={s['n']:<8} {r[f'he_identify_ms_{label}']:.1f} ms native ({s['threads']} threads, "
            f"{s['kernel']}) vs {r[f'he_identify_ms_{label}_numpy']:.1f} ms numpy reference "
            f"({s['ratios']['identify_speedup_vs_numpy']:.2f}x)",
            f"he scan {r['he_scan_gb_s']:.1f} GB/s, plain read {r['memory_bandwidth_gb_s']:.1f} GB/s, "
            f"plain IndexFlatIP {r['plain_flat_ms']:.1f} ms, rank-1 agreement {s['rank1_agreement_with_plain']:.3f}",
        ]
    if "he_batch" in r:  # results of earlier versions lack it
        b = r["he_batch"]
        lines.append(
            f"he batch of {b['batch']}: {b['identify_per_s']:.1f} probes/s identified (matching side "
            f"{b['matching_side_per_s']:.1f}/s; one probe's sweep {b['kernel_one_probe_per_s']:.1f}/s); "
            f"enrolment {r['he_enrol_per_s']:,.0f}/s"
        )
    if "hybrid_ms_100k" in r:
        h = r["hybrid_1m"]
        lines += [
            f"hybrid 1:1 verify        {r['verify_ms_hybrid']:.2f} ms",
            f"hybrid identify n={r['hybrid_100k']['n']:<7} {r['hybrid_ms_100k']:.2f} ms",
            f"hybrid identify n={h['n']:<7} {r['hybrid_ms_1m']:.2f} ms (hash {h['hash_search_ms']['p50']:.2f} + "
            f"HE {h['he_rescore_ms']['p50']:.2f} + key holder {h['key_holder_ms']['p50']:.2f})",
        ]
        if "native" in h:  # results of earlier versions lack it
            lines.append(
                f"hybrid identify n={h['n']:<7} {h['native']['total_ms']['p50']:.2f} ms with one native call "
                f"({h['native']['one_call_ms']['p50']:.2f} ms; {h['native']['speedup']:.2f}x)"
            )
    lines.append(f"max |encrypted - plain| score: {r.get('max_abs_score_error')}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--quick", action="store_true", help="reduced sizes (a smoke run)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="centred")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-small", type=int, default=10_000)
    p.add_argument("--n-large", type=int, default=100_000)
    p.add_argument("--n-hash", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--throughput-reps", type=int, default=10)
    p.add_argument("--impostor-pairs", type=int, default=2_000_000)
    p.add_argument("--bits", type=int, default=1024)
    p.add_argument("--shortlist", type=int, default=32)
    p.add_argument("--hash-index", choices=["flat", "ivf"], default="flat", help="hash stage of the 1M hybrid run")
    p.add_argument("--nlist", type=int, default=2048, help="IVF lists for --hash-index ivf")
    p.add_argument("--nprobe", type=int, default=848, help="IVF lists probed for --hash-index ivf")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of the multithreaded figures")
    p.add_argument("--n", type=int, default=None, help="enrolled templates of the 1:N scaling figures (default --n-large)")
    p.add_argument("--batch", type=int, default=16, help="probes scored in one sweep for the batch figures")
    p.add_argument("--dim", type=int, default=None,
                   help="project templates on this many principal directions (fewer bytes per template)")
    p.add_argument("--data-prime-bits", type=int, default=DEFAULT_PARAMS.coeff_mod_bit_sizes[0],
                   help="bits of the CKKS data prime (a smaller modulus needs smaller scales)")
    p.add_argument("--template-scale-bits", type=int, default=DEFAULT_PARAMS.template_scale_bits)
    p.add_argument("--probe-scale-bits", type=int, default=DEFAULT_PARAMS.probe_scale_bits)
    p.add_argument("--part", choices=["all", "he", "hybrid"], default="all", help="run only part of the benchmark")
    p.add_argument("--update", action="store_true", help="add to the results already in --json")
    args = p.parse_args(argv)
    if args.quick:
        args.n_small = min(args.n_small, 2000)
        args.n_large = min(args.n_large, 5000)
        args.n_hash = min(args.n_hash, 20_000)
        args.queries = min(args.queries, 20)
        args.throughput_reps = min(args.throughput_reps, 3)
        args.impostor_pairs = min(args.impostor_pairs, 200_000)
    if not 0 < args.n_small <= args.n_large:
        p.error("need 0 < --n-small <= --n-large")
    if args.n is None:
        args.n = args.n_large
    if not args.n_small <= args.n or args.threads < 1 or args.batch < 1:
        p.error("need --n >= --n-small, --threads >= 1 and --batch >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    previous = None
    if args.update and args.json and args.json.exists():
        previous = json.loads(args.json.read_text())
    result = run(args, previous)
    print(_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
