"""The ``fpmatch`` command line: help everywhere, the three parties (capture edge, matching
service, key holder) each from its own key file, the consent-bound flow end to end for the
default hybrid scheme and for hash, one-line errors with exit status 2 (wrong keys and wrong
kinds of key file among them), audit tampering found, the demo and the built-in bench."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fpmatch import ProbeMessage, ServiceKey, cli, demo
from fpmatch._progress import progress_bars
from fpmatch.edge import CaptureEdge
from fpmatch.he import KeyHolder
from fpmatch.store import Store
from service_support import DIM, labelled_set, sample, stranger

COMMANDS = [
    [],
    ["demo"],
    ["bench"],
    ["keys"],
    ["keys", "new"],
    ["consent"],
    ["consent", "grant"],
    ["consent", "withdraw"],
    ["consent", "show"],
    ["enrol"],
    ["calibrate"],
    ["verify"],
    ["identify"],
    ["audit"],
    ["audit", "verify"],
    ["audit", "export"],
    ["purge"],
    ["keyholder"],
    ["keyholder", "init"],
    ["keyholder", "serve"],
    ["keyholder", "register-edge"],
    ["keyholder", "public"],
    ["keyholder", "certs"],
    ["keyholder", "audit"],
    ["serve"],
    ["tokens"],
    ["tokens", "new"],
    ["tokens", "list"],
    ["tokens", "revoke"],
    ["cluster"],
    ["cluster", "up"],
    ["cluster", "status"],
    ["cluster", "down"],
]
STORE_COMMANDS = [["consent", "grant"], ["consent", "withdraw"], ["consent", "show"], ["enrol"], ["calibrate"],
                  ["verify"], ["identify"], ["audit", "verify"], ["audit", "export"], ["purge"]]  # fmt: skip
KEY_ENV = ("FPMATCH_STORE", "FPMATCH_KEY", "FPMATCH_SERVICE_KEY", "FPMATCH_KEYHOLDER_KEY", "FPMATCH_KEYHOLDER_ADDRESS",
           "FPMATCH_KEYHOLDER_CERT", "FPMATCH_KEYHOLDER_TLS_KEY", "FPMATCH_KEYHOLDER_CA")


@pytest.fixture(autouse=True)
def _no_key_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests name their keys; none leaks in from the environment they run in."""
    for name in KEY_ENV:
        monkeypatch.delenv(name, raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """main(argv) in-process: (exit status, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fpmatch: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths = {prefix}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                paths |= command_paths(child, prefix + (name,))
    return paths


@pytest.fixture
def workspace(tmp_path: Path) -> dict[str, Any]:
    """Key paths outside the store (none written yet), the store path, and .npy files of one
    person, a stranger and a labelled calibration set."""
    keys = tmp_path / "keys"
    keys.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    files = {
        "alice": sample("alice", 0),
        "alice_probe": sample("alice", 1),
        "stranger": stranger(5),
        "alice_f64": sample("alice", 1).astype(np.float64),
    }
    paths = {name: data / f"{name}.npy" for name in files}
    for name, array in files.items():
        np.save(paths[name], array)
    templates, labels = labelled_set(150)
    np.save(data / "cal.npy", templates)
    np.save(data / "labels.npy", labels)
    return {
        "key": keys / "edge.key",
        "service_key": keys / "service.key",
        "keyholder_key": keys / "keyholder.key",
        "store": tmp_path / "store",
        "data": data,
        "npy": paths,
        "root": tmp_path,
    }


def make_keys(capsys: pytest.CaptureFixture[str], ws: dict[str, Any], *kinds: str) -> None:
    for kind in kinds or ("edge", "service", "keyholder"):
        target = ws["key" if kind == "edge" else f"{kind}_key"]
        code, _, err = run(capsys, "keys", "new", "--kind", kind, str(target))
        assert code == 0, err


def store_args(ws: dict[str, Any], *, keyholder: bool = True) -> list[str]:
    argv = ["--store", str(ws["store"]), "--key", str(ws["key"]), "--service-key", str(ws["service_key"])]
    return argv + (["--keyholder-key", str(ws["keyholder_key"])] if keyholder else [])


def grant_args(ws: dict[str, Any], subject: str, *purposes: str, extra: tuple[str, ...] = ()) -> list[str]:
    argv = ["consent", "grant", subject]
    for purpose in purposes:
        argv += ["--purpose", purpose]
    argv += ["--notice-version", "2026-01", "--evidence", f"form-{subject}", "--method", "signed-form"]
    return argv + ["--retention-days", "365", *extra]


def stored_scheme(ws: dict[str, Any]) -> str:
    with sqlite3.connect(ws["store"] / "store.sqlite") as db:
        (value,) = db.execute("SELECT value FROM meta WHERE name = 'profile'").fetchone()
    db.close()
    return json.loads(value)["scheme"]


def calibrate_args(ws: dict[str, Any]) -> list[str]:
    data = ws["data"]
    return ["calibrate", "--target-fmr", "1e-3", "--templates", str(data / "cal.npy"),
            "--labels", str(data / "labels.npy"), "--max-pairs", "40000"]  # fmt: skip


# -- help ---------------------------------------------------------------------


def test_every_command_is_listed_here() -> None:
    assert command_paths(cli.build_parser()) == {tuple(c) for c in COMMANDS}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "fpmatch")
def test_help_for_every_command(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code, out, err = run(capsys, *command, "--help")
    assert code == 0, err
    assert out.startswith("usage: fpmatch")
    assert "examples:" in out
    if command in STORE_COMMANDS:  # the roles are explained where the key options are
        for option in ("--key", "--service-key", "--keyholder-key", "--scheme"):
            assert option in out
        assert "capture edge" in out and "matching service" in out and "key holder" in out
        assert "rate limit" in out


def test_top_level_help_names_the_parties(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "capture edge" in out and "matching service" in out and "key holder" in out
    assert "--kind keyholder" in out and "FPMATCH_SERVICE_KEY" in out


def test_help_and_errors_through_python_m(workspace: dict[str, Any]) -> None:
    shown = subprocess.run([sys.executable, "-m", "fpmatch", "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "consent" in shown.stdout and "purge" in shown.stdout

    missing = workspace["root"] / "no-such.key"
    argv = ["verify", "alice", "--probe", str(workspace["npy"]["alice_probe"]), "--purpose", "payment"]
    env = {k: v for k, v in os.environ.items() if k != "FPMATCH_DEBUG" and k not in KEY_ENV}
    env.update(FPMATCH_STORE=str(workspace["store"]), FPMATCH_SERVICE_KEY=str(missing))
    failed = subprocess.run(
        [sys.executable, "-m", "fpmatch", *argv], capture_output=True, text=True, timeout=60, env=env
    )
    assert failed.returncode == 2
    assert failed.stdout == ""
    assert_one_line_error(failed.returncode, failed.stderr, str(missing), "service")


def test_installed_entry_point() -> None:
    script = Path(sys.executable).parent / "fpmatch"
    if not script.exists():
        pytest.skip("the fpmatch script is not installed beside this interpreter")
    shown = subprocess.run([str(script), "keys", "new", "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "usage: fpmatch keys new" in shown.stdout


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], workspace: dict[str, Any]) -> None:
    code, _, err = run(capsys, "enrol", *store_args(workspace))
    assert code == 2 and "--template" in err
    code, _, err = run(capsys, "verify", "alice", "--purpose", "payment")
    assert code == 2 and "--probe" in err
    code, _, err = run(capsys, "identify", "--probe", "x.npy", "--purpose", "entry", "-k", "0")
    assert code == 2 and "positive integer" in err
    code, _, err = run(capsys, "keys", "new", "--kind", "shop", "x.key")
    assert code == 2 and "--kind" in err
    code, _, err = run(capsys, "verify", "alice", "--probe", "x.npy", "--purpose", "entry", "--scheme", "rsa")
    assert code == 2 and "--scheme" in err
    code, _, _ = run(capsys, "consent")
    assert code == 2


# -- keys -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["edge", "service", "keyholder"])
def test_keys_new(capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str) -> None:
    target = tmp_path / f"{kind}.key"
    argv = ["keys", "new", str(target)] if kind == "edge" else ["keys", "new", "--kind", kind, str(target)]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    if kind == "keyholder":
        holder = KeyHolder.load(target)
        assert holder.key_id in out and "key holder" in out
    else:
        body = json.loads(target.read_text())
        assert body["format"] == {"edge": "fpmatch-hash-key", "service": "fpmatch-service-key"}[kind]
        assert body["key_id"] in out and body["secret"] not in out
        assert ("capture edge" if kind == "edge" else "matching service") in out

    before = target.read_bytes()
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, "refusing to overwrite")
    assert target.read_bytes() == before


# -- the consent-bound flow -----------------------------------------------------


def test_hybrid_default_end_to_end(capsys: pytest.CaptureFixture[str], workspace: dict[str, Any]) -> None:
    ws, npy = workspace, workspace["npy"]
    make_keys(capsys, ws)
    args = store_args(ws)

    code, out, err = run(capsys, *grant_args(ws, "alice", "payment", extra=("--dim", str(DIM))), *args)
    assert code == 0, err
    record = json.loads(out)
    assert record["subject"] == "alice" and record["purposes"] == ["payment"] and record["separate"] is True
    assert stored_scheme(ws) == "hybrid"  # the default scheme

    code, out, err = run(capsys, "enrol", "alice", "--template", str(npy["alice"]), *args)
    assert (code, out.strip()) == (0, "alice: enrolled"), err
    # A one-person store has no impostor pairs to set a threshold from: the error says what to do.
    verify = ["verify", "alice", "--probe", str(npy["alice_probe"])]
    code, _, err = run(capsys, *verify, "--purpose", "payment", *args)
    assert_one_line_error(code, err, "fpmatch calibrate")

    names = ["bob", "carol"]
    for name in names:
        assert run(capsys, *grant_args(ws, name, "payment"), *args)[0] == 0
    subjects = ws["data"] / "subjects.txt"
    subjects.write_text("\n".join(names) + "\n")
    np.save(ws["data"] / "batch.npy", np.stack([sample(name, 0) for name in names]))
    code, out, err = run(capsys, "enrol", "--batch", str(subjects), "--templates", str(ws["data"] / "batch.npy"), *args)
    assert code == 0 and "enrolled 2" in out, err

    code, out, err = run(capsys, *calibrate_args(ws), *args)
    assert code == 0, err
    assert "cosine >=" in out and "1e-3" not in out and "0.001" in out and "labelled templates" in out

    code, out, err = run(capsys, *verify, "--purpose", "payment", *args)
    assert (code, out.strip()) == (0, "match"), err
    code, out, _ = run(capsys, "verify", "bob", "--probe", str(npy["alice_probe"]), "--purpose", "payment",
                       "--exit-code", *args)  # fmt: skip
    assert (code, out.strip()) == (1, "no_match")
    code, out, _ = run(capsys, "verify", "alice", "--probe", str(npy["stranger"]), "--purpose", "payment",
                       "--exit-code", *args)  # fmt: skip
    assert (code, out.strip()) == (1, "no_match")
    code, out, _ = run(capsys, *verify, "--purpose", "entry", *args)
    assert (code, out.strip()) == (0, "use_alternative")
    code, out, _ = run(capsys, *verify, "--purpose", "entry", "--exit-code", *args)
    assert (code, out.strip()) == (3, "use_alternative")

    identify = ["identify", "--probe", str(npy["alice_probe"]), "-k", "3"]
    code, out, err = run(capsys, *identify, "--purpose", "payment", *args)
    assert code == 0, err
    candidates = [json.loads(line) for line in out.splitlines()]
    assert candidates == [{"rank": 1, "subject": "alice"}]  # rank and subject only: no score exists
    code, out, err = run(capsys, *identify, "--purpose", "entry", "--exit-code", *args)
    assert (code, out) == (1, "") and "no match" in err

    code, out, err = run(capsys, "consent", "show", "alice", *args)
    assert code == 0, err
    report = json.loads(out)
    assert report["enrolled"] is True and report["consents"][0]["status"] == "active"
    assert set(report) == {"subject", "pseudonym", "generated_at", "enrolled", "enrolled_at", "consents", "events"}

    code, out, err = run(capsys, "consent", "withdraw", "alice", *args)
    assert code == 0 and "erased" in out, err
    code, out, _ = run(capsys, *verify, "--purpose", "payment", *args)
    assert (code, out.strip()) == (0, "use_alternative")
    code, out, _ = run(capsys, *identify, "--purpose", "payment", *args)
    assert "alice" not in out
    code, out, _ = run(capsys, "consent", "show", "alice", *args)
    assert json.loads(out)["enrolled"] is False

    code, out, err = run(capsys, "audit", "verify", *args)
    assert code == 0 and "verified" in out, err
    exported = ws["root"] / "audit.jsonl"
    code, out, err = run(capsys, "audit", "export", str(exported), *args)
    assert code == 0, err
    entries = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    events = [e["event"] for e in entries]
    assert {"consent.granted", "enrol", "calibrate", "verify", "identify", "consent.withdrawn", "purge"} <= set(events)
    assert all("score" not in e["detail"] and "alice" not in json.dumps(e) for e in entries)
    code, _, err = run(capsys, "audit", "export", str(exported), *args)
    assert_one_line_error(code, err, "exists")

    verify_row = next(e["seq"] for e in entries if e["event"] == "verify" and e["outcome"] == "match")
    with sqlite3.connect(ws["store"] / "store.sqlite") as db:
        db.execute("UPDATE audit SET outcome = 'no_match' WHERE seq = ?", (verify_row,))
    db.close()
    code, out, err = run(capsys, "audit", "verify", *args)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"audit entry {verify_row}" in lines[0] and "Traceback" not in err


def test_hash_store_needs_no_keyholder_key(
    capsys: pytest.CaptureFixture[str], workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --scheme hash store, the keys and store from the environment: batch enrolment in chunks
    with per-line errors, purges, and only the service key where no template is involved."""
    ws = workspace
    make_keys(capsys, ws, "edge", "service")
    monkeypatch.setattr(cli.matching, "ENROL_CHUNK", 2)  # several transactions from a small batch
    monkeypatch.setenv("FPMATCH_STORE", str(ws["store"]))
    monkeypatch.setenv("FPMATCH_KEY", str(ws["key"]))
    monkeypatch.setenv("FPMATCH_SERVICE_KEY", str(ws["service_key"]))
    names = ["bob", "carol", "dave", "erin", "frank"]
    for i, name in enumerate(names[:4]):
        extra = ("--scheme", "hash", "--dim", str(DIM)) if i == 0 else ()
        code, _, err = run(capsys, *grant_args(ws, name, "entry", extra=extra))
        assert code == 0, err
    assert stored_scheme(ws) == "hash" and not ws["keyholder_key"].exists()
    subjects = ws["data"] / "subjects.txt"
    subjects.write_text("bob\n\ncarol\ndave\nerin\nfrank\n")
    templates = ws["data"] / "batch.npy"
    np.save(templates, np.stack([sample(name, 0) for name in names]))

    # frank (line 6) has no consent: the first two chunks are enrolled, his chunk is not.
    code, _, err = run(capsys, "enrol", "--batch", str(subjects), "--templates", str(templates))
    assert_one_line_error(code, err, "line 6", "frank", "no active consent", "4 before them")
    assert run(capsys, *grant_args(ws, "frank", "entry"))[0] == 0
    code, _, err = run(capsys, "enrol", "--batch", str(subjects), "--templates", str(templates))
    assert_one_line_error(code, err, "line 1", "bob", "already enrolled", "0 before them")
    code, out, err = run(capsys, "enrol", "--batch", str(subjects), "--templates", str(templates),
                         "--skip-enrolled", "--progress")  # fmt: skip
    assert code == 0 and "enrolled 1 subject(s), skipped 4" in out, err
    assert "enrolling: 100%" in err and "5/5" in err

    np.save(templates, np.stack([sample(name, 0) for name in names[:2]]))
    code, _, err = run(capsys, "enrol", "--batch", str(subjects), "--templates", str(templates))
    assert_one_line_error(code, err, "5 subject(s)", "2 template(s)")

    code, out, err = run(capsys, *calibrate_args(ws))
    assert code == 0 and "score >=" in out, err
    code, out, err = run(capsys, "verify", "dave", "--probe", str(ws["npy"]["alice"]), "--purpose", "entry")
    assert (code, out.strip()) == (0, "no_match"), err
    np.save(ws["data"] / "dave.npy", sample("dave", 1))
    code, out, err = run(capsys, "identify", "--probe", str(ws["data"] / "dave.npy"), "--purpose", "entry")
    assert code == 0 and json.loads(out.splitlines()[0]) == {"rank": 1, "subject": "dave"}, err

    # No template involved: the service key alone opens the store.
    monkeypatch.delenv("FPMATCH_KEY")
    code, out, err = run(capsys, "purge")
    assert (code, out) == (0, "") and "nothing to purge" in err
    code, _, err = run(capsys, "audit", "verify", "--scheme", "hybrid")
    assert_one_line_error(code, err, "scheme hash", "--scheme applies only when creating")
    # A consent record edited outside fpmatch is damage: a one-line error that says how to recover.
    genuine = (ws["store"] / "store.sqlite").read_bytes()
    with sqlite3.connect(ws["store"] / "store.sqlite") as db:
        db.execute("UPDATE consents SET expires_at = '2099-01-01T00:00:00.000000+00:00' WHERE subject = 'carol'")
    db.close()
    code, _, err = run(capsys, "purge")
    assert_one_line_error(code, err, "damaged", "'carol'", "backup")
    (ws["store"] / "store.sqlite").write_bytes(genuine)
    # Let carol's consent lapse (rewritten through the store, as a withdrawal would be): the next
    # command erases her, and purge names whoever lapsed.
    store = Store.open(ws["store"], ServiceKey.load(ws["service_key"]))
    with store.transaction() as tx:
        for record in store.consents("carol"):
            tx.put_consent(dataclasses.replace(record, granted_at=datetime(2020, 1, 1, tzinfo=timezone.utc),
                                               expires_at=datetime(2021, 1, 1, tzinfo=timezone.utc)))  # fmt: skip
    store.close()
    code, out, err = run(capsys, "purge")
    assert (code, out) == (0, "carol\n") and "purged 1" in err
    code, _, err = run(capsys, "verify", "carol", "--probe", str(ws["npy"]["alice"]), "--purpose", "entry")
    assert_one_line_error(code, err, "--key", "FPMATCH_KEY")  # a probe needs the capture edge
    monkeypatch.setenv("FPMATCH_KEY", str(ws["key"]))
    code, out, _ = run(capsys, "verify", "carol", "--probe", str(ws["npy"]["alice"]), "--purpose", "entry")
    assert out.strip() == "use_alternative"


# -- errors ---------------------------------------------------------------------


def test_wrong_keys_are_one_line_errors(capsys: pytest.CaptureFixture[str], workspace: dict[str, Any]) -> None:
    ws, npy = workspace, workspace["npy"]
    make_keys(capsys, ws)
    assert run(capsys, *grant_args(ws, "alice", "payment", extra=("--dim", str(DIM))), *store_args(ws))[0] == 0
    assert run(capsys, "enrol", "alice", "--template", str(npy["alice"]), *store_args(ws))[0] == 0
    others = {kind: ws["root"] / "keys" / f"other-{kind}.key" for kind in ("edge", "service", "keyholder")}
    for kind, path in others.items():
        assert run(capsys, "keys", "new", "--kind", kind, str(path))[0] == 0
    verify = ["verify", "alice", "--probe", str(npy["alice_probe"]), "--purpose", "payment"]
    verify += ["--store", str(ws["store"])]

    def keyed(**override: Path) -> list[str]:
        keys = {"--key": ws["key"], "--service-key": ws["service_key"], "--keyholder-key": ws["keyholder_key"]}
        keys.update({f"--{name.replace('_', '-')}": path for name, path in override.items()})
        return [part for option, path in keys.items() for part in (option, str(path))]

    # Another key of the right kind.
    code, _, err = run(capsys, *verify, *keyed(key=others["edge"]))
    assert_one_line_error(code, err, "hash key", "--key")
    code, _, err = run(capsys, *verify, *keyed(service_key=others["service"]))
    assert_one_line_error(code, err, "service key")
    code, _, err = run(capsys, *verify, *keyed(keyholder_key=others["keyholder"]))
    assert_one_line_error(code, err, "key holder", "--keyholder-key")
    # A key file of the wrong kind: the error says what it holds and where it belongs.
    code, _, err = run(capsys, *verify, *keyed(key=ws["service_key"]))
    assert_one_line_error(code, err, "matching service's key", "not the capture edge's hash key", "--service-key")
    code, _, err = run(capsys, *verify, *keyed(service_key=ws["keyholder_key"]))
    assert_one_line_error(code, err, "key holder's secret key", "--keyholder-key")
    code, _, err = run(capsys, *verify, *keyed(keyholder_key=ws["key"]))
    assert_one_line_error(code, err, "capture edge's hash key", "--key")
    garbage = ws["root"] / "keys" / "garbage.key"
    garbage.write_text("not a key")
    code, _, err = run(capsys, *verify, *keyed(service_key=garbage))
    assert_one_line_error(code, err, "--service-key", str(garbage))
    # A hybrid store needs the key holder's key.
    code, _, err = run(capsys, *verify, "--key", str(ws["key"]), "--service-key", str(ws["service_key"]))
    assert_one_line_error(code, err, "--keyholder-key", "FPMATCH_KEYHOLDER_KEY")
    # Nothing in the store changed, and the right keys still work.
    code, out, err = run(capsys, *calibrate_args(ws), *store_args(ws))
    assert code == 0, err
    code, out, err = run(capsys, *verify, *keyed())
    assert (code, out.strip()) == (0, "match"), err


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str], workspace: dict[str, Any]) -> None:
    ws, npy = workspace, workspace["npy"]
    verify = ["verify", "alice", "--purpose", "payment"]

    code, _, err = run(capsys, *verify, "--probe", str(npy["alice_probe"]), *store_args(ws))
    assert_one_line_error(code, err, "matching service's key", str(ws["service_key"]))

    make_keys(capsys, ws)
    code, _, err = run(capsys, *verify, "--probe", str(npy["alice_probe"]), *store_args(ws))
    assert_one_line_error(code, err, "no fpmatch store", "--dim")
    assert not ws["store"].exists()  # nothing created by a mistyped --store
    code, _, err = run(capsys, *grant_args(ws, "alice", "payment", extra=("--dim", str(DIM), "--scheme", "he")),
                       *store_args(ws))  # fmt: skip
    assert_one_line_error(code, err, "he scheme", "--scheme hybrid")
    assert not ws["store"].exists()
    code, _, err = run(capsys, *grant_args(ws, "alice", "payment", extra=("--dim", str(DIM))),
                       *store_args(ws, keyholder=False))  # fmt: skip
    assert_one_line_error(code, err, "--keyholder-key")
    assert not ws["store"].exists()  # a new store needs all three parties

    assert run(capsys, *grant_args(ws, "alice", "payment", extra=("--dim", str(DIM))), *store_args(ws))[0] == 0
    code, _, err = run(capsys, "enrol", "alice", "--template", str(npy["alice_f64"]), *store_args(ws))
    assert_one_line_error(code, err, "float64", "float32")
    code, _, err = run(capsys, *verify, "--probe", str(npy["alice_f64"]), *store_args(ws))
    assert_one_line_error(code, err, "float64")
    code, _, err = run(capsys, *verify, "--probe", str(ws["root"] / "missing.npy"), *store_args(ws))
    assert_one_line_error(code, err, "not found")
    np.save(ws["data"] / "wide.npy", sample("alice", 0, dim=2 * DIM))
    code, _, err = run(capsys, "enrol", "alice", "--template", str(ws["data"] / "wide.npy"), *store_args(ws))
    assert_one_line_error(code, err, str(DIM))
    code, _, err = run(capsys, "enrol", "bob", "--template", str(npy["alice"]), *store_args(ws))
    assert_one_line_error(code, err, "no active consent")
    code, _, err = run(capsys, *grant_args(ws, "bob", "Payment!"), *store_args(ws))
    assert_one_line_error(code, err, "purpose")
    code, _, err = run(capsys, *grant_args(ws, "bob", "payment", extra=("--dim", str(2 * DIM))), *store_args(ws))
    assert_one_line_error(code, err, f"{DIM}-D", "--dim applies only when creating")
    code, _, err = run(capsys, "verify", "alice", "--probe", str(npy["alice_probe"]), "--purpose", "payment",
                       "--store", str(ws["store"]), "--service-key", str(ws["service_key"]),
                       "--keyholder-key", str(ws["keyholder_key"]))  # fmt: skip
    assert_one_line_error(code, err, "FPMATCH_KEY")

    for kind in ("edge", "service", "keyholder"):
        inside = ws["store"] / f"inside-{kind}.key"
        assert run(capsys, "keys", "new", "--kind", kind, str(inside))[0] == 0
        option = {"edge": "key", "service": "service_key", "keyholder": "keyholder_key"}[kind]
        argv = store_args({**ws, option: inside})
        code, _, err = run(capsys, *verify, "--probe", str(npy["alice_probe"]), *argv)
        assert_one_line_error(code, err, "inside")


