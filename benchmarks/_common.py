"""Helpers shared by the benchmark scripts (run them from the repository root): logging, machine
facts, and the data and parties of the service benchmarks (``bench_service``, ``bench_cluster``)."""

from __future__ import annotations

import datetime as _dt
import platform
import resource
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

import numpy as np

#: Identities in the labelled set the services are calibrated from (two samples each).
LABELLED_IDENTITIES = 2000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class Workload:
    """Synthetic subjects of a service benchmark: the gallery, mated probes of its first
    ``queries`` subjects, a labelled calibration set, and the model offset (None: centred)."""

    dim: int
    names: list[str]
    gallery: np.ndarray
    mated: np.ndarray
    labelled: np.ndarray
    labels: np.ndarray
    offset: np.ndarray | None

    @property
    def queries(self) -> int:
        return len(self.mated)


def workload(profile: str, seed: int, n: int, queries: int) -> Workload:
    """The same draws, in the same order, for every service benchmark of a profile and seed."""
    from fpmatch import estimate_offset
    from fpmatch.synthetic import FaceGenerator

    faces = FaceGenerator(profile, seed)
    log(f"generating {n} identities ({profile}, {faces.profile.dim}-D)")
    people = faces.identities(n)
    gallery = faces.samples(people)
    mated = faces.samples(people[: min(queries, n)])
    offset = estimate_offset(faces.samples(faces.identities(LABELLED_IDENTITIES))) if profile != "centred" else None
    labelled_people = faces.identities(LABELLED_IDENTITIES)
    labelled = np.concatenate([faces.samples(labelled_people), faces.samples(labelled_people)])
    labels = np.tile(np.arange(LABELLED_IDENTITIES), 2)
    names = [f"customer-{i:08d}" for i in range(n)]
    return Workload(faces.profile.dim, names, gallery, mated, labelled, labels, offset)


def parties(scheme: str, dim: int, index: str, offset: np.ndarray | None = None) -> tuple[Any, dict[str, Any]]:
    """The capture edge (a fresh hash key) and the service's open options: the index, and for the
    encrypted schemes an in-process key holder with limits no run reaches."""
    from fpmatch import CaptureEdge, HashKey

    holder = None
    options: dict[str, Any] = {"index": index}
    if scheme != "hash":
        from fpmatch.he import KeyHolder, RateLimit

        holder = KeyHolder(limits=RateLimit(requests_per_second=1e9, burst=10**9, max_decisions=64))
        options["keyholder"] = holder
    edge = CaptureEdge(
        HashKey.generate(), dim, scheme=scheme, offset=offset,
        public_context=None if holder is None else holder.public_context(),
    )  # fmt: skip
    return edge, options


def consents(names: Sequence[str], purpose: str = "entry") -> list[Any]:
    """A year's separate, signed consent to ``purpose`` for each subject, granted now."""
    from fpmatch import ConsentRecord

    now = _dt.datetime.now(_dt.timezone.utc)
    return [
        ConsentRecord(name, frozenset({purpose}), now, now + timedelta(days=365), "v1", f"form-{name}", "signed-form", True)
        for name in names
    ]


def identify_throughput(service: Any, messages: Sequence[Any], threads: int, seconds: float) -> float:
    """Identifications per second (k=1) by ``threads`` callers, each sending random probes for ``seconds``."""
    done = 0
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def caller(seed: int) -> None:
        nonlocal done
        rng = np.random.default_rng(seed)
        count = 0
        while time.perf_counter() < stop:
            service.identify(messages[int(rng.integers(len(messages)))], "entry", k=1)
            count += 1
        with lock:
            done += count

    t0 = time.perf_counter()
    workers = [threading.Thread(target=caller, args=(s,)) for s in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return done / (time.perf_counter() - t0)
