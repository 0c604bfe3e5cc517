"""Every fuzz target (fuzz/targets.py) over its seed corpus and a few thousand mutated and
random inputs: each parser accepts or refuses with a typed fpmatch error, and never changes
what it accepts. The long, coverage-guided runs are ``make fuzz``."""

from __future__ import annotations

import functools
import random
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fuzz"))

import targets  # noqa: E402

#: Inputs per target beyond its seeds; parsers that touch files or TenSEAL get fewer.
BUDGET = {"store_file": 150, "public_context": 60, "he_key_file": 60, "keyholder_request": 400, "http_request": 400}
DEFAULT_BUDGET = 2500
_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits of the kinds that break length-checked formats."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[min(at, len(out) - 1)] = rng.choice(_INTERESTING)
        elif op == 2:
            del out[at:]
        elif op == 3:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        elif op == 4 and len(out) >= 8:  # a length or count field made huge, negative or zero
            at = min(at, len(out) - 8)
            width = rng.choice([2, 4, 8])
            out[at : at + width] = rng.choice([b"\xff" * width, b"\x00" * width, b"\x7f" + b"\xff" * (width - 1)])
        elif op == 5 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randrange(1, 64)]
        elif op == 6 and out:
            del out[at : at + rng.randrange(1, 32)]
    return bytes(out)


def inputs(name: str, seeds: list[bytes], budget: int) -> Iterator[bytes]:
    rng = random.Random(f"fpmatch-fuzz-{name}")
    yield from seeds
    yield b""
    for i in range(budget):
        if seeds and i % 10:
            yield mutate(rng.choice(seeds), rng)
        else:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))


@functools.cache
def _context_seeds() -> dict[str, list[bytes]]:
    import seeds

    return seeds.seeds(public_context=True)


def seeds_of(name: str) -> list[bytes]:
    folder = targets.corpus_dir(name)
    found = [path.read_bytes() for path in sorted(folder.iterdir())] if folder.is_dir() else []
    if name in ("public_context", "he_key_file", "keyholder_request"):  # made with a real TenSEAL context
        found.extend(_context_seeds()[name])
    return found


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_target_takes_its_corpus_and_mutations(name: str) -> None:
    seeds = seeds_of(name)
    assert seeds, f"no seeds for {name}: run python fuzz/seeds.py"
    target = targets.TARGETS[name]
    for data in inputs(name, seeds, BUDGET.get(name, DEFAULT_BUDGET)):
        try:
            target(data)
        except Exception as exc:  # report the input that did it, so it can be replayed
            raise AssertionError(f"{name} failed on {data[:200]!r} ({len(data)} bytes): {exc!r}") from exc
