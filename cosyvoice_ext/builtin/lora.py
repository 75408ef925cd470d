"""Built-in plugin: LoRA adapters (peft) for the LLM and flow of CosyVoice2 and CosyVoice3, configured by
``cosyext:`` (preset targets resolve per model class: see :mod:`cosyvoice_ext.lora.targets`).

Without a ``cosyext.<model>`` section for the model being trained every hook returns None, which
leaves upstream's behaviour untouched. The work is in :mod:`cosyvoice_ext.lora.training`; torch and
peft are imported only when a training hook runs, so ``cosyext plugins`` and lint stay fast.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import partial
from typing import Any, Callable, Iterator

from cosyvoice_ext.errors import CosyextError
from cosyvoice_ext.hookspecs import hookimpl

log = logging.getLogger("cosyvoice_ext.lora")


@contextmanager
def _stop_training_clearly() -> Iterator[None]:
    """train.py shows a long traceback; say what is wrong and what to do in one log line first."""
    try:
        yield
    except CosyextError as exc:
        log.error("cosyext lora: %s%s", exc, f" (next: {exc.hint})" if exc.hint else "")
        raise


@hookimpl
def cosyext_register_config_sections(register: Callable[[str, Callable[[Any], Any]], None]) -> None:
    from cosyvoice_ext.lora.config import MODELS, parse_model_value

    for model in MODELS:
        register(model, partial(parse_model_value, model))


@hookimpl
def cosyext_configure(configs: dict, args: Any) -> None:
    from cosyvoice_ext.lora import training

    with _stop_training_clearly():  # validates every model's section, not only the trained one's
        training.configure(configs, args)


@hookimpl
def cosyext_prepare_model(model: Any, name: str, configs: dict, args: Any) -> None:
    from cosyvoice_ext.lora import training

    with _stop_training_clearly():
        training.prepare(model, name, configs, args)


@hookimpl
def cosyext_optimizer_params(model: Any, configs: dict, args: Any) -> list | None:
    from cosyvoice_ext.lora import training

    return training.optimizer_params(model)


@hookimpl
def cosyext_checkpoint_state(model: Any, info_dict: dict) -> dict | None:
    from cosyvoice_ext.lora import training

    return training.checkpoint_state(model, info_dict)
