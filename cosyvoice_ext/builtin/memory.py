"""Built-in plugin: memory levers (gradient checkpointing of the LLM's and the flow's blocks, autocast,
skipping unused logits, giving freed CPU memory back) from ``cosyext.memory``.

Without that section every hook does nothing, which leaves upstream's behaviour untouched. The
section is validated at config time (a typo fails before any model is built); the levers are
applied before the DDP wrap by :mod:`cosyvoice_ext.memory.levers`. torch is imported only when a
training hook runs, so ``cosyext plugins`` and lint stay fast.
"""

from __future__ import annotations

from typing import Any, Callable

from cosyvoice_ext.hookspecs import hookimpl


@hookimpl
def cosyext_configure(configs: dict, args: Any) -> None:
    from cosyvoice_ext.memory.config import parse_memory_section

    settings = parse_memory_section(configs)
    if settings.autocast != "off":
        from cosyvoice_ext.memory.levers import check_runtime

        check_runtime(settings, args)
    return None


@hookimpl
def cosyext_prepare_model(model: Any, name: str, configs: dict, args: Any) -> None:
    from cosyvoice_ext.memory.config import parse_memory_section

    settings = parse_memory_section(configs)
    if not settings.any:
        return None
    from cosyvoice_ext.memory.levers import apply

    apply(model, name, settings)
    return None


@hookimpl
def cosyext_register_config_sections(register: Callable[[str, Callable[[Any], Any]], None]) -> None:
    from cosyvoice_ext.memory.config import KEY, parse_memory_value

    register(KEY, parse_memory_value)
