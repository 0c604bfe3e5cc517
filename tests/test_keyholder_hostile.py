"""Hostile traffic at the key holder service: expired and revoked certificates, replayed
requests, and a flood from one caller that must not hold back another."""

from __future__ import annotations

import datetime
import json
import struct
import sys
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

pytest.importorskip("tenseal", reason="the key holder needs TenSEAL")
grpc = pytest.importorskip("grpc", reason="the key holder service needs grpcio")
pytest.importorskip("cryptography", reason="the key holder service needs cryptography")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from keyholder_support import Deployment, Server  # noqa: E402

from fpmatch.he import (  # noqa: E402
    ClientCredentials,
    DecryptionRefusedError,
    EncryptedGallery,
    KeyHolderUnavailable,
    RateLimitExceededError,
    RemoteKeyHolder,
)
from fpmatch.he.certs import issue_client  # noqa: E402
from fpmatch.he.client import METHOD  # noqa: E402
from fpmatch.he.ledger import Ledger  # noqa: E402

DIM = 32
EXTRA_CALLERS = ("replayer", "flooder", "bystander", "revoked")


def message(header: dict, payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<I", len(head)) + head + payload


def raw_call(server: Server, credentials: ClientCredentials, data: bytes) -> dict:
    tls = grpc.ssl_channel_credentials(credentials.ca, credentials.key, credentials.cert)
    with grpc.secure_channel(server.address, tls) as channel:
        answer = channel.unary_unary(METHOD)(data, timeout=20)
    (size,) = struct.unpack_from("<I", answer)
    return json.loads(answer[4 : 4 + size])


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    deployment = Deployment(tmp_path_factory.mktemp("hostile"))
    for caller in EXTRA_CALLERS:
        issue_client(deployment.pki, caller)
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
    issue_client(deployment.pki, "matching-service", days=1, start=past, stem="expired")
    for stem in ("twin-lost", "twin-new"):  # one name, two certificates: only the lost one is revoked
        issue_client(deployment.pki, "twin", stem=stem)
    return deployment


@pytest.fixture(scope="module")
def server(deployment: Deployment) -> Iterator[Server]:
    limits = ["--rate", "2", "--burst", "6", "--subject-requests-per-day", "2", "--deny", "revoked",
              "--deny-cert", str(deployment.pki / "twin-lost.crt")]  # fmt: skip
    running = Server(deployment, extra=limits)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def request_bytes(deployment: Deployment) -> bytes:
    rows = np.random.default_rng(5).standard_normal((2, DIM))
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    gallery = EncryptedGallery(deployment.public, DIM)
    gallery.enrol(["a", "b"], rows)
    return gallery.verification_request("a", rows[0]).to_bytes()


def entries_of(deployment: Deployment, caller: str) -> list:
    ledger = Ledger(deployment.ledger)
    try:
        return [e for e in ledger.entries() if e.caller == caller]
    finally:
        ledger.close()


def test_an_expired_client_certificate_is_refused(deployment: Deployment, server: Server, request_bytes: bytes) -> None:
    pki = deployment.pki
    expired = ClientCredentials.from_files(pki / "ca.crt", pki / "expired.crt", pki / "expired.key")
    before = len(entries_of(deployment, "matching-service"))
    with RemoteKeyHolder(server.address, expired, retries=0, timeout=10) as remote:
        with pytest.raises(KeyHolderUnavailable):
            remote.decide(request_bytes, 0.5, caller="matching-service")
    assert len(entries_of(deployment, "matching-service")) == before  # refused in the handshake, before any request
    with deployment.client(server) as remote:  # the same name with a valid certificate is served
        assert remote.decide(request_bytes, 0.5, caller="x") == [True]
    assert server.alive()


def test_a_replayed_request_is_charged_again(deployment: Deployment, server: Server, request_bytes: bytes) -> None:
    """Requests carry no nonce: the same bytes sent again are a new request, counted against every budget."""
    credentials = deployment.credentials("replayer")
    data = message({"op": "decide", "threshold": 0.5, "subject": "pseudonym-r"}, request_bytes)
    answers = [raw_call(server, credentials, data) for _ in range(3)]
    assert [a["ok"] for a in answers[:2]] == [True, True]
    assert not answers[2]["ok"] and answers[2]["error"] == "RateLimitExceededError"  # the subject's budget is 2
    with RemoteKeyHolder(server.address, credentials, timeout=10) as remote:
        usage = remote.usage()
    assert (usage.requests, usage.refused) == (2, 1)
    lines = entries_of(deployment, "replayer")
    assert [e.outcome for e in lines] == ["ok", "ok", "RateLimitExceededError"]
    assert len({e.request_bytes for e in lines}) == 1 and len({e.hash for e in lines}) == 3  # one line per copy


def test_a_flood_from_one_caller_does_not_hold_back_another(
    deployment: Deployment, server: Server, request_bytes: bytes
) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()

    def flood() -> None:
        with RemoteKeyHolder(server.address, deployment.credentials("flooder"), timeout=20) as remote:
            for _ in range(10):
                try:
                    remote.decide(request_bytes, 0.5, caller="x")
                    outcome = "ok"
                except RateLimitExceededError:
                    outcome = "limited"
                with lock:
                    outcomes.append(outcome)

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    answered = []
    with RemoteKeyHolder(server.address, deployment.credentials("bystander"), timeout=20) as remote:
        for _ in range(4):  # within its own burst while the flood runs
            answered.append(remote.decide(request_bytes, 0.5, caller="x"))
    for t in threads:
        t.join()
    assert answered == [[True]] * 4
    assert len(outcomes) == 40 and outcomes.count("limited") >= 10  # burst 6, then 2 a second: most are refused
    assert "RateLimitExceededError" in {e.outcome for e in entries_of(deployment, "flooder")}
    assert server.alive()


def test_a_revoked_caller_is_refused_and_audited(deployment: Deployment, server: Server, request_bytes: bytes) -> None:
    with RemoteKeyHolder(server.address, deployment.credentials("revoked"), timeout=10) as remote:
        with pytest.raises(DecryptionRefusedError, match="revoked"):
            remote.decide(request_bytes, 0.5, caller="x")
        with pytest.raises(DecryptionRefusedError, match="revoked"):
            remote.public_context()
    assert [e.outcome for e in entries_of(deployment, "revoked")] == ["DecryptionRefusedError"] * 2
    with deployment.client(server, "other-service") as remote:
        assert remote.decide(request_bytes, 0.5, caller="x") == [True]


def test_one_certificate_is_revoked_by_its_fingerprint(
    deployment: Deployment, server: Server, request_bytes: bytes
) -> None:
    with RemoteKeyHolder(server.address, deployment.credentials("twin-lost"), timeout=10) as remote:
        with pytest.raises(DecryptionRefusedError, match="revoked"):
            remote.decide(request_bytes, 0.5, caller="x")
    with RemoteKeyHolder(server.address, deployment.credentials("twin-new"), timeout=10) as remote:
        assert remote.decide(request_bytes, 0.5, caller="x") == [True]  # same name, another certificate
    assert [e.outcome for e in entries_of(deployment, "twin")] == ["DecryptionRefusedError", "ok"]
    assert "refusing the revoked certificate" in server.log.read_text()


def test_a_deny_cert_that_is_no_certificate_is_refused_clearly(deployment: Deployment, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-cert.pem"
    bogus.write_text("hello")
    with pytest.raises(RuntimeError, match="--deny-cert .*not a PEM certificate"):
        Server(deployment, extra=["--deny-cert", str(bogus)])
