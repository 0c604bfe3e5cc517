"""The key holder as a network service: mutual TLS only, the caller from its certificate,
typed errors for bad input, limits that survive a restart, a verifiable audit chain, and a
matching service that answers clearly while the key holder is down and recovers."""

from __future__ import annotations

import json
import sqlite3
import struct
import sys
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

pytest.importorskip("tenseal", reason="the key holder needs TenSEAL")
grpc = pytest.importorskip("grpc", reason="the key holder service needs grpcio")
pytest.importorskip("cryptography", reason="the key holder service needs cryptography")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from keyholder_support import Deployment, Server  # noqa: E402

from fpmatch import CaptureEdge, HashKey, MatchingService, ServiceKey  # noqa: E402
from fpmatch.cli import main  # noqa: E402
from fpmatch.errors import AuditTamperedError, FpmatchError  # noqa: E402
from fpmatch.he import (  # noqa: E402
    CiphertextFormatError,
    ClientCredentials,
    DecryptionRefusedError,
    EncryptedGallery,
    KeyHolderUnavailable,
    RateLimitExceededError,
    RemoteKeyHolder,
)
from fpmatch.he.client import METHOD  # noqa: E402
from fpmatch.he.ledger import Budgets, Ledger, check_chain  # noqa: E402
from fpmatch.synthetic import FaceGenerator  # noqa: E402

DIM = 64


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


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
    return Deployment(tmp_path_factory.mktemp("keyholder"))


