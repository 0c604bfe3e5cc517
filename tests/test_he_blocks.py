"""Packed ciphertexts of the service's galleries (he blocks, hybrid rows): exact scores, storage
round trips, erasure, and erased slots reclaimed through the key holder."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from fpmatch.he import KeyHolder, RateLimit
from fpmatch.he._encoding import quantise
from fpmatch.he.audit import SecretKeyAudit
from fpmatch.errors import KeyMismatchError
from fpmatch.he.blocks import CiphertextBlocks
from fpmatch.he.context import PublicContext
from fpmatch.he.params import MAX_REFRESHES
from fpmatch.he.errors import CiphertextFormatError
from fpmatch.he.reclaim import parse_reply, reclaim_request, reclaim_through
from fpmatch.he.remote import handle
from fpmatch.he.rows import CiphertextRows

DIM = 32


@pytest.fixture(scope="module")
def holder() -> KeyHolder:
    return KeyHolder(limits=RateLimit(requests_per_second=1e9, burst=10**9))


@pytest.fixture(scope="module")
def audit(holder: KeyHolder, tmp_path_factory: pytest.TempPathFactory) -> tuple[PublicContext, SecretKeyAudit]:
    path = tmp_path_factory.mktemp("keys") / "holder.key"
    holder.save(path)
    return PublicContext(holder.public_context()), SecretKeyAudit(path)


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def stored(blocks: CiphertextBlocks, slots: list[int]) -> CiphertextBlocks:
    """A copy rebuilt from what the store keeps: block c1 halves and the slots' columns."""
    copy = CiphertextBlocks(blocks.context, DIM)
    stored_blocks = [(blocks.c1_bytes(b), blocks.used[b], blocks.refreshes[b]) for b in range(blocks.count)]
    copy.load(stored_blocks, {s: blocks.column(s) for s in slots})
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


