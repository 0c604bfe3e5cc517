"""The README's quickstart must keep working as printed."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs_and_decides_correctly(capsys) -> None:
    text = README.read_text()
    block = re.search(r"## Quickstart\n\n```python\n(.*?)```", text, re.S)
    assert block, "README has no Python quickstart"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 15
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("True ")  # the genuine probe verifies
    assert "customer-1" in out[1]  # and identification finds the right subject
    assert "customer-2" not in namespace["gallery"]
