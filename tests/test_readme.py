"""The README and the docs name what exists: the submodules the README's example pins are the
example model's, every page under docs/ is reachable from the README, every source file and
hetcc.* name a page mentions is there, and docs/architecture.md's folder map lists every module."""
import importlib
import re
from pathlib import Path

import gpt

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = {p.relative_to(ROOT).as_posix(): p.read_text()
         for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
PARTS = ("hetcc", "passes", "backends", "cost_model")
"""The folders of the package (setup.py maps the last three into hetcc.*)."""


def test_using_it_names_submodules_the_example_model_has():
    section = README.split("## Using it", 1)[1].split("\n## ", 1)[0]
    assert "from gpt import build" in section
    model, _ = gpt.build()
    modules = dict(model.named_modules())
    named = re.findall(r'(?:pins|exclude)=\{"([^"]+)"', section)
    assert named and all(name in modules for name in named), (named, sorted(modules)[:20])


def test_every_doc_is_linked_from_the_readme():
    linked = set(re.findall(r"\(docs/([\w-]+\.md)", README))
    assert {p.name for p in (ROOT / "docs").glob("*.md")} <= linked


def test_every_source_file_a_page_names_exists():
    # lower-case names only: examples/NAME.py is a placeholder
    path = re.compile(r"\b(?:hetcc|passes|backends|cost_model|benchmarks|scripts|tests|examples)"
                      r"(?:/[a-z0-9_]+)*/[a-z0-9_]+\.(?:py|sh)\b")
    missing = [f"{page}: {name}" for page, text in PAGES.items() for name in sorted(set(path.findall(text)))
               if not (ROOT / name).is_file()]
    assert not missing, "\n".join(missing)


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[i:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


def test_every_hetcc_name_a_page_uses_imports():
    """A documented import path (hetcc.measure.bench.measure, hetcc.bundle.read_manifest) that
    moved would otherwise go stale unseen; a quoted name ("hetcc.Record") is a format's tag."""
    dotted = re.compile(r"(?<![\"\w.])hetcc(?:\.[A-Za-z_]\w*)+")
    stale = [f"{page}: {name}" for page, text in PAGES.items() for name in sorted(set(dotted.findall(text)))
             if not _resolves(name)]
    assert not stale, "\n".join(stale)


def test_the_architecture_page_maps_every_module():
    section = (ROOT / "docs" / "architecture.md").read_text().split("\n## Folders", 1)[1].split("\n## ", 1)[0]
    named = set()
    for bullet in re.split(r"\n(?=- `)", section):
        folder = re.match(r"- `([\w/]+)/`", bullet)
        if folder:
            named |= {f"{folder.group(1)}/{name}" for name in re.findall(r"`(\w+\.py)`", bullet)}
    modules = {p.relative_to(ROOT).as_posix() for part in PARTS for p in (ROOT / part).rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    assert sorted(modules - named) == [], "modules the map in docs/architecture.md leaves out"
    assert sorted(n for n in named if not (ROOT / n).is_file()) == [], "files the map names that do not exist"
