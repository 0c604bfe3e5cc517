"""The package's layout: the matching library never imports the evaluation or the command line,
and the old module path of the evaluation still works, with a deprecation warning."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "fpmatch"
#: Built on the matching library; nothing in it may import them.
LAYERS_ABOVE = ("fpmatch.eval", "fpmatch.cli", "fpmatch.cluster")
#: Modules allowed to import them: the entry point, and the deprecated path of the evaluation.
ALLOWED = {"fpmatch.__main__", "fpmatch.evaluation"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            found.add(base_name)
            found.update(f"{base_name}.{alias.name}" for alias in node.names)  # `from . import cli`
    return found


def library_modules() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if module_name(path) not in ALLOWED and not module_name(path).startswith(LAYERS_ABOVE)
    ]


def test_the_resolver_sees_relative_imports() -> None:
    shim = PACKAGE / "evaluation.py"
    assert "fpmatch.eval" in imported_modules(shim)
    assert "fpmatch.cli.main" in imported_modules(PACKAGE / "__main__.py")


def test_the_matching_library_imports_neither_evaluation_nor_command_line() -> None:
    modules = library_modules()
    assert len(modules) > 20 and PACKAGE / "gallery.py" in modules
    offenders = {
        module_name(path): sorted(m for m in imported_modules(path) if m.startswith(LAYERS_ABOVE))
        for path in modules
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_importing_fpmatch_loads_neither() -> None:
    code = "import sys, fpmatch; print(sorted(m for m in sys.modules if m.startswith(('fpmatch.eval', 'fpmatch.cli'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_old_evaluation_path_warns_and_reexports(monkeypatch: pytest.MonkeyPatch) -> None:
    import fpmatch.eval
    from fpmatch.codes import hamming_pairs

    monkeypatch.delitem(sys.modules, "fpmatch.evaluation", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("fpmatch.evaluation")
    assert [w.category for w in caught] == [DeprecationWarning] and "fpmatch.eval" in str(caught[0].message)
    assert set(old.__all__) == set(fpmatch.eval.__all__) | {"hamming_pairs"}
    for name in fpmatch.eval.__all__:
        assert getattr(old, name) is getattr(fpmatch.eval, name), name
    assert old.hamming_pairs is hamming_pairs
