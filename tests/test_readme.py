"""The README names what exists: the submodules its example pins are the example model's, and every
page under docs/ is reachable from it."""
import re
from pathlib import Path

import gpt

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


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
