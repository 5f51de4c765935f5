"""Layers point down (issue 16): the cost model and the passes are plain planning code that never
compiles, loads a backend or reaches the CLI; backends never reach the compiler or the CLI, nor
import one another (tests/test_backends.py checks that). Checked on the source, imports inside
functions included."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    # folder: module prefixes its files may not import
    "cost_model": ("hetcc.backends", "hetcc.compiler", "hetcc.bundle", "hetcc.runtime", "hetcc.cli",
                   "hetcc.calibrate", "hetcc.tune", "hetcc.bench"),
    "passes": ("hetcc.backends", "hetcc.compiler", "hetcc.bundle", "hetcc.runtime", "hetcc.cli",
               "hetcc.calibrate", "hetcc.tune", "hetcc.bench"),
    "backends": ("hetcc.compiler", "hetcc.bundle", "hetcc.cli", "hetcc.tune", "hetcc.calibrate",
                 "hetcc.conformance"),
}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.lineno, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_layers_point_down(folder):
    crossed = []
    for path in sorted((ROOT / folder).glob("*.py")):
        for line, module, names in _imports(path):
            whole = [module] + [f"{module}.{n}" for n in names]
            if any(m == p or m.startswith(p + ".") for m in whole for p in FORBIDDEN[folder]):
                crossed.append(f"{folder}/{path.name}:{line} imports {module} {names or ''}".rstrip())
            if module == "hetcc" and not names:  # `import hetcc` then hetcc.compile(...)
                crossed.append(f"{folder}/{path.name}:{line} imports the hetcc package itself")
    assert not crossed, "\n".join(crossed)


def test_the_check_sees_a_crossing(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from hetcc.compiler import compile\n    import hetcc\n")
    found = [(line, module) for line, module, _ in _imports(bad)]
    assert found == [(2, "hetcc.compiler"), (3, "hetcc")]