@pytest.fixture(scope="module")
def server(deployment: Deployment) -> Iterator[Server]:
    running = Server(deployment, extra=["--subject-requests-per-day", "3"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def gallery(deployment: Deployment) -> EncryptedGallery:
    gallery = EncryptedGallery(deployment.public, DIM)
    gallery.enrol([f"s{i}" for i in range(8)], unit_rows(8, 1))
    return gallery


def test_decisions_over_mutual_tls(deployment: Deployment, server: Server, gallery: EncryptedGallery) -> None:
    templates = unit_rows(8, 1)
    with deployment.client(server) as remote:
        assert remote.public_context() == deployment.public
        assert gallery.verify("s2", templates[2], remote, 0.5, caller="ignored").verified
        assert not gallery.verify("s3", templates[2], remote, 0.5, caller="ignored").verified
        assert [m.subject for m in gallery.identify(templates[5], remote, 0.5, caller="x")] == ["s5"]
        assert remote.usage().requests >= 3


def test_only_callers_with_a_certificate_from_the_ca_are_served(
    deployment: Deployment, server: Server, gallery: EncryptedGallery
) -> None:
    request = gallery.verification_request("s0", unit_rows(8, 1)[0]).to_bytes()
    ca = (deployment.pki / "ca.crt").read_bytes()
    foreign = deployment.credentials("matching-service", pki=deployment.foreign)
    for credentials in (ClientCredentials(ca, b"", b""), foreign):
        remote = RemoteKeyHolder(server.address, credentials, retries=0, timeout=10)
        with pytest.raises(KeyHolderUnavailable):
            remote.decide(request, 0.5, caller="matching-service")
        remote.close()
    with grpc.insecure_channel(server.address) as channel:  # plain text: no TLS at all
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(METHOD)(message({"op": "public_context"}), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ValueError):
        RemoteKeyHolder(server.address, None)  # no way to ask without credentials
    assert server.alive()


def test_the_caller_is_named_by_its_certificate(deployment: Deployment, server: Server, gallery: EncryptedGallery) -> None:
    request = gallery.verification_request("s1", unit_rows(8, 1)[1]).to_bytes()
    other = deployment.credentials("other-service")
    claimed = raw_call(server, other, message({"op": "decide", "threshold": 0.5, "caller": "matching-service"}, request))
    assert not claimed["ok"] and claimed["error"] == "DecryptionRefusedError"
    before = deployment.client(server).usage().requests
    with deployment.client(server, "other-service") as remote:
        assert remote.decide(request, 0.5, caller="matching-service") == [True]  # the argument is not sent
        assert remote.usage().requests >= 1
    assert deployment.client(server).usage().requests == before  # counted for other-service only
    callers = {e.caller for e in Ledger(deployment.ledger).entries()}
    assert callers <= {"matching-service", "other-service"} and "other-service" in callers


def test_bad_input_gives_typed_errors_and_the_server_stays_up(
    deployment: Deployment, server: Server, gallery: EncryptedGallery
) -> None:
    credentials = deployment.credentials()
    request = gallery.verification_request("s1", unit_rows(8, 1)[1]).to_bytes()
    cases = {
        b"": "CiphertextFormatError",
        b"\xff\xff\xff\x7fjunk": "CiphertextFormatError",
        message({"no": "op"}): "CiphertextFormatError",
        message({"op": "decrypt"}, request): "DecryptionRefusedError",
        message({"op": "decide"}, request): "CiphertextFormatError",  # no threshold
        message({"op": "decide", "threshold": "high"}, request): "InvalidInputError",
        message({"op": "best", "threshold": 0.5, "k": 10**9}, request): "InvalidInputError",
        message({"op": "decide", "threshold": 0.5}, b"junk"): "CiphertextFormatError",
        message({"op": "decide", "threshold": 0.5}, request[:-8]): "CiphertextFormatError",
        message({"op": "decide", "threshold": 0.5, "subject": 7}, request): "CiphertextFormatError",
        message({"op": "reclaim"}, b"\x00" * 64): "CiphertextFormatError",
        message({"op": "coarse_scores"}, request): "DecryptionRefusedError",  # values are off by default
    }
    for data, error in cases.items():
        answer = raw_call(server, credentials, data)
        assert not answer["ok"] and answer["error"] == error, (data[:40], answer)
    tampered = bytearray(request)
    tampered[-40] ^= 0x55
    assert raw_call(server, credentials, message({"op": "decide", "threshold": 0.5}, bytes(tampered)))["error"] in (
        "CiphertextFormatError", "CiphertextIntegrityError",
    )  # fmt: skip
    with deployment.client(server) as remote, pytest.raises(DecryptionRefusedError):
        remote.coarse_scores(request, caller="x")
    assert server.alive()
    assert deployment.client(server).decide(request, 0.5, caller="x") == [True]
    outcomes = {(e.op, e.outcome) for e in Ledger(deployment.ledger).entries() if e.caller == "matching-service"}
    assert {("malformed", "CiphertextFormatError"), ("decrypt", "DecryptionRefusedError"),
            ("coarse_scores", "DecryptionRefusedError"), ("decide", "ok")} <= outcomes  # refusals are audited too


def test_per_subject_budget(deployment: Deployment, server: Server, gallery: EncryptedGallery) -> None:
    request = gallery.verification_request("s4", unit_rows(8, 1)[4]).to_bytes()
    with deployment.client(server) as remote:
        for _ in range(3):
            assert remote.decide(request, 0.5, caller="x", subject="pseudonym-4") == [True]
        with pytest.raises(RateLimitExceededError):
            remote.decide(request, 0.5, caller="x", subject="pseudonym-4")
        assert remote.decide(request, 0.5, caller="x", subject="pseudonym-5") == [True]


def test_limits_survive_a_restart(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    gallery = EncryptedGallery(deployment.public, DIM)
    gallery.enrol(["a"], unit_rows(1, 3))
    request = gallery.verification_request("a", unit_rows(1, 3)[0]).to_bytes()
    limits = ["--caller-requests-per-day", "4"]
    first = Server(deployment, extra=limits)
    try:
        with deployment.client(first) as remote:
            for _ in range(3):
                assert remote.decide(request, 0.5, caller="x") == [True]
    finally:
        assert first.stop() == 0  # SIGTERM: a clean stop
    second = Server(deployment, port=first.port, extra=limits)
    try:
        with deployment.client(second) as remote:
            assert remote.decide(request, 0.5, caller="x") == [True]  # the fourth of four
            with pytest.raises(RateLimitExceededError, match="daily budget"):
                remote.decide(request, 0.5, caller="x")
            assert remote.usage().requests == 4 and remote.usage().refused == 1
        with deployment.client(second, "other-service") as other:  # budgets are per caller
            assert other.decide(request, 0.5, caller="x") == [True]
    finally:
        second.stop()
    ledger = Ledger(deployment.ledger)
    assert ledger.verify().ok
    outcomes = [(e.caller, e.outcome) for e in ledger.entries()]
    assert outcomes.count(("matching-service", "ok")) == 4
    assert outcomes.count(("matching-service", "RateLimitExceededError")) == 1


def test_rate_and_request_size_limits(tmp_path: Path) -> None:
    now = [1_000_000.0]
    ledger = Ledger(tmp_path / "l.sqlite", Budgets(requests_per_second=1, burst=2, max_scores_per_request=10),
                    clock=lambda: now[0])  # fmt: skip
    for _ in range(2):
        with ledger.request("svc", "decide", 100, 1, None):
            pass
    with pytest.raises(RateLimitExceededError, match="rate"):
        with ledger.request("svc", "decide", 100, 1, None):
            pass
    now[0] += 1.0
    with ledger.request("svc", "decide", 100, 1, None):
        pass
    now[0] += 5.0
    with pytest.raises(DecryptionRefusedError, match="at most 10 scores"):
        with ledger.request("svc", "best", 100, 11, None):
            pass
    ledger.close()
    reopened = Ledger(tmp_path / "l.sqlite", Budgets(requests_per_second=1, burst=2), clock=lambda: now[0])
    assert reopened.usage("svc", "1970-01-12") == {"requests": 3, "scores": 3, "refused": 2, "released": 0}


def test_audit_chain_verifies_and_finds_edits(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "audit.sqlite")
    for i in range(6):
        with ledger.request(f"svc{i % 2}", "decide", 1000 + i, 1, None) as released:
            released.update({"passed": i % 2, "failed": 1 - i % 2})
    assert ledger.verify().ok and ledger.verify().entries == 6
    check_chain(ledger.entries())
    text = (tmp_path / "audit.sqlite").read_bytes()
    assert b"score" not in text.replace(b"scores", b"")  # counts only, never a value
    ledger.close()
    assert main(["keyholder", "audit", str(tmp_path / "audit.sqlite")]) == 0
    edits = [
        "UPDATE audit SET caller = 'svc9' WHERE seq = 3",
        "UPDATE audit SET released = '{\"failed\":1,\"passed\":0}' WHERE seq = 4",
        "DELETE FROM audit WHERE seq = 2",
        "UPDATE audit SET seq = 99 WHERE seq = 5",
    ]
    for number, edit in enumerate(edits):
        copy = tmp_path / f"edited{number}.sqlite"
        copy.write_bytes((tmp_path / "audit.sqlite").read_bytes())
        db = sqlite3.connect(copy)
        db.execute(edit)
        db.commit()
        db.close()
        report = Ledger(copy).verify()
        assert not report.ok, edit
        with pytest.raises(AuditTamperedError):
            check_chain(Ledger(copy).entries())
        assert main(["keyholder", "audit", str(copy)]) == 1


def test_retries_with_backoff_then_unavailable() -> None:
    class Flaky(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

        def details(self) -> str:
            return "connection refused"

    class Transport:
        address = "test"

        def __init__(self, failures: int) -> None:
            self.failures = failures

        def transient(self, exc: BaseException) -> bool:
            return isinstance(exc, Flaky)

        unavailable = transient

        def send(self, data: bytes, timeout: float) -> bytes:
            if self.failures:
                self.failures -= 1
                raise Flaky()
            return message({"ok": True}, b"context")

    slept: list[float] = []
    remote = RemoteKeyHolder.__new__(RemoteKeyHolder)
    remote.timeout, remote.retries, remote.backoff, remote.max_backoff = 1.0, 4, 0.1, 0.3
    remote._sleep, remote.attempts = slept.append, 0
    remote._transport = Transport(3)
    assert remote.public_context() == b"context"
    assert remote.attempts == 4 and len(slept) == 3
    assert 0.05 <= slept[0] <= 0.1 and 0.1 <= slept[1] <= 0.2 and 0.15 <= slept[2] <= 0.3  # doubling, capped
    remote._transport, remote.attempts = Transport(10), 0
    with pytest.raises(KeyHolderUnavailable, match="5 attempt"):
        remote.public_context()
    assert remote.attempts == 5


def test_a_client_waits_out_a_restart(deployment: Deployment, tmp_path: Path) -> None:
    """Retries reach a key holder that comes up while the client is backing off."""
    import threading

    port_holder = Server.__new__(Server)
    from keyholder_support import free_port

    port = free_port()
    port_holder.address = f"127.0.0.1:{port}"
    remote = RemoteKeyHolder(port_holder.address, deployment.credentials(), retries=60, backoff=0.5, max_backoff=1.0)
    started: list[Server] = []
    thread = threading.Thread(target=lambda: started.append(Server(deployment, port=port)))
    thread.start()
    try:
        assert remote.public_context() == deployment.public
        assert remote.attempts > 1
    finally:
        thread.join()
        for s in started:
            s.stop()
        remote.close()


def test_matching_service_while_the_key_holder_is_down(deployment: Deployment, tmp_path: Path) -> None:
    server = Server(deployment)
    faces = FaceGenerator("centred", 5)
    people = faces.identities(60)
    stored, fresh = faces.samples(people), faces.samples(people)
    names = [f"p{i}" for i in range(60)]
    remote = deployment.client(server, retries=5, backoff=0.2, timeout=10)
    edge = CaptureEdge(HashKey(b"\x21" * 32), stored.shape[1], public_context=deployment.public)
    key = ServiceKey(b"\x31" * 32)
    try:
        with MatchingService.open(tmp_path / "store", key, edge=edge.profile, keyholder=remote) as svc:
            for name in names:
                svc.grant_consent(name, ["entry"], notice_version="v1", evidence_ref=name, method="app",
                                  separate=True, retention=timedelta(days=30))  # fmt: skip
            svc.enrol_many(names, edge.enrolments(stored))
            svc.calibrate(0.01)
            assert svc.verify("p3", edge.probe(fresh[3]), "entry").value == "match"
            entries = len(list(svc.store.audit_entries()))
            server.stop()
            with pytest.raises(KeyHolderUnavailable):
                svc.verify("p3", edge.probe(fresh[3]), "entry")
            with pytest.raises(KeyHolderUnavailable):
                svc.identify(edge.probe(fresh[7]), "entry", k=1)
            assert len(svc) == 60 and svc.audit_verify().ok
            failed = list(svc.store.audit_entries())[entries:]  # nothing decided, nothing lost, both accounted
            assert [(e.event, e.outcome, e.detail["error"]) for e in failed] == [
                ("verify", "error", "KeyHolderUnavailable"), ("identify", "error", "KeyHolderUnavailable")
            ]
            # Without consent nothing is asked of the key holder: the alternative still answers.
            assert svc.verify("nobody", edge.probe(fresh[3]), "entry").value == "use_alternative"
        # A service (re)started while the key holder is down opens, and answers the same way.
        with MatchingService.open(tmp_path / "store", key, keyholder=remote) as svc:
            with pytest.raises(KeyHolderUnavailable):
                svc.verify("p3", edge.probe(fresh[3]), "entry")
            server = Server(deployment, port=server.port)
            assert svc.verify("p3", edge.probe(fresh[3]), "entry").value == "match"
            assert svc.verify("p3", edge.probe(fresh[4]), "entry").value == "no_match"
            assert [m.subject for m in svc.identify(edge.probe(fresh[7]), "entry", k=1)] == ["p7"]
            assert len(svc) == 60 and svc.check_integrity().ok
    finally:
        server.stop()
        remote.close()


def test_sealed_key_at_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fpmatch.errors import KeyFileError
    from fpmatch.he.sealing import read_kek, read_sealed, seal, unseal

    monkeypatch.setenv("FPMATCH_KEYHOLDER_PASSPHRASE", "correct horse battery")
    target = tmp_path / "kh.sealed"
    assert main(["keyholder", "init", str(target)]) == 0
    assert target.stat().st_mode & 0o777 == 0o600
    assert main(["keyholder", "init", str(target)]) == 2  # never overwritten
    holder = read_sealed(target, passphrase="correct horse battery")
    assert b"FPHESEC1" not in target.read_bytes()
    secret = holder.to_bytes()
    assert not any(secret[i : i + 32] in target.read_bytes() for i in range(1000, len(secret), 4096))
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        read_sealed(target, passphrase="wrong horse battery")
    with pytest.raises(KeyFileError, match="passphrase"):
        read_sealed(target, kek=b"\x00" * 32)
    data = bytearray(target.read_bytes())
    for at in (10, 30, 60, len(data) // 2, len(data) - 1):  # header fields, salt, nonce, body, tag
        changed = bytearray(data)
        changed[at] ^= 1
        with pytest.raises(KeyFileError):
            unseal(bytes(changed), passphrase="correct horse battery")
    with pytest.raises(KeyFileError):
        unseal(bytes(data[:40]), passphrase="correct horse battery")
    kek_file = tmp_path / "kek.bin"
    assert main(["keyholder", "init", "--new-kek", str(kek_file), str(tmp_path / "k2.sealed")]) == 0
    assert kek_file.stat().st_mode & 0o777 == 0o600
    again = read_sealed(tmp_path / "k2.sealed", kek=read_kek(kek_file))
    assert unseal(seal(again, kek=read_kek(kek_file)), kek=read_kek(kek_file)).key_id == again.key_id
    public = tmp_path / "public.ctx"
    assert main(["keyholder", "public", str(tmp_path / "k2.sealed"), "--kek", str(kek_file), "--out", str(public)]) == 0
    assert public.read_bytes() == again.public_context()


def test_certs_command(tmp_path: Path) -> None:
    from cryptography import x509

    assert main(["keyholder", "certs", str(tmp_path / "pki"), "--caller", "gate-1", "--caller", "gate-2"]) == 0
    for name in ("ca", "server", "gate-1", "gate-2"):
        assert (tmp_path / "pki" / f"{name}.key").stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate((tmp_path / "pki" / "gate-2.crt").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=gate-2"
    server = x509.load_pem_x509_certificate((tmp_path / "pki" / "server.crt").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert main(["keyholder", "certs", str(tmp_path / "pki")]) == 2  # refuses to overwrite
    assert main(["keyholder", "certs", str(tmp_path / "p2"), "--caller", "../evil"]) == 2
    assert isinstance(FpmatchError, type) and CiphertextFormatError


def test_serve_needs_attested_mode_or_an_explicit_opt_out(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = deployment.pki
    base = ["keyholder", "serve", "--listen", "127.0.0.1:0", "--key", str(deployment.sealed), "--kek",
            str(deployment.kek), "--cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
            "--ca", str(pki / "ca.crt"), "--ledger", str(tmp_path / "ledger.sqlite")]  # fmt: skip
    assert main(base) == 2
    assert "--edge-keys FILE" in capsys.readouterr().err and not (tmp_path / "ledger.sqlite").exists()
    assert main([*base, "--unattested", "--edge-keys", str(tmp_path / "edges.json")]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_a_connection_that_timed_out_is_not_reused() -> None:
    """A late reply must never answer the next request: after a timeout the connection is closed."""
    import multiprocessing

    ours, theirs = multiprocessing.Pipe()
    remote = RemoteKeyHolder(ours, timeout=0.2)
    with pytest.raises(KeyHolderUnavailable, match="did not answer"):
        remote.public_context()
    try:
        theirs.send_bytes(message({"ok": True}, b"late"))  # the peer answers too late
    except OSError:
        pass  # our end is already closed
    with pytest.raises(KeyHolderUnavailable):
        remote.public_context()
    theirs.close()


def test_the_service_labels_verifications_with_pseudonyms_for_per_subject_budgets(
    deployment: Deployment, tmp_path: Path
) -> None:
    server = Server(deployment, extra=["--subject-requests-per-day", "2"])
    faces = FaceGenerator("centred", 6)
    people = faces.identities(60)
    stored, fresh = faces.samples(people), faces.samples(people)
    names = [f"q{i}" for i in range(60)]
    remote = deployment.client(server)
    edge = CaptureEdge(HashKey(b"\x22" * 32), stored.shape[1], public_context=deployment.public)
    try:
        with MatchingService.open(tmp_path / "store", ServiceKey(b"\x32" * 32), edge=edge.profile, keyholder=remote) as svc:
            for name in names:
                svc.grant_consent(name, ["entry"], notice_version="v1", evidence_ref=name, method="app",
                                  separate=True, retention=timedelta(days=30))  # fmt: skip
            svc.enrol_many(names, edge.enrolments(stored))
            svc.calibrate(0.01)
            for _ in range(2):
                assert svc.verify("q1", edge.probe(fresh[1]), "entry").value == "match"
            with pytest.raises(RateLimitExceededError):
                svc.verify("q1", edge.probe(fresh[1]), "entry")  # a third claim on one identity today
            assert svc.verify("q2", edge.probe(fresh[2]), "entry").value == "match"  # another identity is not held back
            last = [e for e in svc.store.audit_entries() if e.event == "verify"][-2]
            assert (last.outcome, last.detail["error"]) == ("error", "RateLimitExceededError")
        assert b"q1" not in deployment.ledger.read_bytes()  # the key holder saw pseudonyms, never names
    finally:
        server.stop()
        remote.close()
