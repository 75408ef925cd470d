"""CX004 (code-on-load) against upstream's own recipes at both supported commits: none of their
tags is flagged, and every name the allow-list admits beyond cosyvoice/matcha/torch and the seeding
calls is one those recipes really use (the list is no wider than upstream needs)."""

from __future__ import annotations

import pytest

from cosyvoice_ext.lint import plugin as lint_rules
from cosyvoice_ext.lint.engine import Options, lint_document, read_config
from cosyvoice_ext.lint.registry import collect
from cosyvoice_ext.lint.rules.general import RECIPE_NAMES, SAFE_APPLY
from cosyvoice_ext.plugins import new_manager
from tests.conftest import MAIN, PIN


@pytest.fixture(scope="module")
def registry():
    pm = new_manager(autoload=False)
    pm.register(lint_rules, name="lint_rules")
    return collect(pm)


@pytest.mark.parametrize("rev", [PIN, MAIN])
def test_upstream_recipes_raise_no_code_on_load_finding(rev, upstream_at, registry):
    recipes = sorted((upstream_at(rev, patched=False) / "examples").rglob("*.yaml"))
    assert len(recipes) >= 3, recipes
    for path in recipes:
        res = lint_document(read_config(path), registry, Options(select=["CX004"]))
        assert res.findings == [], (path, [f.message for f in res.findings])


def test_every_allow_listed_name_is_used_by_an_upstream_recipe(upstream_at):
    used: dict[str, set[str]] = {}
    for rev in (PIN, MAIN):
        for path in (upstream_at(rev, patched=False) / "examples").rglob("*.yaml"):
            doc = read_config(path)
            for _, node in doc.nodes():
                if node.call:
                    used.setdefault(node.call[0], set()).add(node.call[1])
    for kind, names in RECIPE_NAMES.items():
        assert names <= used.get(kind, set()), (kind, names - used.get(kind, set()))
    assert SAFE_APPLY == used["apply"], "the seeding calls are exactly what the recipes !apply"
    outside = {(k, n) for k, ns in used.items() for n in ns if n.split(".")[0] not in ("cosyvoice", "matcha", "torch")}
    assert outside == {("apply", n) for n in SAFE_APPLY if not n.startswith("torch.")} | {
        (k, n) for k, ns in RECIPE_NAMES.items() for n in ns}
