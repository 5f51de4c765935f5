"""Layers point down (issue 16): the cost model and the passes are plain planning code that never
compiles, loads a backend or reaches the CLI; backends never reach the compiler or the CLI, nor
import one another (tests/test_backends.py checks that); the pipeline (hetcc/*.py) and the
reports (hetcc/explain/) never reach the measuring tools (hetcc/measure/) or the CLI, which are
built on them; the measuring tools never reach the CLI. Checked on the source, imports inside
functions included; the planning layers by what they may import, the others by what they may not."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ALLOWED = {
    # folder: the hetcc modules its files may import (a prefix allows what is below it)
    "cost_model": ("hetcc.cost_model", "hetcc.errors", "hetcc.target", "hetcc.names", "hetcc.gpus",
                   "hetcc.safe_files"),
    "passes": ("hetcc.passes", "hetcc.cost_model", "hetcc.errors", "hetcc.target", "hetcc.names",
               "hetcc.fallback"),
}
FORBIDDEN = {
    # folder (its own files, not its subfolders): the hetcc modules its files must not import
    "backends": ("hetcc.compiler", "hetcc.bundle", "hetcc.cli", "hetcc.tune", "hetcc.measure"),
    "hetcc": ("hetcc.measure", "hetcc.cli"),
    "hetcc/explain": ("hetcc.measure", "hetcc.cli"),
    "hetcc/measure": ("hetcc.cli",),
}
EXEMPT = {
    # (file, module it imports): why it may
    ("hetcc/__main__.py", "hetcc.cli"): "`python -m hetcc` is the command line's entry point",
}
STAGES = {
    # a lowering stage that backends share: what it must not import (its consumers and their
    # packages), so that another consumer plugs in beside them without the stage knowing any
    "backends/mlir_import.py": ("iree", "hetcc.backends"),
}


def hetcc_imports(path: Path):
    """(line, module) for each hetcc module a file imports; ``from hetcc import x`` counts as
    importing hetcc.x, and a bare ``import hetcc`` as importing "hetcc" itself."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "hetcc":
                yield from ((node.lineno, f"hetcc.{a.name}") for a in node.names)
            elif node.module.startswith("hetcc."):
                yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "hetcc")


def all_imports(path: Path):
    """(line, module) for every module a file imports, hetcc's and others', relative ones as
    hetcc.backends.x (the only package with relative imports would be the file's own)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = "hetcc.backends" + (f".{base}" if base else "")
            if base in ("hetcc", "hetcc.backends"):
                yield from ((node.lineno, f"{base}.{a.name}") for a in node.names)
            else:
                yield node.lineno, base
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_planning_layers_import_only_what_is_below_them(folder):
    crossed = [f"{folder}/{path.name}:{line} imports {module}"
               for path in sorted((ROOT / folder).glob("*.py"))
               for line, module in hetcc_imports(path) if not _under(module, ALLOWED[folder])]
    assert not crossed, "\n".join(crossed)


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_lower_layers_never_import_upper_ones(folder):
    crossed = [f"{folder}/{path.name}:{line} imports {module}"
               for path in sorted((ROOT / folder).glob("*.py"))
               for line, module in hetcc_imports(path)
               if (_under(module, FORBIDDEN[folder]) or (folder == "backends" and module == "hetcc"))
               and (f"{folder}/{path.name}", module) not in EXEMPT]
    assert not crossed, "\n".join(crossed)


def test_each_exemption_is_still_needed():
    for file, module in EXEMPT:
        assert module in {m for _, m in hetcc_imports(ROOT / file)}, f"{file} no longer imports {module}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_shared_stage_imports_none_of_its_consumers(stage):
    crossed = [f"{stage}:{line} imports {module}" for line, module in all_imports(ROOT / stage)
               if _under(module, STAGES[stage])]
    assert not crossed, "\n".join(crossed)


def test_the_stage_check_sees_each_way_of_importing(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import iree.compiler\nfrom iree.compiler.extras import fx_importer\n"
                   "def f():\n    from hetcc.backends import iree_compile\n    from . import iree_runtime\n"
                   "    import torch_mlir\n")
    found = [m for _, m in all_imports(bad)]
    assert found == ["iree.compiler", "iree.compiler.extras", "hetcc.backends.iree_compile",
                     "hetcc.backends.iree_runtime", "torch_mlir"]
    assert [m for m in found if _under(m, STAGES["backends/mlir_import.py"])] == found[:4]


def test_the_check_sees_each_way_of_crossing(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from hetcc.compiler import compile\n    import hetcc\n"
                   "    from hetcc import compile, bench_run\n    import hetcc.bundle as b\n")
    found = list(hetcc_imports(bad))
    assert found == [(2, "hetcc.compiler"), (3, "hetcc"), (4, "hetcc.compile"), (4, "hetcc.bench_run"),
                     (5, "hetcc.bundle")]
    assert not any(_under(m, ALLOWED["passes"]) for _, m in found)


def test_every_package_folder_is_packaged():
    """setup.py lists packages by hand (the top-level folders map into hetcc.*): a folder with an
    __init__.py that it misses would be absent from a wheel though every test here passes."""
    import re

    setup = (ROOT / "setup.py").read_text()
    listed = dict(re.findall(r'"(hetcc[\w.]*)": "([\w/]+)"', setup))
    for init in ROOT.glob("*/**/__init__.py"):
        folder = init.parent.relative_to(ROOT).as_posix()
        if folder.split("/")[0] in ("tests", "examples", "benchmarks", "build") or ".venv" in folder:
            continue
        assert folder in listed.values(), f"{folder}/ has an __init__.py but setup.py does not package it"
