"""Service tests run for every scheme the matching service offers; store tests also run on both
store backends (SQLite, and PostgreSQL on a throwaway server started once per session)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import postgres_support  # noqa: E402
import service_support  # noqa: E402

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(params=service_support.SCHEMES)
def scheme(request: pytest.FixtureRequest) -> Iterator[str]:
    """The scheme under test; :func:`service_support.open_service` uses it."""
    previous = service_support.SCHEME
    service_support.SCHEME = request.param
    try:
        yield request.param
    finally:
        service_support.SCHEME = previous


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: a test of the SQLite file itself; runs on that backend only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that use the ``backend`` fixture run on both backends, unless marked sqlite_only."""
    if "backend" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("sqlite_only") is not None
        metafunc.parametrize("backend", ["sqlite"] if only else list(BACKENDS), indirect=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres_support.PostgresServer]:
    """One throwaway PostgreSQL server for the session (skipped, with the reason, where none can run)."""
    reason = postgres_support.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    binaries = postgres_support.find_binaries()
    assert binaries is not None
    server = postgres_support.PostgresServer(binaries)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The store backend under test; :func:`service_support.open_service` and the other helpers use it."""
    server = request.getfixturevalue("postgres_server") if request.param == "postgres" else None
    previous = service_support.SERVER
    service_support.SERVER = server
    try:
        yield request.param
    finally:
        service_support.SERVER = previous
