"""Decision-oracle attacks on the key holder, reproduced, and the limits that stop them.

A caller holding a valid client certificate (a compromised matching service) can send
score requests it crafted itself. Two attacks from THREAT_MODEL.md, each run twice:
without limits, to measure what it needs, and through the key holder service's request
path (:class:`KeyHolderService`, the same code the network server runs) with budgets
set for the deployment's honest traffic, to show it is refused before it succeeds, also
across a restart. The figures printed here are the ones written into THREAT_MODEL.md.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

pytest.importorskip("tenseal", reason="the key holder needs TenSEAL")

from fpmatch.he import EncryptedGallery, EncryptedScores, KeyHolder, RateLimit, RateLimitExceededError  # noqa: E402
from fpmatch.he.ledger import Budgets, Ledger  # noqa: E402
from fpmatch.he.remote import read_reply  # noqa: E402
from fpmatch.he.server import KeyHolderService, lifted_rate  # noqa: E402

DIM = 128  # the dimension of the project's dlib-like profile
#: Honest traffic the test deployment is sized for: 1:1 and 1:N requests of one site.
SITE = Budgets(requests_per_second=20, burst=100, caller_requests_per_day=2_000, caller_scores_per_day=40_000,
               caller_released_per_day=200, subject_requests_per_day=20)  # fmt: skip

Ask = Callable[[bytes, float], list]


@pytest.fixture(scope="module")
def holder() -> KeyHolder:
    return KeyHolder(limits=lifted_rate(RateLimit()))


def secret_coefficients(holder: KeyHolder) -> np.ndarray:
    ring = holder._ring
    return ring.centre(ring.intt(holder._s_hat))  # test-only: the truth the attack is scored against


def unlimited(holder: KeyHolder, counter: dict[str, int]) -> Ask:
    def ask(request: bytes, threshold: float) -> list:
        counter["requests"] += 1
        answer = holder.decide(request, threshold, caller="compromised")
        counter["scores"] += len(answer)
        counter["released"] += sum(answer)
        return answer

    return ask


def through_service(service: KeyHolderService, clock: list[float]) -> Ask:
    """The network server's request path; a patient attacker keeps under the rate (1 request a second)."""

    def ask(request: bytes, threshold: float) -> list:
        clock[0] += 1.0
        head = json.dumps({"op": "decide", "threshold": threshold}).encode()
        reply, _ = read_reply(service.handle("compromised", struct.pack("<I", len(head)) + head + request))
        return reply["result"]

    return ask


# -- attack 1: secret-key coefficients from decisions -----------------------------------------


def recover_key(holder: KeyHolder, ask: Ask, known: np.ndarray) -> None:
    """Score i decrypts to b_i + (a * s)[index_i]. With a the constant c = 2**(scale - 1) and
    b = 0 it decrypts to c * s_j: 0.5 * s_j in cosine units, a valid-looking score. Threshold
    0.25 answers "s_j = +1" for 64 coefficients per request; -c answers "s_j = -1"."""
    ring, scale = holder._ring, holder.params.scale_bits
    per_request = holder.limits.max_decisions
    for sign in (1, -1):
        row = np.full((1, ring.n), (sign << (scale - 1)) % ring.q, dtype=np.int64)  # NTT of a constant is the constant
        for start in range(0, ring.n, per_request):
            index = np.arange(start, min(ring.n, start + per_request), dtype=np.int64)
            request = EncryptedScores(holder.key_id, scale, ring.q, row, np.zeros(len(index), np.int64), index,
                                      np.zeros(len(index), np.int64))  # fmt: skip
            answer = np.array(ask(request.to_bytes(), 0.25), dtype=bool)
            known[index[answer]] = sign
            known[index[~answer & (known[index] == 2)]] = 0 if sign == -1 else 2  # 2: not yet known


