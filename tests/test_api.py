"""The HTTP API (``fpmatch serve``): a real server process over TLS called with a real HTTP client.
Consent, enrolment, verify and identify with capture-edge messages, withdrawal, reports and the
audit log; tokens, hostile and malformed bodies, oversized requests, and JSON errors with stable codes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest
from api_support import Server, self_signed
from fpmatch import CaptureEdge, HashKey, MatchingService, ServiceKey
from fpmatch.api import TokenStore
from fpmatch.he import KeyHolder
from service_support import DIM, labelled_set, sample, stranger

MAX_BODY = 200_000
CONSENT = {"notice_version": "2026-01", "evidence_ref": "form-1", "method": "signed-form", "separate": True,
           "retention_days": 30}  # fmt: skip


class Deployment:
    def __init__(self, server: Server, edge: CaptureEdge, tokens: TokenStore, token: str) -> None:
        self.server, self.edge, self.tokens, self.token = server, edge, tokens, token
        self.http = server.client(token)

    def record(self, template: np.ndarray) -> str:
        return base64.b64encode(self.edge.enrolment(template).to_bytes()).decode()

    def probe(self, template: np.ndarray) -> str:
        return base64.b64encode(self.edge.probe(template).to_bytes()).decode()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("api")
    keys = root / "keys"
    keys.mkdir()
    holder = KeyHolder()
    holder.save(keys / "keyholder.key")
    service_key = ServiceKey.generate()
    service_key.save(keys / "service.key")
    edge = CaptureEdge(HashKey.generate(), DIM, public_context=holder.public_context())
    with MatchingService.open(root / "store", service_key, edge=edge.profile, keyholder=holder) as service:
        templates, labels = labelled_set(150)  # the operator calibrates before serving
        service.calibrate(calibration=edge.calibration(templates, labels, 1e-3, max_pairs=40_000))
    tokens = TokenStore(keys / "tokens.json")
    token = tokens.issue("gate-1")
    cert, key = self_signed(keys)
    argv = ["--store", str(root / "store"), "--service-key", str(keys / "service.key"),
            "--keyholder-key", str(keys / "keyholder.key"), "--tokens", str(tokens.path),
            "--tls-cert", str(cert), "--tls-key", str(key), "--max-body", str(MAX_BODY), "--log-level", "warning"]  # fmt: skip
    server = Server(argv, cert, root / "server.log")
    d = Deployment(server, edge, tokens, token)
    try:
        yield d
    finally:
        d.http.close()
        code = server.stop()
    log = server.log.read_text()
    assert code in (0, -15) and "Traceback" not in log, log  # -15: SIGTERM raised again after a clean shutdown


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert set(payload) == {"error"} and payload["error"]["code"] == code, payload
    assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
    return payload["error"]


def grant(d: Deployment, subject: str, *purposes: str) -> httpx.Response:
    return d.http.post("/v1/consents", json={"subject": subject, "purposes": list(purposes), **CONSENT})


def test_health_and_docs_need_no_token(deployment: Deployment) -> None:
    anonymous = deployment.server.client()
    assert anonymous.get("/v1/health").json()["status"] == "ok"
    spec = anonymous.get("/openapi.json").json()
    for path in ("/v1/consents", "/v1/enrolments", "/v1/verify", "/v1/identify", "/v1/audit/verify"):
        assert path in spec["paths"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert anonymous.get("/docs").status_code == 200


def test_tokens_are_checked(deployment: Deployment) -> None:
    d = deployment
    for client in (d.server.client(), d.server.client("fpm_000000000000_nope"), d.server.client("not-a-token"),
                   d.server.client(d.token[:-1] + ("A" if d.token[-1] != "A" else "B"))):  # fmt: skip
        problem = error(client.get("/v1/audit/verify"), 401, "unauthorized")
        assert d.token not in problem["message"]
    assert error(d.http.get("/v1/audit/verify", headers={"Authorization": "Basic abc"}), 401, "unauthorized")
    other = d.tokens.issue("gate-2")  # issued while the server runs: taken at once
    assert d.server.client(other).get("/v1/audit/verify").status_code == 200
    assert d.tokens.revoke("gate-2") == 1
    error(d.server.client(other).get("/v1/audit/verify"), 401, "unauthorized")
    stored = d.tokens.path.read_text()
    assert other.split("_", 2)[2] not in stored and d.token.split("_", 2)[2] not in stored


def test_consent_enrol_match_and_withdraw(deployment: Deployment) -> None:
    d = deployment
    created = grant(d, "alice", "entry")
    assert created.status_code == 201 and created.json()["purposes"] == ["entry"]
    enrolled = d.http.post("/v1/enrolments", json={"subject": "alice", "record": d.record(sample("alice", 0))})
    assert enrolled.status_code == 201 and enrolled.json() == {"subject": "alice", "enrolled": True}
    shown = d.http.get("/v1/consents/alice").json()
    assert [c["status"] for c in shown["consents"]] == ["active"]

    def verify(subject: str, template: np.ndarray, purpose: str = "entry") -> str:
        response = d.http.post("/v1/verify", json={"subject": subject, "purpose": purpose, "probe": d.probe(template)})
        assert response.status_code == 200, response.text
        return response.json()["outcome"]

    assert verify("alice", sample("alice", 1)) == "match"
    assert verify("alice", stranger(3)) == "no_match"
    assert verify("alice", sample("alice", 1), "payment") == "use_alternative"
    found = d.http.post("/v1/identify", json={"purpose": "entry", "probe": d.probe(sample("alice", 2)), "k": 3})
    assert found.json() == {"matches": [{"subject": "alice", "rank": 1}]}
    report = d.http.get("/v1/subjects/alice/report").json()
    assert report["enrolled"] and {e["event"] for e in report["events"]} >= {"enrol", "verify"}
    assert "template" not in json.dumps(report).lower().replace("template_", "")
    withdrawn = d.http.post("/v1/consents/alice/withdraw", json={})
    assert withdrawn.json() == {"erased": True}
    assert verify("alice", sample("alice", 1)) == "use_alternative"
    grant(d, "bob", "entry")
    d.http.post("/v1/enrolments", json={"subject": "bob", "record": d.record(sample("bob", 0))})
    assert d.http.delete("/v1/subjects/bob").json() == {"erased": True}
    assert d.http.delete("/v1/subjects/bob").json() == {"erased": False}
    audit = d.http.get("/v1/audit/verify").json()
    assert audit["ok"] and audit["entries"] > 5
    lines = d.http.get("/v1/audit/export").text.splitlines()
    assert len(lines) >= audit["entries"] and all(json.loads(line)["hash"] for line in lines)


def test_refusals_have_stable_codes(deployment: Deployment) -> None:
    d = deployment
    record = d.record(sample("carol", 0))
    error(d.http.post("/v1/enrolments", json={"subject": "carol", "record": record}), 403, "consent_required")
    assert grant(d, "carol", "entry").status_code == 201
    assert d.http.post("/v1/enrolments", json={"subject": "carol", "record": record}).status_code == 201
    error(d.http.post("/v1/enrolments", json={"subject": "carol", "record": record}), 409, "already_enrolled")
    bundled = {"subject": "dave", "purposes": ["entry"], **CONSENT, "separate": False}
    error(d.http.post("/v1/consents", json=bundled), 422, "bundled_consent")
    both = {"subject": "dave", "purposes": ["entry"], **CONSENT, "expires_at": "2030-01-01T00:00:00Z"}
    error(d.http.post("/v1/consents", json=both), 422, "invalid_consent")
    stranger_edge = CaptureEdge(HashKey.generate(), DIM, scheme="hash")
    foreign = base64.b64encode(stranger_edge.probe(sample("carol", 1)).to_bytes()).decode()
    error(d.http.post("/v1/verify", json={"subject": "carol", "purpose": "entry", "probe": foreign}), 422, "profile_mismatch")
    error(d.http.post("/v1/consents/nobody/withdraw", json={"consent_id": "c-1"}), 422, "invalid_input")


@pytest.mark.parametrize(
    "content, code",
    [
        (b"{not json", "malformed_json"),
        (b'{"subject": "x", "purpose": "entry", "probe": "AAAA"', "malformed_json"),
        (b"\xff\xfe\x00", "malformed_json"),
        (b"[" * 5000 + b"]" * 5000, "invalid_body"),
        (b"null", "invalid_body"),
        (b"[]", "invalid_body"),
        (b"42", "invalid_body"),
        (b'{"subject": "x", "purpose": "entry"}', "invalid_body"),
        (b'{"subject": "x", "purpose": "entry", "probe": "AAAA", "extra": 1}', "invalid_body"),
        (b'{"subject": "", "purpose": "entry", "probe": "AAAA"}', "invalid_body"),
        (b'{"subject": 7, "purpose": "entry", "probe": "AAAA"}', "invalid_body"),
        (b'{"subject": "x", "purpose": "entry", "probe": "not base64!"}', "invalid_body"),
        (b'{"subject": "x", "purpose": "entry", "probe": "AAAA"}', "malformed_message"),
        (b'{"subject": "x", "purpose": "entry", "probe": "' + base64.b64encode(b"FPEDGE01" + bytes(300)) + b'"}',
         "malformed_message"),
    ],
    ids=["broken", "unterminated", "binary", "deep-nesting", "null", "array", "number", "missing-field",
         "extra-field", "empty-subject", "wrong-type", "bad-base64", "short-message", "garbage-message"],
)  # fmt: skip
def test_malformed_bodies(deployment: Deployment, content: bytes, code: str) -> None:
    response = deployment.http.post("/v1/verify", content=content, headers={"content-type": "application/json"})
    status = {"malformed_json": 400, "invalid_body": 422, "malformed_message": 422}[code]
    if code == "invalid_body" and content.startswith(b"[["):
        assert response.status_code in (400, 422), response.text  # refused either way, never a crash
        assert response.json()["error"]["code"] in ("invalid_body", "malformed_json")
    else:
        error(response, status, code)


def test_bad_parameters_and_routes(deployment: Deployment) -> None:
    d = deployment
    probe = d.probe(sample("alice", 1))
    for k in (0, 101, "3", None):
        error(d.http.post("/v1/identify", json={"purpose": "entry", "probe": probe, "k": k}), 422, "invalid_body")
    error(d.http.get("/v1/no-such-route"), 404, "not_found")
    error(d.http.get("/v1/verify"), 405, "method_not_allowed")


def test_oversized_requests_are_refused_before_parsing(deployment: Deployment) -> None:
    d = deployment
    big = b'{"subject": "x", "purpose": "entry", "probe": "' + b"A" * (MAX_BODY + 10) + b'"}'
    error(d.http.post("/v1/verify", content=big, headers={"content-type": "application/json"}), 413, "too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(big), 16_384):
            yield big[start : start + 16_384]

    with d.server.client(d.token) as fresh:
        error(fresh.post("/v1/verify", content=chunks(), headers={"content-type": "application/json"}), 413, "too_large")
    assert d.http.get("/v1/health").status_code == 200  # still serving


def test_tokens_and_serve_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fpmatch import cli

    tokens = str(tmp_path / "tokens.json")
    assert cli.main(["tokens", "new", "kiosk", "--tokens", tokens]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("fpm_") and TokenStore(tokens).authenticate(token) == "kiosk"
    assert oct((tmp_path / "tokens.json").stat().st_mode & 0o777) == "0o600"
    assert cli.main(["tokens", "list", "--tokens", tokens]) == 0
    listed = capsys.readouterr().out
    assert '"client": "kiosk"' in listed and token.split("_", 2)[2] not in listed
    assert cli.main(["tokens", "revoke", "kiosk", "--tokens", tokens]) == 0
    assert TokenStore(tokens).authenticate(token) is None
    assert cli.main(["tokens", "revoke", "kiosk", "--tokens", tokens]) == 2
    assert "holds no token" in capsys.readouterr().err
    (tmp_path / "damaged.json").write_text("{")
    assert cli.main(["tokens", "list", "--tokens", str(tmp_path / "damaged.json")]) == 2
    assert "damaged" in capsys.readouterr().err
    assert cli.main(["serve", "--store", str(tmp_path / "none"), "--tokens", tokens]) == 2
    assert "no fpmatch store" in capsys.readouterr().err


def test_serve_refuses_plain_http_beyond_loopback(deployment: Deployment, capsys: pytest.CaptureFixture[str]) -> None:
    from fpmatch import cli

    store = deployment.server.log.parent / "store"
    assert cli.main(["serve", "--store", str(store), "--tokens", str(deployment.tokens.path)]) == 2
    assert "--tls-cert" in capsys.readouterr().err
    argv = ["serve", "--store", str(store), "--no-tls", "--host", "0.0.0.0", "--tokens", str(deployment.tokens.path)]
    assert cli.main(argv) == 2
    assert "loopback" in capsys.readouterr().err


def test_serve_takes_a_key_holder_service_with_its_tls_files(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fpmatch import cli

    store = deployment.server.log.parent / "store"
    keys = deployment.server.log.parent / "keys"
    base = ["serve", "--store", str(store), "--tokens", str(deployment.tokens.path), "--no-tls",
            "--service-key", str(keys / "service.key"), "--keyholder-address", "127.0.0.1:1"]  # fmt: skip
    assert cli.main([*base, "--keyholder-key", str(keys / "keyholder.key")]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli.main(base) == 2
    assert "--keyholder-cert" in capsys.readouterr().err  # mutual TLS only: the client's files are required


def test_token_store_refuses_odd_tokens(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "t.json")
    token = store.issue("gate")
    for odd in ("", "fpm", "fpm__", "fpm_zz_" + token.split("_", 2)[2], token + "x", "x" * 10_000, "fpm_" + "a" * 300):
        assert store.authenticate(odd) is None
    assert store.authenticate(token) == "gate"
    for bad in ("", " gate", "a" * 200, "tab\there"):
        with pytest.raises(ValueError):
            store.issue(bad)
