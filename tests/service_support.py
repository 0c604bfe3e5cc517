"""Shared helpers for the consent, audit, store and service tests (not a test module).

Service tests run once per scheme: the ``scheme`` fixture (conftest.py) sets
:data:`SCHEME`, and :func:`open_service` returns a :class:`Deployment` (a real
capture edge beside a real service) for it. Store tests also run once per
backend: the ``backend`` fixture sets :data:`SERVER` (None for SQLite), and
every store directory then gets a PostgreSQL schema of its own
(:func:`database_for`).
"""

from __future__ import annotations

import os
import sqlite3
import zlib
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from fpmatch import CaptureEdge, HashKey, MatchingService, PinVerifier, ServiceKey
from fpmatch.he import KeyHolder, RateLimit

DIM = 128
KEY = HashKey(bytes(range(32)))  # the capture edge's transform key
SERVICE_KEY = ServiceKey(bytes(range(100, 132)))
SCHEMES = ("hash", "he", "hybrid")
SCHEME = "hash"  # set per test by the ``scheme`` fixture
SERVER: Any = None  # the PostgreSQL server under test (postgres_support.PostgresServer), set by ``backend``
_DATABASES: dict[Path, str] = {}  # store directory -> its PostgreSQL schema
#: Limits no test reaches; the key holder's own limits are tested in test_he_keyholder.py.
OPEN_LIMITS = RateLimit(requests_per_second=1e9, burst=10**9, max_decisions=64)
_KEYHOLDER: list[KeyHolder] = []
START = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
TARGET_FMR = 1e-3


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def identity(name: str, dim: int = DIM) -> np.ndarray:
    """A fixed identity direction per name, so separate processes agree on it."""
    return unit(np.random.default_rng(zlib.crc32(name.encode())).standard_normal(dim))


def sample(name: str, draw: int, dim: int = DIM) -> np.ndarray:
    """Sample ``draw`` of ``name``'s face: 0.8 identity + 0.6 noise (mates score about 0.64)."""
    noise = unit(np.random.default_rng([zlib.crc32(name.encode()), draw]).standard_normal(dim))
    return unit(0.8 * identity(name, dim) + 0.6 * noise)


def stranger(seed: int, dim: int = DIM) -> np.ndarray:
    return unit(np.random.default_rng([7, seed]).standard_normal(dim))


def labelled_set(n: int = 300, dim: int = DIM, seed: int = 99) -> tuple[np.ndarray, np.ndarray]:
    """Two samples each of ``n`` unrelated people, for threshold calibration."""
    names = [f"calibration-{seed}-{i}" for i in range(n)]
    templates = np.stack([sample(name, draw) for draw in (0, 1) for name in names])
    return templates, np.tile(np.arange(n), 2)


def keyholder() -> KeyHolder:
    """One key holder per test process (key generation is the slow part)."""
    if not _KEYHOLDER:
        _KEYHOLDER.append(KeyHolder(limits=OPEN_LIMITS))
    return _KEYHOLDER[0]


def edge(scheme: str | None = None, key: HashKey = KEY, dim: int = DIM) -> CaptureEdge:
    scheme = SCHEME if scheme is None else scheme
    context = keyholder().public_context() if scheme in ("he", "hybrid") else None
    return CaptureEdge(key, dim, scheme=scheme, public_context=context)


class Deployment:
    """A capture edge and a matching service: templates go through the edge, the rest to the service."""

    def __init__(self, service: MatchingService, capture: CaptureEdge) -> None:
        self.service = service
        self.edge = capture

    def __getattr__(self, name: str) -> Any:
        return getattr(self.service, name)

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.service.close()

    def __len__(self) -> int:
        return len(self.service)

    def __contains__(self, subject: object) -> bool:
        return subject in self.service

    def enrol(self, subject: str, template: np.ndarray) -> None:
        self.service.enrol(subject, self.edge.enrolment(template))

    def enrol_many(self, subjects: Sequence[str], templates: np.ndarray) -> None:
        self.service.enrol_many(subjects, self.edge.enrolments(templates))

    def verify(self, subject: str, probe: np.ndarray, purpose: str) -> Any:
        return self.service.verify(subject, self.edge.probe(probe), purpose)

    def identify(self, probe: np.ndarray, purpose: str, k: int = 5) -> Any:
        return self.service.identify(self.edge.probe(probe), purpose, k)

    def calibrate(
        self, target_fmr: float | None = None, templates: np.ndarray | None = None, labels: np.ndarray | None = None
    ) -> float:
        if templates is None:
            return self.service.calibrate(target_fmr)
        assert labels is not None and target_fmr is not None
        return self.service.calibrate(calibration=self.edge.calibration(templates, labels, target_fmr, max_pairs=40_000))


def decider_options(scheme: str | None = None) -> dict[str, Any]:
    """What MatchingService.open needs beside the store for ``scheme``: the key holder, if it decides."""
    return {"keyholder": keyholder()} if (SCHEME if scheme is None else scheme) in ("he", "hybrid") else {}