def test_secret_key_from_decisions(holder: KeyHolder, tmp_path: Path) -> None:
    truth = secret_coefficients(holder)
    assert set(np.unique(truth)) <= {-1, 0, 1}
    counts = {"requests": 0, "scores": 0, "released": 0}
    known = np.full(holder._ring.n, 2, dtype=np.int64)
    recover_key(holder, unlimited(holder, counts), known)
    assert (known == truth).all()  # every coefficient of the secret key
    nonzero = int(np.count_nonzero(truth))
    assert counts == {"requests": 2 * holder._ring.n // 64, "scores": 2 * holder._ring.n, "released": nonzero}
    print(f"\nkey recovery, N={holder._ring.n}: {counts['requests']} requests, {counts['scores']} scores, "
          f"{counts['released']} released (true) decisions")  # fmt: skip

    # The same attack through the service, within the rate, against a site's daily budgets.
    clock = [1_800_000_000.0]
    ledger = Ledger(tmp_path / "ledger.sqlite", SITE, clock=lambda: clock[0])
    service = KeyHolderService(holder, ledger)
    partial = np.full(holder._ring.n, 2, dtype=np.int64)
    with pytest.raises(RateLimitExceededError, match="daily budget"):
        recover_key(holder, through_service(service, clock), partial)
    learned = int(np.count_nonzero(partial != 2))
    assert learned < holder._ring.n // 2  # most of the key stays unknown
    used = ledger.usage("compromised")
    print(f"through the service (released budget {SITE.caller_released_per_day}/day): refused after "
          f"{used['requests']} requests; {learned} of {holder._ring.n} coefficients known")
    ledger.close()
    # A restart does not refill the budget.
    again = KeyHolderService(holder, Ledger(tmp_path / "ledger.sqlite", SITE, clock=lambda: clock[0]))
    with pytest.raises(RateLimitExceededError, match="daily budget"):
        recover_key(holder, through_service(again, clock), partial)
    assert again.ledger.verify().ok


# -- attack 2: a template from decisions ------------------------------------------------------


def climb(gallery: EncryptedGallery, subject: str, ask: Ask, true: np.ndarray, target: float, budget: int,
          seed: int = 0) -> tuple[np.ndarray, int]:  # fmt: skip
    """Hill climbing on decisions alone: each request scores one random unit probe u against
    the subject (a request of the size a 1:1 verification sends) with threshold 0, so the
    decision is the sign of <u, x>: which way the template lies along u. The estimate steps
    that way each time (sum of sign(<u, x>) u), and its cosine to x climbs towards 1."""
    rng = np.random.default_rng(seed)
    estimate = np.zeros(true.shape[0])
    requests = 0
    while requests < budget:
        u = rng.standard_normal(true.shape[0])
        u /= np.linalg.norm(u)
        requests += 1
        estimate += u if ask(gallery.verification_request(subject, u.astype(np.float32)).to_bytes(), 0.0)[0] else -u
        if float(estimate @ true) >= target * np.linalg.norm(estimate):
            break
    return estimate / max(np.linalg.norm(estimate), 1e-12), requests


def test_template_by_hill_climbing_from_decisions(holder: KeyHolder, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    templates = rng.standard_normal((4, DIM))
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    gallery = EncryptedGallery(holder.public_context(), DIM)
    gallery.enrol(["victim", "b", "c", "d"], templates.astype(np.float32))
    counts = {"requests": 0, "scores": 0, "released": 0}
    rebuilt, requests = climb(gallery, "victim", unlimited(holder, counts), templates[0], 0.9, budget=20_000)
    cosine = float(rebuilt @ templates[0])
    assert cosine >= 0.9, cosine
    print(f"\ntemplate from decisions, d={DIM}: cosine {cosine:.3f} after {requests} requests "
          f"({counts['released']} true decisions)")  # fmt: skip

    clock = [1_800_000_000.0]
    service = KeyHolderService(holder, Ledger(tmp_path / "ledger.sqlite", SITE, clock=lambda: clock[0]))
    with pytest.raises(RateLimitExceededError, match="daily budget"):
        climb(gallery, "victim", through_service(service, clock), templates[0], 0.9, budget=20_000)
    used = service.ledger.usage("compromised")
    partial, _ = climb(gallery, "victim", unlimited(holder, dict(counts)), templates[0], 1.0, budget=used["requests"])
    print(f"through the service: refused after {used['requests']} requests ({used['released']} released); "
          f"cosine then {float(partial @ templates[0]):.3f}")
    assert used["requests"] < requests and float(partial @ templates[0]) < 0.9
