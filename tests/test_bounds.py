"""Sizes a caller controls are bounded before anything is allocated or started, and refused
with typed errors: search depths, index parameters, threads, message and file sizes."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from fpmatch import FlatIndex, HNSWIndex, InvalidInputError, IVFIndex, KeyFileError, ServiceKey
from fpmatch.he import reclaim
from fpmatch.he.context import PublicContext
from fpmatch.he.errors import CiphertextFormatError

HUGE = 1 << 40


def small_flat() -> FlatIndex:
    index = FlatIndex(64)
    index.add(np.zeros((3, 8), dtype=np.uint8), np.arange(3, dtype=np.int64))
    return index


@pytest.mark.parametrize("k", [0, -1, HUGE, (1 << 20) + 1, True, 2.0])
def test_search_depth_is_bounded_before_results_are_allocated(k: object) -> None:
    index = small_flat()
    query = np.zeros((1, 8), dtype=np.uint8)
    with pytest.raises(InvalidInputError):
        index.search(query, k)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        index.search_weighted(query, np.ones((1, 64), dtype=np.float32), k)  # type: ignore[arg-type]
    assert index.search(query, 1 << 20).labels.shape == (1, 1 << 20)  # the bound itself is allowed


def test_shortlists_and_beams_are_bounded() -> None:
    query = np.zeros((1, 8), dtype=np.uint8)
    with pytest.raises(InvalidInputError):
        small_flat().search_weighted(query, np.ones((1, 64), dtype=np.float32), 1, shortlist=HUGE)
    with pytest.raises(InvalidInputError):
        IVFIndex(64, nlist=4, rerank=HUGE)
    with pytest.raises(InvalidInputError):
        IVFIndex(64, nlist=4, nprobe=HUGE)
    with pytest.raises(InvalidInputError):
        HNSWIndex(64, ef_search=(1 << 20) + 1)
    index = HNSWIndex(64)
    with pytest.raises(InvalidInputError):
        index.ef_search = (1 << 20) + 1


def test_a_huge_thread_count_is_capped_not_obeyed() -> None:
    index = FlatIndex(64)
    codes = np.random.default_rng(0).integers(0, 256, size=(5000, 8), dtype=np.uint8)
    index.add(codes, np.arange(5000, dtype=np.int64), n_threads=1 << 30)
    found = index.search(codes[:600], 1, n_threads=1 << 30)
    assert np.array_equal(found.labels[:, 0], np.arange(600))


def test_reply_and_context_parsers_refuse_what_is_not_bytes_or_too_deep() -> None:
    with pytest.raises(CiphertextFormatError):
        reclaim.parse_reply(HUGE, key_id="00" * 8, n=8, q=97, rows=1)  # type: ignore[arg-type]
    meta = b"[" * 100_000
    with pytest.raises(CiphertextFormatError):
        PublicContext(b"FPHEPUB1" + struct.pack("<I", len(meta)) + meta)
    with pytest.raises(KeyFileError):
        ServiceKey.from_file_bytes(b"[" * 60_000)
    with pytest.raises(KeyFileError):
        ServiceKey.from_file_bytes(json.dumps({"format": "fpmatch-service-key"}).encode() + b" " * (1 << 16))
