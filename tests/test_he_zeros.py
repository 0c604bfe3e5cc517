"""Fresh encryptions of zero (fpmatch.he._zeros): read out of SEAL whole, shared with worker processes.

Every one is SEAL's: these tests check that reading a ciphertext through SEAL's serialisation gives
exactly the values ``sealapi`` reports one by one, that what the workers make decrypts to zero as
what this process makes does, and that a worker that dies costs nothing but time.
"""

from __future__ import annotations

import os

from pathlib import Path

import numpy as np
import pytest

ts = pytest.importorskip("tenseal")

from fpmatch.he import KeyHolder  # noqa: E402
from fpmatch.he import _zeros  # noqa: E402
from fpmatch.he._packing import unpack  # noqa: E402
from fpmatch.he.audit import SecretKeyAudit  # noqa: E402
from fpmatch.he.context import PublicContext  # noqa: E402

sealapi = ts.sealapi


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory) -> tuple[PublicContext, SecretKeyAudit]:
    path = tmp_path_factory.mktemp("keys") / "holder.key"
    holder = KeyHolder()
    holder.save(path)
    yield PublicContext(holder.public_context()), SecretKeyAudit(path)
    _zeros.shutdown()


def noise(audit: SecretKeyAudit, c0: np.ndarray, c1: np.ndarray) -> int:
    """The largest decrypted coefficient of ciphertexts that should encrypt zero."""
    return max(int(np.abs(audit.decrypt(a, b)).max()) for a, b in zip(c0, c1))


