"""What the LoRA plugin does at each training hook point; callable directly from tests.

One :class:`LoraRun` per prepared model, remembered by model object, so the save hook (which only
gets the model) knows the settings and the base checkpoint's digest.
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from .. import checkpoints, resume as training_state
from ..errors import CheckpointError
from . import adapter
from .base import load_base
from .config import SECTION, LoraSettings, parse_section
from .inject import has_lora, inject, load_exact, lora_state, module_tensors
from .merge import merged_state_dict
from .targets import describe_model, model_class, model_family, resolve_modules_to_save, resolve_targets

log = logging.getLogger("cosyvoice_ext.lora")


@dataclass
class LoraRun:
    settings: LoraSettings
    targets: list[str]
    modules_to_save: list[str]
    base_path: str | None
    base_sha256: str | None
    resumed_from: str | None = None


_runs: "weakref.WeakKeyDictionary[nn.Module, LoraRun]" = weakref.WeakKeyDictionary()


def unwrap(model: Any) -> Any:
    """The bare model behind a DDP (``.module``) wrapper."""
    return getattr(model, "module", model)


def run_of(model: Any) -> LoraRun | None:
    try:
        return _runs.get(unwrap(model))
    except TypeError:
        return None


def settings_for(configs: Mapping[str, Any], name: str) -> LoraSettings | None:
    return parse_section(configs).get(name)


def configure(configs: Mapping[str, Any], args: Any) -> LoraSettings | None:
    """Validate the whole ``cosyext:`` section, and the trained model's targets against the built model."""
    all_settings = parse_section(configs)
    name = getattr(args, "model", None)
    settings = all_settings.get(name)
    if settings is None:
        return None
    model = configs.get(name)
    if isinstance(model, nn.Module):
        targets = resolve_targets(model, settings)
        resolve_modules_to_save(model, settings, targets)
        log.info("cosyext lora: %s (%s): r=%d alpha=%g dropout=%g on %d modules (target_modules %s), "
                 "checkpoint format %s", name, describe_model(model), settings.r, settings.alpha, settings.dropout,
                 len(targets), _spelled(settings), settings.checkpoint_format)
    return settings


def prepare(model: nn.Module, name: str, configs: Mapping[str, Any], args: Any) -> LoraRun | None:
    """Load/check the base, inject LoRA, restore adapter weights on resume, freeze the base."""
    settings = settings_for(configs, name)
    if settings is None:
        return None
    if has_lora(model):  # e.g. the DPO reference model, deep-copied from the already injected one
        log.info("cosyext lora: %s already carries LoRA layers; not injecting again", name)
        return run_of(model)
    ckpt = getattr(args, "checkpoint", None)
    resume: adapter.AdapterCheckpoint | None = None
    resume_state: Any = None
    base_state: dict | None = None
    if ckpt and not os.path.exists(ckpt):  # train.py only warns and trains from scratch
        raise CheckpointError(f"--checkpoint {ckpt} does not exist; LoRA needs the base model",
                              hint=f"pass the pretrained {name}.pt (or an adapter checkpoint to resume)")
    if ckpt:
        state = checkpoints.load(ckpt, mmap=True)  # a full base is read next to the model holding it
        if checkpoints.is_adapter(state):
            resume = adapter.read(state, ckpt)
            resume_state = state.get(training_state.STATE_KEY)
        else:
            base_state = state
    # targets come from the module tree alone: resolve (and compare with a resumed adapter) before the slow base load
    targets = resolve_targets(model, settings)
    to_save = resolve_modules_to_save(model, settings, targets)
    if resume is not None:
        _check_same_adapter(resume, settings, model, targets, ckpt)
    base_path = settings.base_checkpoint
    if resume is not None:
        base_path = base_path or resume.base_path
    elif ckpt and base_state is not None:
        if base_path and os.path.abspath(base_path) != os.path.abspath(ckpt):
            log.info("cosyext lora: --checkpoint %s is used as the base (not %s.%s.base_checkpoint)", ckpt, SECTION, name)
        base_path = ckpt
    if not base_path:
        raise CheckpointError(
            f"LoRA for {name} needs a base checkpoint and none was given",
            hint=f"pass --checkpoint pretrained/{name}.pt or set {SECTION}.{name}.base_checkpoint in the config")
    base_path = os.path.abspath(base_path)
    digest = checkpoints.file_digest(base_path) if os.path.isfile(base_path) else None
    if resume is not None:
        if digest is None:
            raise CheckpointError(
                f"resuming from {ckpt} needs its base checkpoint {base_path}, which does not exist",
                hint=f"set {SECTION}.{name}.base_checkpoint to where the base checkpoint is now")
        if resume.base_sha256 and digest != resume.base_sha256:
            raise CheckpointError(
                f"base checkpoint {base_path} (sha256 {digest[:12]}) is not the one adapter {ckpt} was trained on "
                f"(sha256 {resume.base_sha256[:12]}, recorded path {resume.base_path})",
                hint=f"set {SECTION}.{name}.base_checkpoint to the original base checkpoint")
    if base_state is None:
        base_state = checkpoints.load(base_path, mmap=True)
    report = load_base(model, base_state, base_path, name=name)
    del base_state
    log.info("cosyext lora: base checkpoint %s (sha256 %s): %s", base_path, (digest or "?")[:12], report.summary())

    counts = inject(model, settings, targets, to_save)
    if resume is not None:
        n_mts = load_exact(model, resume.modules_to_save, f"adapter {ckpt} (modules_to_save)",
                           expected=set(module_tensors(model, to_save)))
        n_lora = load_exact(model, resume.lora, f"adapter {ckpt}", expected=set(lora_state(model)))
        log.info("cosyext lora: resumed %d LoRA and %d modules_to_save tensors from %s (epoch %d, step %d)",
                 n_lora, n_mts, ckpt, resume.epoch, resume.step)
        _expect_training_state(resume_state, ckpt, args)
    log.info("cosyext lora: %s (%s): LoRA r=%d on %d modules (target_modules %s); %s", name, describe_model(model),
             settings.r, len(targets), _spelled(settings), counts)
    run = LoraRun(settings=settings, targets=targets, modules_to_save=to_save, base_path=base_path,
                  base_sha256=digest, resumed_from=ckpt if resume is not None else None)
    _runs[model] = run
    return run