def test_a_malformed_message_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, npy = workspace, workspace["npy"]
    make_keys(capsys, ws)
    assert run(capsys, *grant_args(ws, "alice", "payment", extra=("--dim", str(DIM))), *store_args(ws))[0] == 0
    verify = ["verify", "alice", "--probe", str(npy["alice_probe"]), "--purpose", "payment", *store_args(ws)]
    # The edge's messages reach the service as objects here; a broken one is refused in one line.
    empty = lambda self, template: ProbeMessage(self.profile.profile_id, None, None, None)  # noqa: E731
    monkeypatch.setattr(CaptureEdge, "probe", empty)
    code, _, err = run(capsys, *verify)
    assert_one_line_error(code, err, "ProbeMessage lacks its code")
    monkeypatch.setattr(CaptureEdge, "probe", lambda self, template: ProbeMessage("00" * 8, None, None, None))
    code, _, err = run(capsys, *verify)
    assert_one_line_error(code, err, "another scheme")


def test_debug_shows_the_exception(
    capsys: pytest.CaptureFixture[str], workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FPMATCH_DEBUG", "1")
    with pytest.raises(Exception, match="matching service's key"):
        cli.main(["audit", "verify", *store_args(workspace)])


# -- demo, bench and progress -------------------------------------------------------


def test_demo(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    figures: dict[str, float] = {}
    real = demo.run
    monkeypatch.setattr(demo, "run", lambda *args, **kwargs: figures.update(real(*args, **kwargs)))
    code, out, err = run(capsys, "demo", "--subjects", "150", "--probes", "20", "--profile", "offset")
    assert code == 0, err
    assert "hybrid scheme" in out and "offset profile" in out and "centred profile" not in out
    for party in ("key holder", "capture edge", "matching service"):
        assert party in out
    assert "rank-1" in out and "withdrawal of subject-00000" in out and "audit entries verified" in out
    assert figures["offset_tar"] >= 0.9 and figures["offset_rank1"] >= 0.9 and figures["offset_fmr"] == 0.0
    assert figures["offset_enrol_per_s"] > 0 and figures["offset_verify_ms"] > 0 and figures["offset_identify_ms"] > 0
    assert figures["removed_still_identified"] == 0.0
    code, _, err = run(capsys, "demo", "--subjects", "10", "--probes", "20")
    assert_one_line_error(code, err, "--probes")


def test_without_tenseal(
    capsys: pytest.CaptureFixture[str], workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without TenSEAL: hash stores and the demo (in the hash scheme) work; the rest says what to install."""
    import fpmatch

    monkeypatch.setitem(sys.modules, "fpmatch.he", None)  # importing it now fails
    monkeypatch.delattr(fpmatch, "he", raising=False)
    ws = workspace
    make_keys(capsys, ws, "edge", "service")
    code, _, err = run(capsys, "keys", "new", "--kind", "keyholder", str(ws["keyholder_key"]))
    assert_one_line_error(code, err, "TenSEAL", "--scheme hash")
    assert not ws["keyholder_key"].exists()
    code, _, err = run(capsys, "purge", "--dim", str(DIM), *store_args(ws))
    assert_one_line_error(code, err, "--keyholder-key")
    code, _, err = run(capsys, "purge", "--dim", str(DIM), "--scheme", "hash", *store_args(ws))
    assert code == 0 and "nothing to purge" in err
    code, out, err = run(capsys, "demo", "--subjects", "100", "--probes", "10", "--profile", "offset")
    assert code == 0, err
    assert "hash scheme" in out and "TenSEAL is not installed" in out and "key holder " not in out


#: A --quick bench at the smallest sizes that still exercise every scheme.
BENCH_SMALL = ["--quick", "--n", "200", "--nonmated", "400", "--he-probes", "60", "--he-nonmated", "100",
               "--hybrid-impostor-pairs", "2000", "--linkage-pairs", "20000", "--sizes", "200",
               "--queries", "5"]  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n"


def test_bench_writes_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_dir = tmp_path / "report"
    code, out, err = run(capsys, "bench", "--out", str(out_dir), *BENCH_SMALL, "--profile", "offset")
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    result = report["profiles"]["offset"]
    assert result["parameters"]["n"] == 200 and result["parameters"]["impostor_pairs"] == 200 * 199
    encrypted = importlib.util.find_spec("tenseal") is not None
    schemes = ["plain", "hash"] + (["he", "hybrid"] if encrypted else [])
    assert list(result["schemes"]) == list(result["det"]) == report["schemes"] == schemes
    for scheme in schemes:
        figures = result["schemes"][scheme]
        assert set(figures["tar_at_far"]) == {"1e-3", "1e-4"}
        for far, point in figures["tar_at_far"].items():
            assert point["far_achieved"] <= float(far)
            # FAR 1e-4 needs 300,000 impostor pairs: never claimed from this small run.
            assert point["supported"] == (figures["impostor_pairs"] >= 30 / float(far))
            assert (point["tar"] is None) == (not point["supported"])
            if point["supported"]:
                assert 0.0 <= point["tar"] <= 1.0
        assert 0.0 <= figures["rank1"] <= 1.0
        assert len(result["det"][scheme]["fmr"]) == len(result["det"][scheme]["fnmr"]) > 10
        assert scheme in result["identification"] and scheme in report["summary"]["offset"]["verification"]
    if encrypted:
        assert result["parameters"]["encrypted"]["mated_searches"] == 60
        assert result["identification"]["hybrid"]["shortlist"] == 32
        assert result["schemes"]["he"]["max_abs_error_vs_plain"] < 2e-4
        assert "hybrid shortlist" in out
    assert result["timing"]["hash_identify_ms"] > 0 and result["timing"]["enrol_per_s"] > 0
    attackers = report["irreversibility"]["offset"]
    assert {"with_key", "with_key_offset_restored", "without_key", "offset_only"} <= set(attackers)
    point = report["speed"]["offset"]["points"][0]
    assert point["n"] == 200 and ("he_identify_ms" in point) == ("hybrid_verify_ms" in point) == encrypted
    assert "offset" in out and "TAR@1e-4" in out and "inversion" in out
    plots = ("det", "unlinkability", "speed")
    if importlib.util.find_spec("matplotlib") is None:
        assert all(report["files"][name] is None for name in plots)
    else:
        for name in plots:
            assert report["files"][name] == f"{name}.png"
            assert (out_dir / f"{name}.png").read_bytes()[:8] == PNG


def test_bench_without_matplotlib(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it now fails
    for name in ("det", "speed", "unlinkability"):
        (tmp_path / f"{name}.png").write_bytes(b"old")
    code, _, err = run(capsys, "bench", "--out", str(tmp_path), *BENCH_SMALL, "--profile", "centred", "--no-encrypted")
    assert code == 0, err
    assert "matplotlib" in err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["schemes"] == ["plain", "hash"] and report["parameters"]["encrypted"] is None
    assert all(report["files"][name] is None for name in ("det", "speed", "unlinkability"))
    assert any("matplotlib" in note for note in report["notes"])
    assert not list(tmp_path.glob("*.png"))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("requested, terminal, drawn", [(True, False, True), (False, True, True), (False, False, False)])
def test_progress_bars_only_when_asked_or_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, requested: bool, terminal: bool, drawn: bool
) -> None:
    stderr = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    with progress_bars(requested)("work", 4) as bar:
        for _ in range(4):
            bar.update()
    text = stderr.getvalue()
    if drawn:
        assert text.startswith("\rwork:") and "100%" in text and "4/4" in text and text.endswith("\n")
    else:
        assert text == ""


# -- cluster ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["cluster", "up"], "ray start --head --port=6379 --include-dashboard=false"),
        (["cluster", "up", "--port", "7000", "--num-cpus", "4"], "ray start --head --port=7000 --include-dashboard=false --num-cpus=4"),
        (["cluster", "up", "--address", "10.0.0.1:6379"], "ray start --address=10.0.0.1:6379"),
        (["cluster", "status", "--address", "10.0.0.1:6379"], "ray status --address=10.0.0.1:6379"),
        (["cluster", "down"], "ray stop"),
    ],
)
def test_cluster_commands_wrap_ray(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    """The Ray command each cluster command runs (printed, not run: ``ray stop`` ends every Ray process of the user)."""
    code, out, err = run(capsys, *argv, "--dry-run")
    assert (code, out.strip()) == (0, expected), err


def test_cluster_up_refuses_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "cluster", "up", "--port", "0", "--dry-run")
    assert code == 2 and "positive integer" in err


# -- PostgreSQL store ----------------------------------------------------------------


def test_a_postgresql_store_from_the_command_line(
    capsys: pytest.CaptureFixture[str], workspace: dict[str, Any], postgres_server: Any
) -> None:
    """--database CONNINFO: the store is created in, read from and erased from the PostgreSQL
    database; the --store directory holds no database of its own."""
    import psycopg

    ws, npy = workspace, workspace["npy"]
    make_keys(capsys, ws, "edge", "service")
    database = postgres_server.conninfo()
    args = [*store_args(ws, keyholder=False), "--database", database]
    code, _, err = run(capsys, "audit", "verify", *args)
    assert_one_line_error(code, err, "no fpmatch store in the database of --database", "--dim")
    names = ["alice", "bob", "carol"]
    for i, name in enumerate(names):
        extra = ("--scheme", "hash", "--dim", str(DIM)) if i == 0 else ()
        assert run(capsys, *grant_args(ws, name, "entry", extra=extra), *args)[0] == 0
    np.save(ws["data"] / "batch.npy", np.stack([sample(name, 0) for name in names]))
    (ws["data"] / "subjects.txt").write_text("\n".join(names) + "\n")
    code, out, err = run(capsys, "enrol", "--batch", str(ws["data"] / "subjects.txt"),
                         "--templates", str(ws["data"] / "batch.npy"), *args)  # fmt: skip
    assert code == 0 and "enrolled 3" in out, err
    assert run(capsys, *calibrate_args(ws), *args)[0] == 0
    identify = ["identify", "--probe", str(npy["alice_probe"]), "--purpose", "entry", *args]
    code, out, err = run(capsys, *identify)
    assert code == 0 and json.loads(out.splitlines()[0]) == {"rank": 1, "subject": "alice"}, err
    assert not (ws["store"] / "store.sqlite").exists()
    assert Store.exists(ws["store"], database=database) and not Store.exists(ws["store"])

    code, out, err = run(capsys, "consent", "withdraw", "alice", *args)
    assert code == 0 and "erased" in out, err
    code, out, _ = run(capsys, *identify)
    assert "alice" not in out
    with psycopg.connect(database) as connection:
        assert connection.execute("SELECT subject FROM subjects ORDER BY subject").fetchall() == [("bob",), ("carol",)]
    code, out, err = run(capsys, "audit", "verify", *args)
    assert code == 0 and "verified" in out, err
