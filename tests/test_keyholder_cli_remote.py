"""Store commands with the key holder as a service: ``--keyholder-address`` and its TLS files
(or the ``FPMATCH_KEYHOLDER_*`` variables) instead of ``--keyholder-key``, against the real server."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

pytest.importorskip("tenseal", reason="the key holder needs TenSEAL")
pytest.importorskip("grpc", reason="the key holder service needs grpcio")
pytest.importorskip("cryptography", reason="the key holder service needs cryptography")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from keyholder_support import Deployment, Server  # noqa: E402
from service_support import DIM, labelled_set, sample  # noqa: E402

from fpmatch import cli  # noqa: E402
from fpmatch.he.ledger import Ledger  # noqa: E402

ENV = ("FPMATCH_STORE", "FPMATCH_KEY", "FPMATCH_SERVICE_KEY", "FPMATCH_KEYHOLDER_KEY", "FPMATCH_KEYHOLDER_ADDRESS",
       "FPMATCH_KEYHOLDER_CERT", "FPMATCH_KEYHOLDER_TLS_KEY", "FPMATCH_KEYHOLDER_CA")  # fmt: skip


@pytest.fixture(autouse=True)
def _no_key_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return Deployment(tmp_path_factory.mktemp("cli-remote"))


@pytest.fixture(scope="module")
def server(deployment: Deployment) -> Iterator[Server]:
    running = Server(deployment)
    yield running
    running.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def remote_args(deployment: Deployment, server: Server) -> list[str]:
    pki = deployment.pki
    return ["--keyholder-address", server.address, "--keyholder-cert", str(pki / "matching-service.crt"),
            "--keyholder-tls-key", str(pki / "matching-service.key"), "--keyholder-ca", str(pki / "ca.crt")]  # fmt: skip


def test_store_commands_with_a_remote_key_holder(
    capsys: pytest.CaptureFixture[str], deployment: Deployment, server: Server, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    keys = tmp_path / "keys"
    keys.mkdir()
    for kind, name in (("edge", "edge.key"), ("service", "service.key")):
        assert run(capsys, "keys", "new", "--kind", kind, str(keys / name))[0] == 0
    data = tmp_path / "data"
    data.mkdir()
    names = ["alice", "bob", "carol"]
    np.save(data / "batch.npy", np.stack([sample(name, 0) for name in names]))
    (data / "subjects.txt").write_text("\n".join(names) + "\n")
    np.save(data / "probe.npy", sample("alice", 1))
    templates, labels = labelled_set(150)
    np.save(data / "cal.npy", templates)
    np.save(data / "labels.npy", labels)
    store = ["--store", str(tmp_path / "store"), "--key", str(keys / "edge.key"),
             "--service-key", str(keys / "service.key")]  # fmt: skip
    args = store + remote_args(deployment, server)

    for name in names:
        grant = ["consent", "grant", name, "--purpose", "payment", "--notice-version", "v1", "--evidence", name,
                 "--method", "signed-form", "--retention-days", "30", "--dim", str(DIM)]  # fmt: skip
        code, _, err = run(capsys, *grant, *args)
        assert code == 0, err
    code, out, err = run(capsys, "enrol", "--batch", str(data / "subjects.txt"), "--templates",
                         str(data / "batch.npy"), *args)  # fmt: skip
    assert code == 0 and "enrolled 3" in out, err
    code, _, err = run(capsys, "calibrate", "--target-fmr", "1e-3", "--templates", str(data / "cal.npy"),
                       "--labels", str(data / "labels.npy"), "--max-pairs", "40000", *args)  # fmt: skip
    assert code == 0, err

    before = len(Ledger(deployment.ledger).entries())
    code, out, err = run(capsys, "verify", "alice", "--probe", str(data / "probe.npy"), "--purpose", "payment", *args)
    assert (code, out.strip()) == (0, "match"), err
    code, out, err = run(capsys, "identify", "--probe", str(data / "probe.npy"), "--purpose", "payment", *args)
    assert code == 0 and [json.loads(line)["subject"] for line in out.splitlines()] == ["alice"], err
    decided = [e for e in Ledger(deployment.ledger).entries()[before:] if e.outcome == "ok"]
    assert {e.op for e in decided} == {"decide", "best"} and {e.caller for e in decided} == {"matching-service"}

    # The same through the environment.
    pki = deployment.pki
    for variable, value in (("FPMATCH_KEYHOLDER_ADDRESS", server.address),
                            ("FPMATCH_KEYHOLDER_CERT", pki / "matching-service.crt"),
                            ("FPMATCH_KEYHOLDER_TLS_KEY", pki / "matching-service.key"),
                            ("FPMATCH_KEYHOLDER_CA", pki / "ca.crt")):  # fmt: skip
        monkeypatch.setenv(variable, str(value))
    code, out, err = run(capsys, "verify", "alice", "--probe", str(data / "probe.npy"), "--purpose", "payment", *store)
    assert (code, out.strip()) == (0, "match"), err
    for variable in ENV[4:]:
        monkeypatch.delenv(variable)

    # One-line errors: no TLS files, both kinds of key holder, a key holder that is not the store's.
    code, _, err = run(capsys, "verify", "alice", "--probe", str(data / "probe.npy"), "--purpose", "payment",
                       *store, "--keyholder-address", server.address)  # fmt: skip
    assert code == 2 and "--keyholder-cert" in err and "FPMATCH_KEYHOLDER_CA" in err and "Traceback" not in err
    assert run(capsys, "keys", "new", "--kind", "keyholder", str(keys / "kh.key"))[0] == 0
    code, _, err = run(capsys, "verify", "alice", "--probe", str(data / "probe.npy"), "--purpose", "payment",
                       *args, "--keyholder-key", str(keys / "kh.key"))  # fmt: skip
    assert code == 2 and "not both" in err
    code, _, err = run(capsys, "verify", "alice", "--probe", str(data / "probe.npy"), "--purpose", "payment",
                       *store, "--keyholder-key", str(keys / "kh.key"))  # fmt: skip
    assert code == 2 and "is not the one" in err

    # A key holder service that holds another key (another deployment's, or after a rotation).
    other = Deployment(tmp_path / "other-keyholder")
    elsewhere = Server(other)
    try:
        before = len(Ledger(other.ledger).entries())
        code, out, err = run(capsys, "verify", "alice", "--probe", str(data / "probe.npy"), "--purpose", "payment",
                             *store, *remote_args(other, elsewhere))  # fmt: skip
        assert code == 2 and out == "" and "is not the one" in err and "--keyholder-address" in err, err
        assert len(Ledger(other.ledger).entries()) == before  # refused before any decision was asked
    finally:
        elsewhere.stop()


def test_an_unreachable_key_holder_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], deployment: Deployment, tmp_path: Path
) -> None:
    from keyholder_support import free_port

    assert run(capsys, "keys", "new", "--kind", "edge", str(tmp_path / "e.key"))[0] == 0
    assert run(capsys, "keys", "new", "--kind", "service", str(tmp_path / "s.key"))[0] == 0
    nowhere = Server.__new__(Server)
    nowhere.address = f"127.0.0.1:{free_port()}"
    argv = ["consent", "grant", "alice", "--purpose", "payment", "--notice-version", "v1", "--evidence", "x",
            "--method", "signed-form", "--retention-days", "30", "--dim", str(DIM), "--store", str(tmp_path / "st"),
            "--key", str(tmp_path / "e.key"), "--service-key", str(tmp_path / "s.key"),
            *remote_args(deployment, nowhere)]  # fmt: skip
    code, _, err = run(capsys, *argv)
    assert code == 2 and "did not answer" in err and "Traceback" not in err