def optimizer_params(model: Any) -> list | None:
    """Only the trainable parameters of a LoRA model; None (upstream's choice) for any other model."""
    if run_of(model) is None:
        return None
    return [p for p in unwrap(model).parameters() if p.requires_grad]


def checkpoint_state(model: Any, info_dict: Mapping[str, Any]) -> dict | None:
    """The dict save_model writes for a LoRA model (adapter or merged); None for any other model."""
    bare = unwrap(model)
    run = run_of(bare)
    if run is None:
        return None
    if run.settings.checkpoint_format == "merged":
        return {**merged_state_dict(bare), "epoch": info_dict["epoch"], "step": info_dict["step"]}
    fam = model_family(bare)
    state = adapter.build(
        settings=run.settings, lora=lora_state(bare), modules_to_save=module_tensors(bare, run.modules_to_save),
        targets=run.targets, base_path=run.base_path, base_sha256=run.base_sha256, info_dict=info_dict,
        model_class=model_class(bare), family=fam.name if fam else None)
    if info_dict.get("train_engine", "torch_ddp") == "torch_ddp":
        # optimizer (the trainable parameters only), scheduler, grad scaler, every rank's RNG: exact resume
        state[training_state.STATE_KEY] = training_state.capture(info_dict)
    return state


def _expect_training_state(state: Any, ckpt: str, args: Any) -> None:
    """Hand the adapter's training state to :mod:`cosyvoice_ext.resume` (restored at the next hook points)."""
    if getattr(args, "train_engine", "torch_ddp") != "torch_ddp":
        log.info("cosyext lora: DeepSpeed resumes the adapter weights only (it keeps its own optimizer state)")
    elif state is None:
        log.warning("cosyext lora: %s carries no optimizer, scheduler or RNG state (an adapter from an older "
                    "cosyvoice-ext): Adam's moments restart, so the run does not continue exactly", ckpt)
    else:
        training_state.expect(state, ckpt)


def _spelled(settings: LoraSettings) -> str:
    t = settings.target_modules
    return repr(list(t)) if isinstance(t, tuple) else repr(t)


def _check_same_adapter(resume: adapter.AdapterCheckpoint, now: LoraSettings, model: nn.Module, targets: list[str],
                        ckpt: str) -> None:
    """Resume only into the same LoRA layout; the targets are compared as resolved module names (so an
    adapter written when the default was spelled ``attention`` resumes under ``default``)."""
    adapter.check_same_model(resume, model, ckpt)
    saved = resume.settings
    hint = "resume with the adapter's settings ({key}) or start from the base checkpoint"
    if saved.r != now.r:
        raise CheckpointError(f"adapter {ckpt} was trained with r={saved.r!r}, the config now says {now.r!r}",
                              hint=hint.format(key=f"{SECTION}.{now.model}.r"))
    recorded = resume.meta.get("targets")
    if recorded is not None and list(recorded) != list(targets):
        extra = sorted(set(targets) - set(recorded))
        gone = sorted(set(recorded) - set(targets))
        example = f"now also {extra[0]}" if extra else f"no longer {gone[0]}" if gone else "another order"
        raise CheckpointError(
            f"adapter {ckpt} was trained with target_modules={saved.target_modules!r} ({len(recorded)} modules), "
            f"the config's target_modules={now.target_modules!r} gives {len(targets)} modules ({example})",
            hint=hint.format(key=f"{SECTION}.{now.model}.target_modules"))
    if recorded is None and saved.target_modules != now.target_modules:
        raise CheckpointError(
            f"adapter {ckpt} was trained with target_modules={saved.target_modules!r}, the config now says "
            f"{now.target_modules!r}", hint=hint.format(key=f"{SECTION}.{now.model}.target_modules"))
    if saved.modules_to_save != now.modules_to_save:
        raise CheckpointError(
            f"adapter {ckpt} was trained with modules_to_save={saved.modules_to_save!r}, the config now says "
            f"{now.modules_to_save!r}", hint=hint.format(key=f"{SECTION}.{now.model}.modules_to_save"))

