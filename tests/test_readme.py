"""The README's examples must keep working as printed: the quickstart runs, the store example
uses only methods and keywords that exist, and every command-line example parses."""

from __future__ import annotations

import ast
import inspect
import re
import shlex
import tempfile
from pathlib import Path
from typing import Any

import pytest
from fpmatch import CaptureEdge, HashKey, MatchingService, ServiceKey, cli
from fpmatch.he import KeyHolder

README = Path(__file__).resolve().parents[1] / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert found, f"README has no section {title!r}"
    return found.group(1)


def code_block(title: str, language: str) -> str:
    block = re.search(rf"```{language}\n(.*?)```", section(title), re.S)
    assert block, f"README section {title!r} has no {language} block"
    return block.group(1)


def test_quickstart_runs_and_decides_correctly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = code_block("Quickstart", "python")
    assert len(code.strip().splitlines()) <= 23
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the example's store lands here
    namespace: dict[str, Any] = {}
    exec(compile(code, str(README), "exec"), namespace)
    service = namespace["service"]
    try:
        out = capsys.readouterr().out.splitlines()
        assert out[0] == "match"  # the mated probe verifies
        assert out[1] == "[Match(subject='customer-1', rank=1)]"  # only the mate passes the threshold
        assert "customer-2" not in service and len(service) == 999
        assert service.scheme == "hybrid" and not service.subject_report("customer-2").enrolled
    finally:
        service.close()
    assert list(tmp_path.iterdir()), "the quickstart's store is not in a temporary directory"


#: What the store example's names stand for.
STORE_NAMES = {
    "service": MatchingService,
    "edge": CaptureEdge,
    "holder": KeyHolder,
    "MatchingService": MatchingService,
    "CaptureEdge": CaptureEdge,
    "KeyHolder": KeyHolder,
    "HashKey": HashKey,
    "ServiceKey": ServiceKey,
}


def _accepts(function: Any, keywords: list[str]) -> list[str]:
    """The keywords ``function`` does not take."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    return [k for k in keywords if k not in parameters]


def test_store_example_uses_the_real_api() -> None:
    code = code_block("Consent-bound matching with a store", "python")
    tree = ast.parse(code)
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    exec(compile(ast.Module(body=imports, type_ignores=[]), str(README), "exec"), {})  # they resolve
    checked = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        keywords = [k.arg for k in node.keywords if k.arg is not None]
        if isinstance(func, ast.Name) and func.id in STORE_NAMES:
            target, name = STORE_NAMES[func.id], func.id
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in STORE_NAMES:
            owner = STORE_NAMES[func.value.id]
            assert hasattr(owner, func.attr), f"README calls {owner.__name__}.{func.attr}, which does not exist"
            target, name = getattr(owner, func.attr), f"{owner.__name__}.{func.attr}"
        else:
            continue
        assert not _accepts(target, keywords), f"README passes {_accepts(target, keywords)} to {name}"
        checked.add(name)
    assert {"MatchingService.open", "CaptureEdge", "MatchingService.enrol", "CaptureEdge.enrolment",
            "MatchingService.verify", "CaptureEdge.probe", "MatchingService.identify", "MatchingService.withdraw",
            "MatchingService.calibrate", "CaptureEdge.calibration"} <= checked  # fmt: skip


def test_command_line_examples_parse() -> None:
    block = code_block("Command line", "sh").replace("\\\n", " ")
    commands = [line.split("#")[0] for line in block.splitlines() if line.startswith("fpmatch ")]
    assert len(commands) >= 8
    parser = cli.build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        assert callable(args.handler), command
