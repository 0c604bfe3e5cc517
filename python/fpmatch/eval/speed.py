"""Speed against gallery size: enrolment rate and verify / identify latency of every scheme, one thread."""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Sequence

import numpy as np

from .._progress import ProgressFactory, silent
from ..codes import weighted_pairs
from ..errors import InvalidInputError
from ..gallery import default_shortlist
from ..hashing import DEFAULT_BITS, CancellableHash, estimate_offset
from ..index import FlatIndex, IVFIndex
from ..synthetic import PROFILES, FaceGenerator
from ._shared import bench_key, import_he, run_key_holder
from .data import OFFSET_SAMPLES


#: Largest gallery the encrypted schemes are timed at by default: enrolment runs at
#: a few thousand templates a second and a template takes 8 KB (512-D).
ENCRYPTED_MAX_N = 100_000
_ZERO = np.zeros(1, dtype=np.int64)
#: Plain and hash enrolment rates in the speed sweep are timed on at most this many templates per size.
_RATE_SAMPLE = 20_000
_GENERATE_CHUNK = 65536


def ivf_lists(n: int) -> int:
    """IVF list count used for a gallery of ``n``: about sqrt(n), between 16 and 1024."""
    return int(min(1024, max(16, round(math.sqrt(n)))))


def speed_vs_gallery_size(
    sizes: Sequence[int] = (1000, 10_000, 100_000),
    *,
    profile: str = "centred",
    seed: int = 0,
    bits: int = DEFAULT_BITS,
    queries: int = 200,
    warmup: int = 10,
    k: int = 10,
    encrypted_max_n: int = ENCRYPTED_MAX_N,
    shortlist: int = 32,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Single-thread enrolment rate and verify / identify latency against gallery size, per scheme.

    Schemes: faiss ``IndexFlatIP`` on raw templates (the baseline), hash with an
    exact flat index and with IVF, ``he`` (packed encrypted gallery) and ``hybrid``
    (hash shortlist of ``shortlist``, encrypted re-scoring), the last two with an
    in-process key holder deciding, at the sizes up to ``encrypted_max_n`` (0: none).
    Galleries are nested prefixes of one synthetic draw, enrolled in increments:
    the rate at a size is that of the templates added since the previous size.
    Probes are fresh samples of ``queries`` enrolled people, one at a time;
    identification asks for the ``k`` best, verification claims the probe's own
    identity. The plain baseline is left out (with a note) when faiss is not
    importable, the encrypted ones when TenSEAL is not. IVF uses
    :func:`ivf_lists` lists and scans half of them.
    """
    chosen = sorted({int(v) for v in sizes})
    if not chosen or chosen[0] < 16:
        raise InvalidInputError("gallery sizes must be at least 16")
    if queries < 1 or warmup < 0 or k < 1 or shortlist < 1 or encrypted_max_n < 0:
        raise InvalidInputError("queries, k and shortlist must be positive, warmup and encrypted_max_n non-negative")
    if profile not in PROFILES:
        raise InvalidInputError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    bar = silent if progress is None else progress
    faiss = _import_faiss()
    notes = [] if faiss is not None else ["faiss is not importable: no plain IndexFlatIP baseline"]
    he = import_he() if encrypted_max_n > 0 else None
    if encrypted_max_n > 0 and he is None:
        notes.append("TenSEAL is not installed: no he / hybrid timings (pip install fpmatch[he])")
    encrypted_sizes = [n for n in chosen if n <= encrypted_max_n] if he is not None else []
    load_start = _load_average()
    started = time.perf_counter()

    faces = FaceGenerator(profile, seed)
    rng = np.random.default_rng([seed, 0x5EED])
    probe_ids = {n: rng.choice(n, queries, replace=queries > n) for n in chosen}
    needed = np.unique(np.concatenate(list(probe_ids.values())))
    dim = faces.profile.dim
    largest = chosen[-1]
    gallery = np.empty((largest, dim), dtype=np.float32)
    kept = np.empty((len(needed), dim), dtype=np.float32)
    with bar(f"{profile}: drawing {largest:,} faces", math.ceil(largest / _GENERATE_CHUNK)) as step:
        for start in range(0, largest, _GENERATE_CHUNK):
            stop = min(largest, start + _GENERATE_CHUNK)
            people = faces.identities(stop - start)
            gallery[start:stop] = faces.samples(people)
            low, high = np.searchsorted(needed, [start, stop])
            kept[low:high] = people[needed[low:high] - start]
            step.update()
    offset = estimate_offset(faces.samples(faces.identities(OFFSET_SAMPLES)))
    # One thread everywhere, enrolment included, so that schemes compare like for like.
    scheme = CancellableHash(bench_key(seed), dim, bits, offset=offset, n_threads=1)
    bulk = CancellableHash(bench_key(seed), dim, bits, offset=offset)  # the same codes, on every core
    galleries = _SpeedGalleries(gallery, scheme, bulk, faiss, he if encrypted_sizes else None, shortlist)

    points: list[dict[str, Any]] = []
    threads_before = faiss.omp_get_max_threads() if faiss is not None else 0
    try:
        if faiss is not None:
            faiss.omp_set_num_threads(1)
        with bar(f"{profile}: timing gallery sizes", len(chosen)) as step:
            for n in chosen:
                truth = probe_ids[n]
                probes = faces.samples(kept[np.searchsorted(needed, truth)])
                point = galleries.grow(n, encrypted=n in encrypted_sizes)
                point.update(_time_size(n, galleries, probes, truth, k, warmup))
                points.append(point)
                step.update()
    finally:
        if faiss is not None:
            faiss.omp_set_num_threads(threads_before)
    encrypted: dict[str, Any] = {"max_n": encrypted_max_n, "timed_sizes": encrypted_sizes}
    if he is not None:
        encrypted.update(
            {
                "skipped_sizes": [n for n in chosen if n > encrypted_max_n],
                "key_holder": "in-process KeyHolder: verify and identify include its decision",
                "identify_threshold": "-1 (the k best, as the other schemes' searches return)",
                "hybrid": f"flat hash index, shortlist {shortlist}",
            }
        )
        skipped = encrypted["skipped_sizes"]
        if skipped and not encrypted_sizes:
            encrypted["reason"] = f"every size is above encrypted_max_n ({encrypted_max_n:,})"
        elif skipped:
            last = next(p for p in reversed(points) if "he_enrol_per_s" in p)
            rate = min(last["he_enrol_per_s"], last["hybrid_enrol_per_s"])
            size = max(galleries.bytes_per_template["he"], galleries.bytes_per_template["hybrid"])
            encrypted["reason"] = (
                f"the slower encrypted enrolment ran at {rate:,.0f} templates/s (at {last['n']:,}) and a template "
                f"takes up to {size:,} bytes: "
                f"{skipped[-1]:,} would take about {skipped[-1] / rate / 60:.0f} min and "
                f"{skipped[-1] * size / 2**30:.1f} GiB per scheme; benchmarks/bench_he.py times hybrid "
                "identification at 1,000,000 codes (reports/he_*.json)"
            )
    return {
        "profile": profile,
        "dim": dim,
        "bits": bits,
        "k": k,
        "queries": queries,
        "warmup": warmup,
        "threads": 1,
        "plain": "faiss IndexFlatIP over raw float32 templates" if faiss is not None else None,
        "faiss_version": getattr(faiss, "__version__", "unknown") if faiss is not None else None,
        "ivf": "IVFIndex with about sqrt(n) lists (16 to 1024), half of them scanned, prefix 256 bits, re-rank 256",
        "bytes_per_template": galleries.bytes_per_template,
        "encrypted": encrypted,
        "timings": {
            "enrol_per_s": "templates enrolled per second growing the gallery from the previous size to n; "
            f"plain and hash time at most {_RATE_SAMPLE:,} of them (the rest are enrolled untimed, hashed on "
            "every core), he and hybrid all of them",
            "verify_ms": "probe in, decision out, for the probe's own identity: plain, an inner product with the "
            "stored template; hash, probe hashing (with bit reliabilities) and one weighted Hamming distance; "
            "he / hybrid, an encrypted score and the key holder's decision",
            "identify_ms": "probe in, k best out: plain and hash_flat_ms / hash_ivf_ms search only (a Hamming "
            "shortlist (Gallery's default: 1024 with an offset, else 128) re-ranked by probe-weighted "
            "distance, as Gallery.identify; "
            "hash_probe_ms hashes the probe; hash_identify_ms is both); he / hybrid, probe encoding, encrypted "
            "scoring and the key holder's choice",
        },
        "points": points,
        "notes": notes,
        "load_average": {"start": load_start, "end": _load_average()},
        "total_s": time.perf_counter() - started,
    }


class _SpeedGalleries:
    """Every scheme's gallery, grown through the sizes of :func:`speed_vs_gallery_size`."""

    def __init__(
        self, templates: np.ndarray, scheme: CancellableHash, bulk: CancellableHash, faiss: Any, he: Any, shortlist: int
    ) -> None:
        self.templates = templates
        self.scheme = scheme
        self.bulk = bulk
        self.faiss = faiss
        self.size = 0
        self.codes = np.empty((len(templates), scheme.code_size), dtype=np.uint8)
        self.flat = FlatIndex(scheme.bits)
        self.plain = faiss.IndexFlatIP(templates.shape[1]) if faiss is not None else None
        self.names = [f"subject-{i:07d}" for i in range(len(templates))]
        self.bytes_per_template: dict[str, int] = {"plain": 4 * templates.shape[1], "hash": scheme.code_size}
        self.holder: Any = None
        self.packed: Any = None
        self.hybrid: Any = None
        if he is not None:
            self.holder = run_key_holder(he)
            public = he.PublicContext(self.holder.public_context())
            self.packed = he.EncryptedGallery(public, templates.shape[1])
            self.hybrid = he.HybridGallery(scheme, public, shortlist=shortlist)
            self.bytes_per_template["he"] = self.packed.bytes_per_template
            self.bytes_per_template["hybrid"] = self.hybrid.bytes_per_template

    def grow(self, n: int, *, encrypted: bool) -> dict[str, Any]:
        """Enrol rows up to ``n`` into every gallery; enrolment rates of the increment."""
        rows = slice(self.size, n)
        added = n - self.size
        # Plain and hash rates come from a sample of the increment: hashing a
        # million templates on one thread would take minutes and say nothing more.
        timed = min(added, _RATE_SAMPLE)
        head, tail = slice(self.size, self.size + timed), slice(self.size + timed, n)
        point: dict[str, Any] = {"n": n}
        if self.plain is not None:
            begin = time.perf_counter()
            self.plain.add(np.ascontiguousarray(self.templates[head]))
            point["plain_enrol_per_s"] = timed / max(time.perf_counter() - begin, 1e-9)
            self.plain.add(np.ascontiguousarray(self.templates[tail]))
        begin = time.perf_counter()
        self.codes[head] = self.scheme.protect(self.templates[head])
        self.flat.add(self.codes[head], np.arange(head.start, head.stop, dtype=np.int64))
        point["hash_enrol_per_s"] = timed / max(time.perf_counter() - begin, 1e-9)
        if tail.stop > tail.start:
            for start in range(tail.start, tail.stop, _GENERATE_CHUNK):
                chunk = slice(start, min(tail.stop, start + _GENERATE_CHUNK))
                self.codes[chunk] = self.bulk.protect(self.templates[chunk])
            self.flat.add(self.codes[tail], np.arange(tail.start, tail.stop, dtype=np.int64))
        if encrypted:
            for name, target in (("he", self.packed), ("hybrid", self.hybrid)):
                begin = time.perf_counter()
                # In chunks: encoding a whole increment at once would hold several
                # float64 copies of it, more than the ciphertexts of a million.
                for start in range(rows.start, rows.stop, _GENERATE_CHUNK):
                    chunk = slice(start, min(rows.stop, start + _GENERATE_CHUNK))
                    target.enrol(self.names[chunk], self.templates[chunk])
                point[f"{name}_enrol_per_s"] = added / max(time.perf_counter() - begin, 1e-9)
            point["he_stored_bytes_per_template"] = self.packed.stored_bytes() / n
        elif self.packed is not None:
            self.holder = self.packed = self.hybrid = None  # past the cap: free the ciphertexts
        self.size = n
        return point

    def row(self, subject: str) -> int:
        return int(subject.rsplit("-", 1)[1])


def _time_size(
    n: int, galleries: _SpeedGalleries, probes: np.ndarray, truth: np.ndarray, k: int, warmup: int
) -> dict[str, Any]:
    """Latencies and rank-1 figures at one gallery size (the first ``n`` rows)."""
    scheme = galleries.scheme
    depth = min(k, n)
    hash_ns = np.empty(len(probes), dtype=np.int64)
    probe_codes = np.empty((len(probes), scheme.code_size), dtype=np.uint8)
    probe_weights = np.empty((len(probes), scheme.bits), dtype=np.float32)
    for q in range(len(probes)):
        t0 = time.perf_counter_ns()
        code, weights = scheme.protect_with_reliability(probes[q])
        hash_ns[q] = time.perf_counter_ns() - t0
        probe_codes[q], probe_weights[q] = code[0], weights[0]
    point: dict[str, Any] = {"hash_probe_ms": _latency(hash_ns)}

    if galleries.plain is not None:
        plain = galleries.plain
        ns, top = _timed_searches(lambda q: plain.search(probes[q : q + 1], depth)[1][0, 0], len(probes), warmup)
        point["plain_ms"] = _latency(ns)
        point["plain_rank1"] = float(np.mean(top == truth))
    stored = galleries.templates

    def plain_verify(q: int) -> int:
        return int(float(np.dot(stored[truth[q]], probes[q])) > 0.0)

    point["plain_verify_ms"] = _latency(_timed_searches(plain_verify, len(probes), warmup)[0])

    def hash_verify(q: int) -> int:  # as Gallery.verify: probe-weighted distance to the claimed code
        code, weights = scheme.protect_with_reliability(probes[q])
        distance = weighted_pairs(code, weights, _ZERO, galleries.codes, truth[q : q + 1])[0]
        return int(scheme.weighted_score(float(distance)) > 0.0)

    point["hash_verify_ms"] = _latency(_timed_searches(hash_verify, len(probes), warmup)[0])

    flat = galleries.flat
    ns, flat_top = _timed_searches(
        lambda q: flat.search_weighted(
            probe_codes[q : q + 1], probe_weights[q : q + 1], depth, default_shortlist(scheme), n_threads=1
        ).labels[0, 0],
        len(probes),
        warmup,
    )
    point["hash_flat_ms"] = _latency(ns)
    point["hash_identify_ms"] = _latency(ns + hash_ns)
    point["hash_flat_rank1"] = float(np.mean(flat_top == truth))

    codes = galleries.codes[:n]
    lists = ivf_lists(n)
    ivf = IVFIndex(scheme.bits, nlist=lists, nprobe=max(1, lists // 2))
    ivf.train(codes)
    ivf.add(codes, np.arange(n, dtype=np.int64))
    ns, ivf_top = _timed_searches(
        lambda q: ivf.search_weighted(
            probe_codes[q : q + 1], probe_weights[q : q + 1], depth, default_shortlist(scheme), n_threads=1
        ).labels[0, 0],
        len(probes),
        warmup,
    )
    point["hash_ivf_ms"] = _latency(ns)
    point["hash_ivf_rank1"] = float(np.mean(ivf_top == truth))
    point["ivf_top1_agreement_with_flat"] = float(np.mean(ivf_top == flat_top))
    point["ivf_nlist"] = lists
    point["ivf_nprobe"] = ivf.nprobe
    del ivf

    if galleries.packed is not None and galleries.size == n and "he" in galleries.bytes_per_template:
        holder, names = galleries.holder, galleries.names
        for name, target in (("he", galleries.packed), ("hybrid", galleries.hybrid)):

            def verify(q: int, target: Any = target) -> int:
                return int(target.verify(names[truth[q]], probes[q], holder, 0.5, caller="speed").verified)

            def identify(q: int, target: Any = target) -> int:
                found = target.identify(probes[q], holder, -1.0, depth, caller="speed")
                return galleries.row(found[0].subject) if found else -1

            point[f"{name}_verify_ms"] = _latency(_timed_searches(verify, len(probes), warmup)[0])
            ns, top = _timed_searches(identify, len(probes), warmup)
            point[f"{name}_identify_ms"] = _latency(ns)
            point[f"{name}_rank1"] = float(np.mean(top == truth))
    return point


def _timed_searches(search: Callable[[int], Any], count: int, warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """Run ``search(q)`` for every query after ``warmup`` untimed ones; (nanoseconds, top labels)."""
    for q in range(warmup):
        search(q % count)
    times = np.empty(count, dtype=np.int64)
    tops = np.empty(count, dtype=np.int64)
    for q in range(count):
        t0 = time.perf_counter_ns()
        tops[q] = search(q)
        times[q] = time.perf_counter_ns() - t0
    return times, tops


def _latency(ns: np.ndarray) -> dict[str, float]:
    ms = np.asarray(ns, dtype=np.float64) / 1e6
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


__all__ = [
    "ENCRYPTED_MAX_N",
    "ivf_lists",
    "speed_vs_gallery_size",
]
