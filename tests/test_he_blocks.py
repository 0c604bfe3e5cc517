"""Column-packed ciphertext blocks of the service's ``he`` gallery: exact scores, storage round
trips, erasure, and a restored block that takes no more templates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fpmatch.he import KeyHolder
from fpmatch.he._encoding import quantise
from fpmatch.he.audit import SecretKeyAudit
from fpmatch.he.blocks import CiphertextBlocks
from fpmatch.he.context import PublicContext

DIM = 32


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> tuple[PublicContext, SecretKeyAudit]:
    path = tmp_path_factory.mktemp("keys") / "holder.key"
    holder = KeyHolder()
    holder.save(path)
    return PublicContext(holder.public_context()), SecretKeyAudit(path)


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def stored(blocks: CiphertextBlocks, slots: list[int]) -> CiphertextBlocks:
    """A copy rebuilt from what the store keeps: block c1 halves and the slots' columns."""
    copy = CiphertextBlocks(blocks.context, DIM)
    copy.load([(blocks.c1_bytes(b), blocks.used[b], 1) for b in range(blocks.count)], {s: blocks.column(s) for s in slots})
    return copy


def test_scores_are_plain_cosines_before_and_after_a_round_trip(audit: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, secret = audit
    templates, probe = unit_rows(5000, 1), unit_rows(1, 2)[0]  # more than one block (N = 4096)
    blocks = CiphertextBlocks(context, DIM)
    staged = blocks.stage(quantise(templates[:3000], 23))
    assert blocks.count == 0  # staging changes nothing
    blocks.apply(staged)
    blocks.apply(blocks.stage(quantise(templates[3000:], 23)))
    assert blocks.count == 2 and blocks.used == [4096, 904]
    weights = quantise(probe, blocks.probe_scale_bits)
    slots = list(range(4096)) + list(range(4096, 4096 + 904))
    plain = templates @ probe
    chosen = [0, 17, 4095, 4096, 5000 - 1 + 4096 - 4096]
    for copy in (blocks, stored(blocks, slots)):
        np.testing.assert_allclose(secret.scores(copy.request(np.array(chosen), weights)), plain[chosen], atol=2e-4)
        live = [np.array([3, 9]), np.array([5])]
        got = secret.scores(copy.request_all(weights, live))
        np.testing.assert_allclose(got, plain[[3, 9, 4096 + 5]], atol=2e-4)


def test_erasure_leaves_nothing_and_a_restored_block_is_closed(audit: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, secret = audit
    templates = unit_rows(10, 3)
    blocks = CiphertextBlocks(context, DIM)
    blocks.apply(blocks.stage(quantise(templates[:6], 23)))
    erased = blocks.column(2)
    blocks.erase(2)
    plain = np.stack([secret.decrypt(c0, c1) for c0, c1 in blocks.ciphertexts()])  # (DIM, N)
    scale = float(1 << 23)
    assert np.abs(plain[:, 2] / scale - templates[2]).max() > 0.5  # noise, not the template
    np.testing.assert_allclose(plain[:, 4] / scale, templates[4], atol=1e-5)
    assert erased not in b"".join(blocks.column(s) for s in (0, 1, 3, 4, 5)) + blocks.c1_bytes(0)

    restored = stored(blocks, [0, 1, 3, 4, 5])
    staged = restored.stage(quantise(templates[6:], 23))
    assert staged.slots == [4096 + t for t in range(4)]  # a new block: the old one's empty columns are gone
    restored.apply(staged)
    weights = quantise(templates[7], restored.probe_scale_bits)
    got = secret.scores(restored.request(np.array([4097, 4]), weights))
    np.testing.assert_allclose(got, [1.0, templates[4] @ templates[7]], atol=2e-4)
    # In the same process a block keeps taking templates.
    assert restored.stage(quantise(templates[:1], 23)).slots == [4096 + 4]


def test_malformed_stored_blocks_are_refused(audit: tuple[PublicContext, SecretKeyAudit], tmp_path: Path) -> None:
    context, _ = audit
    blocks = CiphertextBlocks(context, DIM)
    blocks.apply(blocks.stage(quantise(unit_rows(2, 4), 23)))
    copy = CiphertextBlocks(context, DIM)
    from fpmatch.errors import AuthenticationError, InvalidInputError

    with pytest.raises(AuthenticationError):
        copy.load([(blocks.c1_bytes(0)[:-8], 2, 1)], {})
    with pytest.raises(AuthenticationError):
        copy.load([(blocks.c1_bytes(0), 2, 1)], {0: np.full(DIM, 2**62, dtype="<i8").tobytes()})  # out of range
    with pytest.raises(InvalidInputError):
        copy.load([(blocks.c1_bytes(0), 2, 1)], {4095: blocks.column(0)})  # a slot never filled
    with pytest.raises(InvalidInputError):
        CiphertextBlocks(context, 0)
