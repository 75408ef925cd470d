"""Built-in plugin: cosyext's standard lint rules, registered through the same hook third-party
rule sets use. The rules live in :mod:`cosyvoice_ext.lint.rules`, one module per family.
"""

from __future__ import annotations

from typing import Any, Callable

from cosyvoice_ext.config_keys import reject_unknown_keys
from cosyvoice_ext.errors import ConfigError
from cosyvoice_ext.hookspecs import hookimpl

from .rules import data, general, model, pipeline, train, upstream

LINT_KEYS = ("select", "ignore")


def all_rules() -> list:
    return [*general.RULES, *pipeline.RULES, *train.RULES, *model.RULES, *upstream.RULES, *data.RULES]


@hookimpl
def cosyext_register_lint_rules(register: Callable[..., None]) -> None:
    for rule in all_rules():
        register(rule)


@hookimpl
def cosyext_register_config_sections(register: Callable[[str, Callable[[Any], Any]], None]) -> None:
    """`cosyext: {lint: {select: [...], ignore: [...]}}` belongs to the linter."""
    register("lint", parse_lint_value)


def parse_lint_value(value: Any) -> dict[str, list[str]]:
    """``cosyext.lint``'s value -> {select, ignore} lists of rule codes or prefixes (training checks it too)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("must be a mapping with select/ignore lists", key="cosyext.lint",
                          hint="cosyext:\n  lint: {ignore: [CX105]}")
    reject_unknown_keys(value, LINT_KEYS, "cosyext.lint",
                        lambda key, msg: ConfigError(msg, key=key, hint="cosyext.lint takes select: and ignore:"))
    out = {}
    for k in LINT_KEYS:
        v = value.get(k)
        if v is None:
            continue
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError("must be a list of rule codes or prefixes (like [CX1, CX203])", key=f"cosyext.lint.{k}",
                              hint=f"{k}: [CX1]")
        out[k] = v
    return out