def database_for(directory: Path) -> str | None:
    """The PostgreSQL connection string of the store kept for ``directory`` (a schema of its own,
    made at first use); None on the SQLite backend."""
    if SERVER is None:
        return None
    where = Path(directory).resolve()
    if where not in _DATABASES:
        _DATABASES[where] = SERVER.conninfo()
    return _DATABASES[where]


def store_options(directory: Path) -> dict[str, Any]:
    """What MatchingService.open and Store.open need beside the directory on the backend under test."""
    database = database_for(directory)
    return {} if database is None else {"database": database}


def open_store(directory: Path, key: ServiceKey = SERVICE_KEY, **kwargs: Any) -> Any:
    from fpmatch.store import Store

    return Store.open(directory, key, **store_options(directory), **kwargs)


class _Raw:
    """Statements with ``?`` placeholders on either backend, outside fpmatch (to damage a store)."""

    def __init__(self, execute: Any) -> None:
        self._execute = execute

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._execute(sql, tuple(args))


@contextmanager
def raw(directory: Path) -> Iterator[_Raw]:
    """A connection to the closed store of ``directory``, committed when the block ends."""
    from fpmatch.store import DATABASE

    database = database_for(directory)
    if database is None:
        db = sqlite3.connect(directory / DATABASE)
        try:
            with db:
                yield _Raw(db.execute)
        finally:
            db.close()
        return
    import psycopg

    with psycopg.connect(database) as conn:  # commits when the block ends
        yield _Raw(lambda sql, args: conn.execute(sql.replace("?", "%s"), args))


def open_service(
    directory: Path, clock: ManualClock, scheme: str | None = None, key: ServiceKey = SERVICE_KEY, **kwargs: Any
) -> Deployment:
    capture = edge(scheme)
    for name, value in store_options(directory).items():
        kwargs.setdefault(name, value)
    kwargs.setdefault("alternative", PinVerifier(cost=2**10, clock=clock))
    if capture.profile.encrypted:
        kwargs.setdefault("keyholder", keyholder())
    service = MatchingService.open(directory, key, edge=capture.profile, clock=clock, **kwargs)
    return Deployment(service, capture)


def calibrate(service: Deployment) -> float:
    templates, labels = labelled_set()
    return service.calibrate(TARGET_FMR, templates, labels)


def grant(
    service: MatchingService,
    subject: str,
    purposes: Sequence[str] = ("entry",),
    days: float = 365,
    **kwargs: Any,
) -> Any:
    return service.grant_consent(
        subject,
        purposes,
        notice_version=kwargs.pop("notice_version", "privacy-notice-3.1"),
        evidence_ref=kwargs.pop("evidence_ref", f"form-{subject}"),
        method=kwargs.pop("method", "signed-form"),
        separate=kwargs.pop("separate", True),
        retention=timedelta(days=days),
        **kwargs,
    )


def enrol_people(
    service: MatchingService, names: Iterable[str], purposes: Sequence[str] = ("entry",), days: float = 365
) -> None:
    for name in names:
        grant(service, name, purposes, days)
        service.enrol(name, sample(name, 0))


def files_containing(directory: Path, needle: bytes) -> list[str]:
    """Every file under ``directory`` whose bytes contain ``needle``."""
    hits = []
    for root, _, files in os.walk(directory):
        for name in files:
            path = Path(root, name)
            if needle in path.read_bytes():
                hits.append(str(path.relative_to(directory)))
    return sorted(hits)


def protected_bytes(source: Any, subject: str) -> list[bytes]:
    """What the store holds of ``subject``'s template, read from its database: the code and
    (encrypted schemes) the coefficients of c0 that encrypt the template (he: the subject's
    column; hybrid: its window of a packed row). ``source`` is a
    store directory, or an open service (a SQLite one owns its database exclusively)."""
    with raw(source) if isinstance(source, Path) else source.store._reading() as db:
        query = db.execute
        code, slot, sealed = query("SELECT code, slot, sealed FROM subjects WHERE subject = ?", (subject,)).fetchone()
        held = [bytes(part) for part in (code, sealed) if part is not None]
        if slot is not None and sealed is None:
            (data,) = query("SELECT data FROM he_rows WHERE row = ?", (slot // _group(),)).fetchone()
            c0 = bytes(data)[len(data) // 2 :]
            position = slot % _group()
            width = DIM * 6  # values are stored in 6 bytes (fpmatch.he._packing)
            held.append(c0[position * width : (position + 1) * width])
    return held


def _group() -> int:
    from fpmatch.he.context import PublicContext

    return PublicContext(keyholder().public_context()).ring.n // DIM


def windows(data: bytes, size: int = 16) -> list[bytes]:
    """Non-overlapping ``size``-byte slices of ``data``."""
    return [data[i : i + size] for i in range(0, len(data) - size + 1, size)]