@pytest.mark.skipif(_zeros.zstandard is None, reason="reading whole ciphertexts needs zstandard")
def test_a_whole_read_equals_sealapi_one_value_at_a_time(parties: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, _ = parties
    ring = context.ring
    encryptor = sealapi.Encryptor(ring.seal, ring.public_key(context.tenseal_context)[0])
    evaluator = sealapi.Evaluator(ring.seal)
    reader = _zeros.CiphertextReader(ring.n)
    ciphertext = sealapi.Ciphertext(ring.seal)
    for _ in range(3):
        encryptor.encrypt_zero(ciphertext)
        for ntt_form in (True, False):
            assert ciphertext.is_ntt_form() == ntt_form
            expected = np.fromiter(map(ciphertext.dyn_array().at, range(2 * ring.n)), dtype=np.int64)
            np.testing.assert_array_equal(reader.read(ciphertext).reshape(-1), expected)
            if ntt_form:
                evaluator.transform_from_ntt_inplace(ciphertext)
    fd = reader._fd
    assert fd is not None and reader._folder is None  # an anonymous in-memory file: no name anywhere
    assert os.fstat(fd).st_size == 0  # emptied after every read
    reader.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_large_request_does_not_wait_for_workers_to_start(parties: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, audit = parties
    _zeros.shutdown()
    c0, c1 = context.encrypt_zeros(_zeros.MIN_PARALLEL)  # made here while the workers start
    assert len(c0) == _zeros.MIN_PARALLEL and noise(audit, c0, c1) < 200
    assert len(_zeros._workers) == _zeros.workers()
    assert _zeros.start_workers(wait=60.0) == _zeros.workers()


def test_shared_encryptions_decrypt_to_zero(parties: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, audit = parties
    _zeros.start_workers(wait=60.0)
    count = _zeros.MIN_PARALLEL + 3
    c0, c1 = context.encrypt_zeros(count)
    assert c0.shape == c1.shape == (count, context.ring.n)
    assert noise(audit, c0, c1) < 200  # fresh noise only: a few standard deviations of about 15
    assert len({row.tobytes() for row in c1}) == count  # every one fresh
    p0, p1 = context.encrypt_zeros(count, packed=True)
    assert p0.dtype == np.uint8 and p0.shape == (count, 6 * context.ring.n)
    q = context.ring.q
    assert noise(audit, unpack(p0, q), unpack(p1, q)) < 200
    if _zeros.workers():
        assert len(_zeros._workers) == _zeros.workers()


@pytest.mark.skipif(not _zeros.workers(), reason="one core: no worker processes")
def test_a_worker_that_dies_costs_only_time(parties: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, audit = parties
    count = 2 * _zeros.MIN_PARALLEL
    _zeros.start_workers(wait=60.0)
    context.encrypt_zeros(count)
    for worker in _zeros._workers:
        worker.process.kill()
        worker.process.wait()
    c0, c1 = context.encrypt_zeros(count)  # their shares are made here
    assert len(c0) == count and noise(audit, c0, c1) < 200
    c0, c1 = context.encrypt_zeros(count)  # and new workers start
    assert len(c0) == count and _zeros.start_workers(wait=60.0) == _zeros.workers()
    assert all(w.process.poll() is None for w in _zeros._workers)
    _zeros.shutdown()
    assert not _zeros._workers


def _batches(context: PublicContext, count: int, batches: int, use=None) -> list[tuple[np.ndarray, np.ndarray]]:  # type: ignore[no-untyped-def]
    got: list[tuple[np.ndarray, np.ndarray]] = []
    context.encrypt_zero_batches(count, batches, use or (lambda c0, c1: got.append((c0, c1))))
    return got


def test_batches_arrive_whole_and_fresh(parties: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, audit = parties
    q, n = context.ring.q, context.ring.n
    _zeros.start_workers(wait=60.0)
    for batches in (0, 1, 5):
        got = _batches(context, 7, batches)
        assert len(got) == batches
        for c0, c1 in got:
            assert c0.shape == c1.shape == (7, 6 * n) and c0.dtype == np.uint8
            assert noise(audit, unpack(c0, q), unpack(c1, q)) < 200
        assert len({row.tobytes() for _, c1 in got for row in c1}) == 7 * batches


@pytest.mark.skipif(not _zeros.workers(), reason="one core: no worker processes")
def test_batches_survive_workers_that_die(parties: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, audit = parties
    q = context.ring.q
    _zeros.start_workers(wait=60.0)
    killed = []

    def kill_then_keep(c0: np.ndarray, c1: np.ndarray) -> None:
        if not killed:  # the workers die while they make the other batches
            for worker in _zeros._workers:
                worker.process.kill()
            killed.append(True)
        got.append((c0, c1))

    got: list[tuple[np.ndarray, np.ndarray]] = []
    context.encrypt_zero_batches(5, 6, kill_then_keep)
    assert len(got) == 6 and all(noise(audit, unpack(c0, q), unpack(c1, q)) < 200 for c0, c1 in got)
    assert len(_batches(context, 5, 3)) == 3 and _zeros.start_workers(wait=60.0) == _zeros.workers()


def test_an_error_in_the_caller_leaves_the_workers_in_step(parties: tuple[PublicContext, SecretKeyAudit]) -> None:
    context, audit = parties
    q = context.ring.q
    _zeros.start_workers(wait=60.0)

    def fail(c0: np.ndarray, c1: np.ndarray) -> None:
        raise RuntimeError("the caller failed")

    with pytest.raises(RuntimeError, match="the caller failed"):
        context.encrypt_zero_batches(5, 4, fail)
    for c0, c1 in _batches(context, 5, 4):  # no reply of the failed call answers this one
        assert c0.shape == (5, 6 * context.ring.n) and noise(audit, unpack(c0, q), unpack(c1, q)) < 200


def test_the_core_inverse_ntt_equals_seals(parties: tuple[PublicContext, SecretKeyAudit]) -> None:
    from fpmatch import InvalidInputError, _core

    context, _ = parties
    ring = context.ring
    rng = np.random.default_rng(5)
    coefficients = rng.integers(0, ring.q, (3, ring.n), dtype=np.int64)
    coefficients[0, :4] = [0, ring.q - 1, 1, ring.q // 2]
    values = np.stack([ring.seal_ntt(row) for row in coefficients])  # SEAL's forward NTT
    np.testing.assert_array_equal(_core.ntt_inverse(values, ring.q, ring.psi), coefficients)
    assert context._zero._native_intt  # fresh encryptions take c0 through it
    bad = values.copy()
    bad[1, 7] = ring.q
    for call in (
        lambda: _core.ntt_inverse(bad, ring.q, ring.psi),  # a value out of range
        lambda: _core.ntt_inverse(values, ring.q, 1),  # not a primitive 2N-th root
        lambda: _core.ntt_inverse(values[:, :3000], ring.q, ring.psi),  # N not a power of two
        lambda: _core.ntt_inverse(values, ring.q + 1, ring.psi),  # even modulus
    ):
        with pytest.raises(InvalidInputError):
            call()


def test_a_misaligned_array_is_refused_not_read(parties: tuple[PublicContext, SecretKeyAudit]) -> None:
    from fpmatch import InvalidInputError, _core

    ring = parties[0].ring
    raw = np.zeros(8 * ring.n + 1, dtype=np.uint8)
    misaligned = np.frombuffer(raw.data, dtype=np.int64, count=ring.n, offset=1).reshape(1, ring.n)
    assert not misaligned.flags.aligned
    with pytest.raises(InvalidInputError, match="aligned"):
        _core.ntt_inverse(misaligned, ring.q, ring.psi)
    assert np.array_equal(_core.ntt_inverse(misaligned.copy(), ring.q, ring.psi), np.zeros((1, ring.n), np.int64))
