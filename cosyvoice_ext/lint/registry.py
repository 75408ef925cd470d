"""Collects lint rules from every plugin through ``cosyext_register_lint_rules(register)``.

Each plugin gets its own ``register`` callback, so a malformed rule or a code already taken is
refused with an error that names the plugin responsible (and the one that got there first).
"""

from __future__ import annotations

import re
from typing import Any

import pluggy

from ..errors import PluginError
from .rule import SEVERITIES, Rule

CODE = re.compile(r"^[A-Z]{2,5}[0-9]{3}$")
NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_HINT = "fix or remove the plugin (run 'cosyext plugins' to see which are loaded)"


class RuleRegistry:
    """Rules by code, with the plugin each came from."""

    def __init__(self) -> None:
        self.rules: dict[str, Rule] = {}
        self.origin: dict[str, str] = {}

    def add(self, rule: Any, plugin: str) -> None:
        if not isinstance(rule, Rule):
            raise PluginError(
                f"plugin '{plugin}' registered a lint rule that is not a cosyvoice_ext.lint.Rule: {rule!r}", hint=_HINT)
        problems = []
        if not isinstance(rule.code, str) or not CODE.match(rule.code):
            problems.append(f"code {rule.code!r} is not 2-5 capital letters and 3 digits (like CX101)")
        if not isinstance(rule.name, str) or not NAME.match(rule.name):
            problems.append(f"name {rule.name!r} is not kebab-case")
        if rule.severity not in SEVERITIES:
            problems.append(f"severity {rule.severity!r} is not one of {', '.join(SEVERITIES)}")
        if not isinstance(rule.summary, str) or not rule.summary.strip():
            problems.append("summary is empty")
        if not callable(rule.check):
            problems.append("check is not callable")
        if problems:
            raise PluginError(f"plugin '{plugin}' registered a malformed lint rule: {'; '.join(problems)}", hint=_HINT)
        if rule.code in self.rules:
            raise PluginError(
                f"plugin '{plugin}' registered lint rule {rule.code}, already registered by plugin "
                f"'{self.origin[rule.code]}'", hint=_HINT)
        self.rules[rule.code] = rule
        self.origin[rule.code] = plugin

    def get(self, code: str) -> Rule | None:
        return self.rules.get(code.upper())

    def sorted(self) -> list[Rule]:
        return [self.rules[c] for c in sorted(self.rules)]


def collect(pm: pluggy.PluginManager | None = None) -> RuleRegistry:
    """Every plugin's rules, each plugin with its own register callback (so errors name it).

    An empty registry is an error: a linter without rules would report "All checks passed." for anything.
    """
    from ..plugins import DEFAULT_PLUGINS, hooks

    reg = RuleRegistry()
    hooks(pm).register_lint_rules(reg.add)
    if not reg.rules:
        builtin = dict(DEFAULT_PLUGINS)["lint_rules"]
        raise PluginError(f"no lint rules are registered: the plugin manager lacks the built-in plugin "
                          f"'lint_rules' ({builtin}) and no other plugin contributes rules, so lint would pass "
                          "anything", hint="reinstall cosyvoice-ext (pip install --force-reinstall cosyvoice-ext)")
    return reg
