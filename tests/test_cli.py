"""The ``fpmatch`` command line: help everywhere, the consent-bound flow end to end,
one-line errors with exit status 2, audit tampering found, and the built-in bench."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fpmatch import cli
from fpmatch._progress import Progress
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
]


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
    """A key outside the store, the store path, and .npy files of one person and a stranger."""
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
    key = keys / "hash.key"
    store = tmp_path / "store"
    return {"key": key, "store": store, "data": data, "npy": paths, "root": tmp_path}


def store_args(ws: dict[str, Any]) -> list[str]:
    return ["--store", str(ws["store"]), "--key", str(ws["key"])]


def grant_args(ws: dict[str, Any], subject: str, *purposes: str, extra: tuple[str, ...] = ()) -> list[str]:
    argv = ["consent", "grant", subject]
    for purpose in purposes:
        argv += ["--purpose", purpose]
    argv += ["--notice-version", "2026-01", "--evidence", f"form-{subject}", "--method", "signed-form"]
    return argv + ["--retention-days", "365", *extra, *store_args(ws)]


# -- help ---------------------------------------------------------------------


def test_every_command_is_listed_here() -> None:
    assert command_paths(cli.build_parser()) == {tuple(c) for c in COMMANDS}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "fpmatch")
def test_help_for_every_command(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code, out, err = run(capsys, *command, "--help")
    assert code == 0, err
    assert out.startswith("usage: fpmatch")
    assert "examples:" in out


def test_help_and_errors_through_python_m(workspace: dict[str, Any]) -> None:
    shown = subprocess.run([sys.executable, "-m", "fpmatch", "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "consent" in shown.stdout and "purge" in shown.stdout

    missing = workspace["root"] / "no-such.key"
    argv = ["verify", "alice", "--probe", str(workspace["npy"]["alice_probe"]), "--purpose", "payment"]
    env = {k: v for k, v in os.environ.items() if k != "FPMATCH_DEBUG"}
    env.update(FPMATCH_STORE=str(workspace["store"]), FPMATCH_KEY=str(missing))
    failed = subprocess.run(
        [sys.executable, "-m", "fpmatch", *argv], capture_output=True, text=True, timeout=60, env=env
    )
    assert failed.returncode == 2
    assert failed.stdout == ""
    assert_one_line_error(failed.returncode, failed.stderr, str(missing))


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
    code, _, _ = run(capsys, "consent")
    assert code == 2


# -- keys -----------------------------------------------------------------------


def test_keys_new(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "shop.key"
    code, out, err = run(capsys, "keys", "new", str(target))
    assert code == 0, err
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    body = json.loads(target.read_text())
    assert body["key_id"] in out and body["secret"] not in out

    before = target.read_bytes()
    code, _, err = run(capsys, "keys", "new", str(target))
    assert_one_line_error(code, err, "refusing to overwrite")
    assert target.read_bytes() == before


# -- the consent-bound flow -----------------------------------------------------


def test_full_flow(capsys: pytest.CaptureFixture[str], workspace: dict[str, Any]) -> None:
    ws, npy = workspace, workspace["npy"]
    assert run(capsys, "keys", "new", str(ws["key"]))[0] == 0

    code, out, err = run(capsys, *grant_args(ws, "alice", "payment", extra=("--dim", str(DIM))))
    assert code == 0, err
    record = json.loads(out)
    assert record["subject"] == "alice" and record["purposes"] == ["payment"] and record["separate"] is True

    code, out, err = run(capsys, "enrol", "alice", "--template", str(npy["alice"]), *store_args(ws))
    assert code == 0, err
    # A one-person store has no impostor pairs to set a threshold from: the error says what to do,
    # and labelled templates (not enrolled) calibrate it.
    code, _, err = run(capsys, "verify", "alice", "--probe", str(npy["alice_probe"]), "--purpose", "payment",
                       *store_args(ws))  # fmt: skip
    assert_one_line_error(code, err, "fpmatch calibrate")
    data = ws["data"]
    calibrate = ["calibrate", "--target-fmr", "1e-3", "--templates", str(data / "cal.npy")]
    calibrate += ["--labels", str(data / "labels.npy"), "--max-pairs", "40000"]
    code, out, err = run(capsys, *calibrate, *store_args(ws))
    assert code == 0 and "threshold" in out, err

    verify = ["verify", "alice", "--probe", str(npy["alice_probe"])]
    code, out, err = run(capsys, *verify, "--purpose", "payment", *store_args(ws))
    assert (code, out.strip()) == (0, "match"), err
    code, out, _ = run(capsys, "verify", "alice", "--probe", str(npy["stranger"]), "--purpose", "payment",
                       "--exit-code", *store_args(ws))  # fmt: skip
    assert (code, out.strip()) == (1, "no_match")
    code, out, _ = run(capsys, *verify, "--purpose", "entry", *store_args(ws))
    assert (code, out.strip()) == (0, "use_alternative")
    code, out, _ = run(capsys, *verify, "--purpose", "entry", "--exit-code", *store_args(ws))
    assert (code, out.strip()) == (3, "use_alternative")

    identify = ["identify", "--probe", str(npy["alice_probe"]), "-k", "3"]
    code, out, err = run(capsys, *identify, "--purpose", "payment", *store_args(ws))
    assert code == 0, err
    candidates = [json.loads(line) for line in out.splitlines()]
    assert candidates[0]["subject"] == "alice" and candidates[0]["rank"] == 1
    code, out, err = run(capsys, *identify, "--purpose", "entry", "--exit-code", *store_args(ws))
    assert (code, out) == (1, "") and "no match" in err

    code, out, err = run(capsys, "consent", "show", "alice", *store_args(ws))
    assert code == 0, err
    report = json.loads(out)
    assert report["enrolled"] is True and report["consents"][0]["status"] == "active"
    assert set(report) == {"subject", "pseudonym", "generated_at", "enrolled", "enrolled_at", "consents", "events"}

    code, out, err = run(capsys, "consent", "withdraw", "alice", *store_args(ws))
    assert code == 0 and "erased" in out, err
    code, out, _ = run(capsys, *verify, "--purpose", "payment", *store_args(ws))
    assert (code, out.strip()) == (0, "use_alternative")
    code, out, _ = run(capsys, "consent", "show", "alice", *store_args(ws))
    assert json.loads(out)["enrolled"] is False

    code, out, err = run(capsys, "audit", "verify", *store_args(ws))
    assert code == 0 and "verified" in out, err
    exported = ws["root"] / "audit.jsonl"
    code, out, err = run(capsys, "audit", "export", str(exported), *store_args(ws))
    assert code == 0, err
    entries = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    events = [e["event"] for e in entries]
    assert {"consent.granted", "enrol", "verify", "identify", "consent.withdrawn", "purge"} <= set(events)
    assert all("score" not in e["detail"] and "alice" not in json.dumps(e) for e in entries)
    code, _, err = run(capsys, "audit", "export", str(exported), *store_args(ws))
    assert_one_line_error(code, err, "exists")

    verify_row = next(e["seq"] for e in entries if e["event"] == "verify" and e["outcome"] == "match")
    with sqlite3.connect(ws["store"] / "store.sqlite") as db:
        db.execute("UPDATE audit SET outcome = 'no_match' WHERE seq = ?", (verify_row,))
    db.close()
    code, out, err = run(capsys, "audit", "verify", *store_args(ws))
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"audit entry {verify_row}" in lines[0] and "Traceback" not in err


def test_batch_enrol_env_defaults_and_purge(
    capsys: pytest.CaptureFixture[str], workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = workspace
    assert run(capsys, "keys", "new", str(ws["key"]))[0] == 0
    monkeypatch.setenv("FPMATCH_STORE", str(ws["store"]))
    monkeypatch.setenv("FPMATCH_KEY", str(ws["key"]))
    names = ["bob", "carol", "dave"]
    for i, name in enumerate(names):
        extra = ("--dim", str(DIM)) if i == 0 else ()
        argv = grant_args(ws, name, "entry", extra=extra)[: -len(store_args(ws))]  # from the environment
        assert run(capsys, *argv)[0] == 0
    subjects = ws["data"] / "subjects.txt"
    subjects.write_text("bob\n\ncarol\ndave\n")
    templates = ws["data"] / "batch.npy"
    np.save(templates, np.stack([sample(name, 0) for name in names]))

    code, out, err = run(capsys, "enrol", "--batch", str(subjects), "--templates", str(templates), "--progress")
    assert code == 0 and "enrolled 3" in out, err
    assert "enrolling [" in err and "100%" in err
    code, _, err = run(capsys, "enrol", "--batch", str(subjects), "--templates", str(templates))
    assert_one_line_error(code, err, "line 1", "bob", "0 enrolled before it")
    code, out, err = run(capsys, "enrol", "--batch", str(subjects), "--templates", str(templates), "--skip-enrolled")
    assert code == 0 and "skipped 3" in out, err

    np.save(templates, np.stack([sample(name, 0) for name in names[:2]]))
    code, _, err = run(capsys, "enrol", "--batch", str(subjects), "--templates", str(templates))
    assert_one_line_error(code, err, "3 subject(s)", "2 template(s)")

    code, out, err = run(capsys, "purge")
    assert (code, out) == (0, "") and "nothing to purge" in err
    # Let carol's consent lapse: the next command erases her, and purge names whoever lapsed.
    with sqlite3.connect(ws["store"] / "store.sqlite") as db:
        db.execute(
            "UPDATE consents SET granted_at = ?, expires_at = ? WHERE subject = 'carol'",
            ("2020-01-01T00:00:00.000000+00:00", "2021-01-01T00:00:00.000000+00:00"),
        )
    db.close()
    code, out, err = run(capsys, "purge")
    assert (code, out) == (0, "carol\n") and "purged 1" in err
    code, out, _ = run(capsys, "verify", "carol", "--probe", str(ws["npy"]["alice"]), "--purpose", "entry")
    assert out.strip() == "use_alternative"


# -- errors ---------------------------------------------------------------------


def test_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FPMATCH_KEY", raising=False)
    ws, npy = workspace, workspace["npy"]
    verify = ["verify", "alice", "--purpose", "payment"]

    code, _, err = run(capsys, *verify, "--probe", str(npy["alice_probe"]), *store_args(ws))
    assert_one_line_error(code, err, "hash key file", str(ws["key"]))

    assert run(capsys, "keys", "new", str(ws["key"]))[0] == 0
    code, _, err = run(capsys, *verify, "--probe", str(npy["alice_probe"]), *store_args(ws))
    assert_one_line_error(code, err, "no fpmatch store", "--dim")
    assert not ws["store"].exists()  # nothing created by a mistyped --store

    assert run(capsys, *grant_args(ws, "alice", "payment", extra=("--dim", str(DIM))))[0] == 0
    code, _, err = run(capsys, "enrol", "alice", "--template", str(npy["alice_f64"]), *store_args(ws))
    assert_one_line_error(code, err, "float64", "float32")
    code, _, err = run(capsys, *verify, "--probe", str(npy["alice_f64"]), *store_args(ws))
    assert_one_line_error(code, err, "float64")
    code, _, err = run(capsys, *verify, "--probe", str(ws["root"] / "missing.npy"), *store_args(ws))
    assert_one_line_error(code, err, "not found")
    code, _, err = run(capsys, "enrol", "bob", "--template", str(npy["alice"]), *store_args(ws))
    assert_one_line_error(code, err, "no active consent")
    code, _, err = run(capsys, *grant_args(ws, "bob", "Payment!"))
    assert_one_line_error(code, err, "purpose")
    code, _, err = run(capsys, "verify", "alice", "--probe", str(npy["alice_probe"]), "--purpose", "payment",
                       "--store", str(ws["store"]))  # fmt: skip
    assert_one_line_error(code, err, "FPMATCH_KEY")

    inside = ws["store"] / "inside.key"
    assert run(capsys, "keys", "new", str(inside))[0] == 0
    code, _, err = run(capsys, "audit", "verify", "--store", str(ws["store"]), "--key", str(inside))
    assert_one_line_error(code, err, "inside")


def test_debug_shows_the_exception(
    capsys: pytest.CaptureFixture[str], workspace: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FPMATCH_DEBUG", "1")
    with pytest.raises(Exception, match="hash key file"):
        cli.main(["audit", "verify", *store_args(workspace)])


# -- demo, bench and progress -------------------------------------------------------


def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "demo", "--subjects", "1100", "--probes", "20")
    assert code == 0, err
    assert "fpmatch demo" in out and "rank-1" in out
    code, _, err = run(capsys, "demo", "--subjects", "10", "--probes", "5")
    assert_one_line_error(code, err, "--subjects")


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


def test_progress_bar() -> None:
    stream = io.StringIO()
    with Progress("work", 4, enabled=True, stream=stream) as bar:
        for _ in range(4):
            bar.advance()
    text = stream.getvalue()
    assert text.startswith("\rwork [") and "100%" in text and "4/4" in text and text.endswith("\n")
    quiet = io.StringIO()
    with Progress("work", 4, enabled=False, stream=quiet) as bar:
        bar.advance(4)
    assert quiet.getvalue() == ""
