"""Every cosyvoice-ext hook, in lifecycle order. Plugin authors: implement these with `@hookimpl`.

A plugin is any module or object registered under the entry-point group ``cosyvoice_ext`` (the
built-ins in :data:`cosyvoice_ext.plugins.DEFAULT_PLUGINS` are registered by import in every
process). Implement only the hooks you need; argument names must match the specs below, but you may
accept a subset of them. A function named ``cosyext_*`` that is not one of these hooks (a typo such
as ``cosyext_configur``) stops plugin loading with an error naming the plugin. docs/plugins.md has
an example of each hook.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT = "cosyvoice_ext"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration: called when lint or training start-up needs them --------------------------------

@hookspec
def cosyext_register_lint_rules(register: Callable[..., None]) -> None:
    """Contribute lint rules by calling ``register(rule)`` for each.

    Core validates what is registered (code format, duplicates) in one place, so a bad rule fails
    with a message naming the plugin.
    """


@hookspec
def cosyext_register_config_sections(register: Callable[[str, Callable[[Any], Any]], None]) -> None:
    """Own keys of the ``cosyext:`` config section: call ``register(key, parse)`` for each.

    ``parse(value)`` gets ``configs['cosyext'][key]`` (None when the key is empty) and returns the
    validated settings or raises :class:`cosyvoice_ext.errors.ConfigError` whose ``key`` is the
    dotted path of the bad entry (``cosyext.acme.level``). Training start-up and ``cosyext lint``
    call the same parser; lint points at the line of that key. A key registered by two plugins is an
    error naming both, and a key nobody registered is refused with the closest valid key.
    """


# --- training: called from the hook points our patch series adds to upstream train_utils --------

@hookspec
def cosyext_configure(configs: dict, args: Any) -> None:
    """After upstream loaded the HyperPyYAML config (``check_modify_and_save_config``).

    ``configs`` is the loaded dict (the ``cosyext`` section included, already checked by the
    section parsers); plugins prepare their run-time state here so a bad setting fails before any
    model work.
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
    """The state dict ``save_model`` writes. Stops at the first non-None result; None = upstream's.

    Called on rank 0 only. :func:`cosyvoice_ext.resume.capture` gives the optimizer, scheduler,
    grad-scaler and RNG states of every rank, for checkpoints that should resume exactly.
    """


@hookspec
def cosyext_after_save(model_name: str, info_dict: dict) -> None:
    """After every checkpoint ``save_model`` wrote, on all ranks, after the ranks' barrier.

    ``model_name`` is upstream's (``init``, ``epoch_3_whole``, ``epoch_3_step_500``); for all but
    ``init``, ``info_dict['loss_dict']`` holds the CV losses that checkpoint was evaluated with.
    A plugin may end training here (all ranks must agree; exit with status 0).
    """


# --- evaluation: called by `cosyext eval` ---------------------------------------------------------

@hookspec
def cosyext_register_metrics(register: Callable[..., None]) -> None:
    """Contribute eval metrics: call ``register(metric)`` for each (a fresh object per call).

    A metric has ``name`` (lower-case, unique across plugins), ``label``, ``higher_is_better``,
    ``setup(context)`` and ``score(sample) -> float | Score``; either method raises
    :class:`cosyvoice_ext.eval.MetricUnavailable` with the reason it cannot run, which eval reports
    (docs/eval.md). Called once per ``cosyext eval``; nothing is loaded at registration.
    """
