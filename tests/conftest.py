"""Service tests run for every scheme the matching service offers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import service_support  # noqa: E402


@pytest.fixture(params=service_support.SCHEMES)
def scheme(request: pytest.FixtureRequest) -> Iterator[str]:
    """The scheme under test; :func:`service_support.open_service` uses it."""
    previous = service_support.SCHEME
    service_support.SCHEME = request.param
    try:
        yield request.param
    finally:
        service_support.SCHEME = previous
