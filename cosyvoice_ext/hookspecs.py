"""Every cosyvoice-ext hook, in lifecycle order. Plugin authors: implement these with `@hookimpl`.

A plugin is any module or object registered under the entry-point group ``cosyvoice_ext``
(built-ins in ``cosyvoice_ext.hooks`` are registered the same way). Implement only the hooks you
need; argument names must match the specs below, but you may accept a subset of them.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT = "cosyvoice_ext"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration: called once per process when the manager is created -------------------------

@hookspec
def cosyext_register_lint_rules(register: Callable[..., None]) -> None:
    """Contribute lint rules by calling ``register(rule)`` for each.

    Core validates what is registered (code format, duplicates) in one place, so a bad rule fails
    with a message naming the plugin.
    """


@hookspec
def cosyext_section_keys() -> list[str]:
    """Top-level keys of the ``cosyext:`` config section this plugin owns.

    Core reports any other key as unknown (with the closest match), so a typo never goes unnoticed.
    """


# --- training: called from the hook points our patch series adds to upstream train_utils --------

@hookspec
def cosyext_configure(configs: dict, args: Any) -> None:
    """After upstream loaded the HyperPyYAML config (``check_modify_and_save_config``).

    ``configs`` is the loaded dict (the ``cosyext`` section included); plugins validate their
    settings here so a bad key fails before any model work.
    """


@hookspec
def cosyext_prepare_model(model: Any, name: str, configs: dict, args: Any) -> Any:
    """Before the model is wrapped for DDP/DeepSpeed (``wrap_cuda_model``).

    train.py has already loaded ``--checkpoint`` (strict=False). Plugins may modify the model in
    place (inject adapters, freeze weights). Return values are ignored.
    """


@hookspec(firstresult=True)
def cosyext_optimizer_params(model: Any, configs: dict, args: Any) -> list | None:
    """Which parameters the optimizer receives. Stops at the first non-None result; None = all."""


@hookspec(firstresult=True)
def cosyext_checkpoint_state(model: Any, info_dict: dict) -> dict | None:
    """The state dict ``save_model`` writes. Stops at the first non-None result; None = upstream's."""


@hookspec
def cosyext_after_save(model_name: str, info_dict: dict) -> None:
    """After every checkpoint ``save_model`` wrote, on all ranks, after the ranks' barrier.

    ``model_name`` is upstream's (``init``, ``epoch_3_whole``, ``epoch_3_step_500``); for all but
    ``init``, ``info_dict['loss_dict']`` holds the CV losses that checkpoint was evaluated with.
    A plugin may end training here (all ranks must agree; exit with status 0).
    """