def plaintext(secret: SecretKeyAudit, ciphertexts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.stack([secret.decrypt(c0, c1) for c0, c1 in ciphertexts]) / float(1 << 23)


def test_erased_block_slots_are_reclaimed_and_every_template_stays_exact(
    holder: KeyHolder, audit: tuple[PublicContext, SecretKeyAudit]
) -> None:
    context, secret = audit
    reclaim = partial(reclaim_through, holder, "service", context)
    templates, newcomers = unit_rows(6, 5), unit_rows(5, 6)
    blocks = CiphertextBlocks(context, DIM)
    blocks.apply(blocks.stage(quantise(templates, 23)))
    erased = [blocks.column(s) for s in (2, 4)]
    for slot in (2, 4):
        blocks.erase(slot)
    before = holder.usage("service").reclaimed
    # In the process that made the block, its empty columns are known: they are filled first.
    assert blocks.stage(quantise(newcomers[:1], 23), reclaim).slots == [6]
    assert holder.usage("service").reclaimed == before

    restored = stored(blocks, [0, 1, 3, 5])  # after a restart every empty column is unknown
    staged = restored.stage(quantise(newcomers, 23), reclaim)
    assert staged.slots == [2, 4, 6, 7, 8] and staged.refreshes == {0: 2}
    assert holder.usage("service").reclaimed == before + DIM  # one reclaim of the block's DIM ciphertexts
    assert sorted(staged.resealed) == [0, 1, 3, 5]  # every enrolled column changes with the block
    assert all(staged.resealed[s] != restored.column(s) for s in (0, 1, 3, 5))
    restored.apply(staged)
    plain = plaintext(secret, restored.ciphertexts())  # (DIM, N)
    np.testing.assert_allclose(plain[:, [0, 1, 3, 5]].T, templates[[0, 1, 3, 5]], atol=1e-5)
    np.testing.assert_allclose(plain[:, [2, 4, 6, 7, 8]].T, newcomers, atol=1e-5)
    np.testing.assert_allclose(plain[:, 9:100], 0, atol=1e-5)  # reclaimed, still empty: zero
    kept = b"".join(restored.column(s) for s in range(9)) + restored.c1_bytes(0)
    assert not any(column in kept for column in erased)
    # The reclaimed block is stored whole again and reads back the same.
    again = stored(restored, list(range(9)))
    weights = quantise(newcomers[1], restored.probe_scale_bits)
    np.testing.assert_allclose(secret.scores(again.request(np.array([4, 0]), weights)), [1.0, templates[0] @ newcomers[1]], atol=2e-4)


def test_a_block_at_its_refresh_limit_is_not_reclaimed(holder: KeyHolder, audit: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, _ = audit
    blocks = CiphertextBlocks(context, DIM)
    blocks.apply(blocks.stage(quantise(unit_rows(3, 7), 23)))
    restored = CiphertextBlocks(context, DIM)
    restored.load([(blocks.c1_bytes(0), 3, MAX_REFRESHES)], {s: blocks.column(s) for s in range(3)})
    staged = restored.stage(quantise(unit_rows(1, 8), 23), partial(reclaim_through, holder, "service", context))
    assert staged.slots == [4096]  # a new block instead


def test_erased_row_windows_are_reclaimed_again_and_again(holder: KeyHolder, audit: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, secret = audit
    reclaim = partial(reclaim_through, holder, "service", context)
    rows = CiphertextRows(context, DIM)
    expected = dict(enumerate(unit_rows(10, 9)))
    rows.apply(rows.stage(quantise(np.stack(list(expected.values())), 23)))
    for round_ in range(3):  # each reclaim re-randomises the row: later ones must cancel what is left
        for slot in (1 + round_, 6):
            rows.erase(slot)
            del expected[slot]
        newcomers = unit_rows(2, 20 + round_)
        staged = rows.stage(quantise(newcomers, 23), reclaim)
        assert staged.slots == sorted({1 + round_, 6}) and staged.rows == [0]
        rows.apply(staged)
        expected.update(zip(staged.slots, newcomers))
        assert rows.erased == set() and rows.refreshes == [2 + round_]
    plain = plaintext(secret, rows.ciphertexts())[0].reshape(-1, DIM)
    slots = sorted(expected)
    np.testing.assert_allclose(plain[slots], np.stack([expected[s] for s in slots]), atol=1e-4)  # fresh noise, 4 times
    # Restored from its stored bytes, the erased windows are known again by what is enrolled.
    rows.erase(3)
    copy = CiphertextRows(context, DIM)
    copy.load([(rows.to_bytes(0), rows.used[0], rows.refreshes[0])], set(slots) - {3})
    assert copy.erased == {3}
    assert copy.stage(quantise(unit_rows(1, 30), 23)).slots == [10]  # without the key holder: a new position


def test_the_key_holder_refuses_malformed_reclaim_requests(holder: KeyHolder, audit: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, _ = audit
    ring = context.ring
    c1, mask = np.zeros((2, ring.n), dtype=np.int64), np.ones((2, ring.n), dtype=bool)
    good = reclaim_request(context.key_id, ring.q, c1, mask)
    other = KeyHolder()
    with pytest.raises(KeyMismatchError):
        other.reclaim(good, caller="service")
    for bad in (good[:-1], b"FPHESC01" + good[8:], good + b"\0", "text"):
        with pytest.raises(CiphertextFormatError):
            holder.reclaim(bad, caller="service")  # type: ignore[arg-type]
    too_many = np.zeros((holder.limits.max_reclaim + 1, ring.n), dtype=np.int64)
    with pytest.raises(CiphertextFormatError):
        holder.reclaim(reclaim_request(context.key_id, ring.q, too_many, too_many.astype(bool)), caller="service")
    out_of_range = bytearray(good)
    out_of_range[28:36] = (ring.q).to_bytes(8, "little")  # c1[0, 0] = q
    with pytest.raises(CiphertextFormatError):
        holder.reclaim(bytes(out_of_range), caller="service")
    # Over the process boundary the reply is the same kind of thing: ciphertexts, checked on arrival.
    reply = handle(holder, message({"op": "reclaim", "caller": "service"}, good))
    fresh_c0, fresh_c1 = parse_reply(reply[4 + int.from_bytes(reply[:4], "little") :], key_id=context.key_id, n=ring.n, q=ring.q, rows=2)
    assert fresh_c0.shape == fresh_c1.shape == (2, ring.n) and np.abs(fresh_c0).max() > ring.q // 4
    with pytest.raises(CiphertextFormatError):
        parse_reply(reply[8:], key_id=context.key_id, n=ring.n, q=ring.q, rows=2)


def message(header: dict, payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return len(head).to_bytes(4, "little") + head + payload
