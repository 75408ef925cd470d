"""Built-in plugin: cosyext's standard lint rules, registered through the same hook third-party
rule sets use. The rules live in :mod:`cosyvoice_ext.lint.rules`, one module per family.
"""

from __future__ import annotations

from typing import Callable

from cosyvoice_ext.hookspecs import hookimpl

from .rules import data, general, model, pipeline, train, upstream


def all_rules() -> list:
    return [*general.RULES, *pipeline.RULES, *train.RULES, *model.RULES, *upstream.RULES, *data.RULES]


@hookimpl
def cosyext_register_lint_rules(register: Callable[..., None]) -> None:
    for rule in all_rules():
        register(rule)


@hookimpl
def cosyext_section_keys() -> list[str]:
    """`cosyext: {lint: {select: [...], ignore: [...]}}` belongs to the linter."""
    return ["lint"]
