"""Meta-test: every hook has documentation (docs/plugins.md) and at least one test that uses it.

A hook nobody documents is a hook plugin authors cannot use; a hook no test calls can break unnoticed.
The hook names come from the hookspecs module, so a new hook fails here until both exist.
"""

from __future__ import annotations

import re
from pathlib import Path

from cosyvoice_ext import hookspecs, plugins

ROOT = Path(__file__).resolve().parents[1]


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"\b{name}\b", text) is not None


def test_every_hook_is_documented_and_tested():
    names = plugins.hook_names()
    assert len(names) >= 7 and all(getattr(hookspecs, n).__doc__ for n in names), "every hookspec has a docstring"
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    undocumented = [n for n in names if not re.search(rf"^### `{n}\(", doc, re.M)]
    assert undocumented == [], "docs/plugins.md needs a '### `hook(...)`' section for each"
    tests = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "tests").glob("test_*.py"))
             if p.name != Path(__file__).name]
    untested = [n for n in names if not any(_mentions(t, n) for t in tests)]
    assert untested == [], "write a test that implements or calls each of these hooks"


def test_docs_name_no_hook_that_does_not_exist():
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\b(cosyext_[a-z_]+)\(", doc))
    assert named <= set(plugins.hook_names())
