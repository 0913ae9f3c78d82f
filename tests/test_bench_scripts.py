"""The benchmark scripts in bench/ keep working when the library changes.

They run only by hand (`make bench`), so nothing else would notice when a name they import
from avdata or avtrain is renamed or removed (bench/faces.py once imported a helper a review
had moved). This reads their imports, function-level ones included, without running them.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH_SCRIPTS = sorted((REPO / "bench").glob("*.py"))


def _library_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of every `from avdata... / avtrain... import name` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] in ("avdata", "avtrain")
        ):
            found.extend((node.lineno, node.module, alias.name) for alias in node.names)
    return found


@pytest.mark.parametrize("script", BENCH_SCRIPTS, ids=lambda p: p.name)
def test_bench_script_imports_resolve(script: Path):
    missing = []
    for line, module_name, name in _library_imports(script):
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")
            except ImportError:
                missing.append(f"{script.name}:{line}: {module_name} has no {name}")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize(
    "script", [p for p in BENCH_SCRIPTS if not p.name.startswith("_")], ids=lambda p: p.name
)
def test_bench_script_help_runs(script: Path):
    result = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()
