"""Crash safety: a writer process enrolling and withdrawing in a loop is killed
with SIGKILL at random moments (and at chosen ones); after each kill the store
reopens with database and index in agreement, no half-enrolled subject, no
withdrawn subject back, an intact audit chain, and no erased code in any file."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import service_support
from fpmatch import MatchingService, ServiceKey, VerificationOutcome
from fpmatch.store import INDEX_CACHE
from service_support import SERVICE_KEY, decider_options, edge, keyholder, sample, windows

pytestmark = pytest.mark.usefixtures("scheme")  # every test runs for every scheme

WRITER = Path(__file__).resolve().parent / "crash_writer.py"
ROUNDS = 5


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """The keys directory a writer process opens: the service key and the key holder's secret."""
    keys = tmp_path / "keys"
    keys.mkdir()
    ServiceKey(SERVICE_KEY.secret).save(keys / "service.key")
    if service_support.SCHEME != "hash":
        keyholder().save(keys / "keyholder.key")
    return keys


def start_writer(directory: Path, key_file: Path, round_: int, log: Path, *extra: str) -> subprocess.Popen:
    scheme = service_support.SCHEME
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(directory), str(key_file), scheme, str(round_), str(log), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"writer did not start: {line!r} {proc.communicate()[1][-2000:]}")
    return proc


def withdrawn_log(log: Path) -> dict[str, list[bytes]]:
    """Withdrawn subject -> the protected bytes the store held of them."""
    if not log.exists():
        return {}
    text = log.read_text()
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]  # a line cut by the kill is not a claim
    entries = (line.split(" ") for line in complete.splitlines())
    return {name: [bytes.fromhex(part) for part in parts.split(",")] for name, parts in entries}


def withdrawn_names(log: Path) -> set[str]:
    return set(withdrawn_log(log))


def check_store(directory: Path, log: Path) -> tuple[str, int]:
    """Reopen after a crash and check every invariant; returns the cache status and subject count."""
    claimed_withdrawn = withdrawn_names(log)
    capture = edge()
    with MatchingService.open(directory, SERVICE_KEY, **decider_options()) as svc:
        integrity = svc.check_integrity()
        assert integrity.ok, integrity.problems
        in_db = svc.store.subject_ids()
        in_index = {name: svc.gallery.id_of(name) for name in svc.gallery.subjects()}
        assert in_db == in_index
        if capture.profile.hashed:
            assert sorted(svc.gallery.index.ids().tolist()) == sorted(in_db.values())
            for row in svc.store.templates():  # no half-written code: each is exactly its subject's
                assert row.code == capture.enrolment(sample(row.subject, 0)).code.tobytes(), row.subject
        for name in sorted(in_db)[:5]:  # and each template still decides as its subject's
            assert svc.gallery.decide(name, capture.probe(sample(name, 1)), 0.3)
        consents = svc.store.consents()
        for name in in_db:
            assert any(c.subject == name and c.withdrawn_at is None for c in consents), name
        assert not claimed_withdrawn & set(in_db)
        fully_withdrawn = {c.subject for c in consents if c.withdrawn_at is not None}
        assert claimed_withdrawn <= fully_withdrawn and not fully_withdrawn & set(in_db)
        for name in sorted(fully_withdrawn)[:5]:
            assert svc.verify(name, capture.probe(sample(name, 1)), "entry") is VerificationOutcome.USE_ALTERNATIVE
        status = svc.cache_status
        count = len(svc)
    contents = [path.read_bytes() for path in directory.rglob("*") if path.is_file()]
    for name, parts in withdrawn_log(log).items():
        for piece in (w for part in parts for w in windows(part)):
            assert not any(piece in data for data in contents), name
    return status, count


def test_sigkill_at_random_points_leaves_a_consistent_store(tmp_path: Path, key_file: Path) -> None:
    directory, log = tmp_path / "store", tmp_path / "withdrawn.log"
    rng = random.Random(20260301)
    statuses, progress = [], []
    started = time.monotonic()
    for round_ in range(ROUNDS):
        proc = start_writer(directory, key_file, round_, log)
        # he opens a new block (d fresh encryptions) on its first enrolment after each start
        time.sleep(rng.uniform(0.05, 0.8) + (1.0 if service_support.SCHEME == "he" else 0.0))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        progress.append(len(out.split()))
        status, count = check_store(directory, log)
        statuses.append(status)
    assert sum(progress) > 10, progress  # the writer got somewhere before being killed
    assert len(withdrawn_names(log)) > 0
    assert set(statuses) <= {"missing", "stale", "loaded"}  # a kill never leaves a corrupt cache behind
    # A bound on the test's own length; he restarts cost a new block each (about 50 s in all here).
    assert time.monotonic() - started < (120 if service_support.SCHEME == "he" else 60)


@pytest.mark.parametrize("point", ["enrol-committed", "withdraw-committed", "cache-written"])
def test_sigkill_at_the_worst_moments(tmp_path: Path, key_file: Path, point: str) -> None:
    if point == "cache-written" and service_support.SCHEME == "he":
        pytest.skip("the he scheme keeps no code index, so it writes no index cache")
    directory, log = tmp_path / "store", tmp_path / "withdrawn.log"
    proc = start_writer(directory, key_file, 0, log)  # a first life, killed anywhere, leaves some state
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    before = check_store(directory, log)[1]
    proc = start_writer(directory, key_file, 1, log, point)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    status, after = check_store(directory, log)
    if point == "enrol-committed":
        assert after == before + 1  # committed before the crash: enrolled, and the rebuilt gallery has it
    if point == "enrol-committed" and edge().profile.hashed:
        with MatchingService.open(directory, SERVICE_KEY, **decider_options()) as svc:
            stored = svc.gallery.index.reconstruct(np.array([svc.gallery.id_of("r1-0")], dtype=np.int64))
            assert stored.tobytes() == edge().enrolment(sample("r1-0", 0)).code.tobytes()
    if point == "withdraw-committed":
        assert after == before  # one enrolled, one withdrawn
    if point == "cache-written":
        assert status in ("missing", "stale", "loaded")
        assert not list(directory.glob(f"{INDEX_CACHE}.*.tmp"))
