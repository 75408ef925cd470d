"""Every built-in static rule has a failing config (flagged exactly on the lines marked
`# expect: CODE`) and a passing config (not flagged by that rule)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cosyvoice_ext.lint import plugin as lint_rules
from cosyvoice_ext.lint.engine import Options, lint_document, read_config
from cosyvoice_ext.lint.registry import RuleRegistry
from cosyvoice_ext.plugins import new_manager
from cosyvoice_ext.lint.registry import collect

CASES = Path(__file__).parent / "lint_cases"
STATIC = [r.code for r in lint_rules.all_rules() if not r.needs_data]


@pytest.fixture(scope="module")
def registry() -> RuleRegistry:
    pm = new_manager(autoload=False)
    pm.register(lint_rules, name="lint_rules")
    return collect(pm)


def _options(path: Path) -> Options:
    m = re.search(r"^# lint-args: (.*)$", path.read_text(), re.M)
    opts = Options()
    args = shlex.split(m.group(1)) if m else []
    for flag, value in zip(args[::2], args[1::2]):
        if flag == "--model":
            opts.model = value
        elif flag == "--gpu-memory":
            opts.gpu_memory = float(value)
        elif flag == "--train-engine":
            opts.train_engine = value
        else:
            raise AssertionError(f"unknown lint-args flag {flag}")
    return opts


def _expected_lines(path: Path, code: str) -> set[int]:
    return {i for i, line in enumerate(path.read_text().splitlines(), 1) if f"# expect: {code}" in line}


def test_at_least_15_static_rules_with_distinct_codes():
    assert len(STATIC) >= 15
    assert len(set(STATIC)) == len(STATIC)


@pytest.mark.parametrize("code", STATIC)
def test_rule_flags_failing_config_at_marked_line(code, registry):
    path = CASES / f"{code}_fail.yaml"
    assert path.is_file(), f"missing failing test config for {code}"
    expected = _expected_lines(path, code)
    assert expected, f"{path.name} marks no line with '# expect: {code}'"
    res = lint_document(read_config(path), registry, _options(path))
    got = {f.line for f in res.findings if f.code == code}
    assert got == expected, [f"{f.line}:{f.col} {f.code} {f.message}" for f in res.findings]
    for f in res.findings:
        if f.code == code:
            assert f.col >= 1 and f.message and f.fix, f


@pytest.mark.parametrize("code", STATIC)
def test_rule_passes_clean_config(code, registry):
    path = CASES / f"{code}_pass.yaml"
    assert path.is_file(), f"missing passing test config for {code}"
    res = lint_document(read_config(path), registry, _options(path))
    assert [f for f in res.findings if f.code in (code, "CX000")] == []


def test_full_lora_config_is_clean(registry):
    res = lint_document(read_config(CASES / "base.yaml"), registry,
                        Options(model="llm", gpu_memory=24, train_engine="deepspeed"))
    assert res.findings == []


def test_every_rule_is_documented(registry):
    for rule in registry.sorted():
        assert rule.why and rule.example and rule.fix, rule.code
    doc = (Path(__file__).parents[1] / "docs" / "lint.md").read_text()
    missing = [r.code for r in registry.sorted() if r.code not in doc]
    assert not missing, f"docs/lint.md lacks {missing}"
