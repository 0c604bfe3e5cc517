"""Concurrency stress: many threads enrol, withdraw, verify, identify and save against one
service for a fixed time; afterwards (and after a reopen) every invariant holds."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from fpmatch import VerificationOutcome
from service_support import ManualClock, calibrate, enrol_people, grant, open_service, sample

MATCH = VerificationOutcome.MATCH
SECONDS = 3.0
RESIDENTS = [f"r{i}" for i in range(24)]


@pytest.mark.parametrize("scheme", ["hash", "hybrid"], indirect=True)
def test_mixed_traffic_keeps_every_invariant(tmp_path: Path, scheme: str) -> None:
    clock = ManualClock()
    errors: list[str] = []
    acknowledged: dict[str, bool] = {}  # newcomer -> enrolled (True) or withdrawn (False), once the call returned
    lock = threading.Lock()
    stop = threading.Event()
    with open_service(tmp_path / "store", clock, max_face_failures=None) as svc:
        enrol_people(svc, RESIDENTS)
        calibrate(svc)
        probes = {name: svc.edge.probe(sample(name, 1)) for name in RESIDENTS}

        def guarded(body):
            def run(*args: object) -> None:
                try:
                    body(*args)
                except Exception as exc:  # reported below with the thread that saw it
                    errors.append(f"{body.__name__}: {exc!r}")
                    stop.set()

            return run

        @guarded
        def writer(index: int) -> None:
            rng = random.Random(index)
            mine = [f"w{index}-{i}" for i in range(10_000)]
            for n, name in enumerate(mine):
                if stop.is_set():
                    return
                grant(svc.service, name)
                svc.enrol(name, sample(name, 0))
                with lock:
                    acknowledged[name] = True
                if n >= 2 and rng.random() < 0.5:
                    gone = mine[n - 2]
                    if acknowledged.get(gone):
                        svc.withdraw(gone)
                        with lock:
                            acknowledged[gone] = False

        @guarded
        def reader(index: int) -> None:
            rng = random.Random(100 + index)
            while not stop.is_set():
                name = rng.choice(RESIDENTS)
                if (got := svc.service.verify(name, probes[name], "entry")) is not MATCH:
                    raise AssertionError(f"resident {name}: {got}")
                found = svc.service.identify(probes[name], "entry", k=1)
                if [m.subject for m in found] != [name]:
                    raise AssertionError(f"identify {name}: {found}")
                with lock:
                    withdrawn = [s for s, on in acknowledged.items() if not on]
                if withdrawn:
                    gone = rng.choice(withdrawn)
                    if (got := svc.verify(gone, sample(gone, 1), "entry")) is MATCH:
                        raise AssertionError(f"withdrawn {gone} matched")

        @guarded
        def saver() -> None:
            while not stop.is_set():
                svc.save_index()
                time.sleep(0.05)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
        threads += [threading.Thread(target=reader, args=(i,)) for i in range(3)]
        threads.append(threading.Thread(target=saver))
        for t in threads:
            t.start()
        stop.wait(SECONDS)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        expected = set(RESIDENTS) | {name for name, on in acknowledged.items() if on}
        assert sum(acknowledged.values()) >= 3 and not all(acknowledged.values())  # the writers did write
        assert set(svc.enrolled()) == expected
        report = svc.check_integrity()
        assert report.ok, report.problems
    with open_service(tmp_path / "store", clock, max_face_failures=None) as again:
        assert set(again.enrolled()) == expected
        assert again.audit_verify().ok
        gone = [name for name, on in acknowledged.items() if not on]
        assert all(again.verify(name, sample(name, 1), "entry") is not MATCH for name in gone[:10])
