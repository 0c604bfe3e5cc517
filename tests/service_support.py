"""Shared helpers for the consent, audit, store and service tests (not a test module)."""

from __future__ import annotations

import os
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from fpmatch import HashKey, MatchingService, PinVerifier

DIM = 128
KEY = HashKey(bytes(range(32)))
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


def open_service(directory: Path, clock: ManualClock, **kwargs: Any) -> MatchingService:
    kwargs.setdefault("dim", DIM)
    kwargs.setdefault("alternative", PinVerifier(cost=2**10, clock=clock))
    return MatchingService.open(directory, KEY, clock=clock, **kwargs)


def calibrate(service: MatchingService) -> float:
    templates, labels = labelled_set()
    return service.calibrate(TARGET_FMR, templates, labels, max_pairs=40_000)


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


def windows(data: bytes, size: int = 16) -> list[bytes]:
    """Non-overlapping ``size``-byte slices of ``data``."""
    return [data[i : i + size] for i in range(0, len(data) - size + 1, size)]
