"""Built-in plugin: cosyext's standard lint rules, registered through the same hook third-party
rule sets use. The rules live in ``lint_general`` (CX0xx, CX5xx), ``lint_pipeline`` (CX1xx),
``lint_train`` (CX2xx), ``lint_model`` (CX3xx, CX4xx), ``lint_upstream`` (CX306-308, CX505-506: what
depends on the model family and the upstream commit) and ``lint_data`` (CX6xx, ``--data`` only).
"""

from __future__ import annotations

from typing import Callable

from cosyvoice_ext.hookspecs import hookimpl

from . import lint_data, lint_general, lint_model, lint_pipeline, lint_train, lint_upstream


def all_rules() -> list:
    return [*lint_general.RULES, *lint_pipeline.RULES, *lint_train.RULES, *lint_model.RULES, *lint_upstream.RULES,
            *lint_data.RULES]


@hookimpl
def cosyext_register_lint_rules(register: Callable[..., None]) -> None:
    for rule in all_rules():
        register(rule)


@hookimpl
def cosyext_section_keys() -> list[str]:
    """`cosyext: {lint: {select: [...], ignore: [...]}}` belongs to the linter."""
    return ["lint"]
