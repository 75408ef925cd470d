"""The adapter checkpoint format.

Layout (plain tensors, numbers, strings, lists and dicts only, so ``weights_only=True`` reads it)::

    {"epoch": int, "step": int,                 # top level: train.py resumes its counters from these
     "cosyext": {"format": "adapter", "version", "model", "model_class", "family", "lora": {...settings...},
                 "base_checkpoint": {"path", "sha256"}, "targets": [...], "epoch", "step", "cv_loss"},
     "lora": {peft key: tensor},                # e.g. llm.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
     "modules_to_save": {stock key: tensor}}

``model_class`` (e.g. ``cosyvoice.llm.llm.CosyVoice3LM``) and ``family`` came with CosyVoice3 support;
adapters written before have neither and are still read.

Tensors are nested, so train.py's ``load_state_dict(strict=False)`` of this file loads nothing
into the model: the plugin does it, bit for bit, after re-loading the recorded base checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .. import __version__
from ..checkpoints import ADAPTER_FORMAT, META_KEY, is_adapter
from ..errors import CheckpointError
from .config import LoraSettings


@dataclass(frozen=True)
class AdapterCheckpoint:
    settings: LoraSettings
    lora: dict[str, torch.Tensor]
    modules_to_save: dict[str, torch.Tensor]
    base_path: str | None
    base_sha256: str | None
    epoch: int
    step: int
    meta: dict


def build(*, settings: LoraSettings, lora: Mapping[str, torch.Tensor], modules_to_save: Mapping[str, torch.Tensor],
          targets: list[str], base_path: str | None, base_sha256: str | None, info_dict: Mapping[str, Any],
          model_class: str | None = None, family: str | None = None) -> dict:
    """The dict ``save_model`` writes for ``checkpoint_format: adapter``."""
    epoch, step = int(info_dict.get("epoch", -1)), int(info_dict.get("step", 0))
    meta = {
        "format": ADAPTER_FORMAT,
        "version": __version__,
        "model": settings.model,
        "model_class": model_class,
        "family": family,
        "lora": settings.to_dict(),
        "base_checkpoint": {"path": base_path, "sha256": base_sha256},
        "targets": list(targets),
        "epoch": epoch,
        "step": step,
        "cv_loss": _plain_losses(info_dict.get("loss_dict")),
    }
    return {
        "epoch": epoch,
        "step": step,
        META_KEY: meta,
        "lora": dict(lora),
        "modules_to_save": dict(modules_to_save),
    }


def read(state: Mapping[str, Any], source: str) -> AdapterCheckpoint:
    """Parse a loaded adapter checkpoint; CheckpointError when it is malformed."""
    if not is_adapter(state):
        raise CheckpointError(f"{source} is not a cosyext adapter checkpoint")
    meta = state[META_KEY]
    try:
        settings = LoraSettings.from_dict(meta["lora"])
        base = meta.get("base_checkpoint") or {}
        lora, mts = state["lora"], state.get("modules_to_save", {})
        if not all(isinstance(v, torch.Tensor) for v in (*lora.values(), *mts.values())):
            raise TypeError("non-tensor entry among the adapter tensors")
        return AdapterCheckpoint(
            settings=settings, lora=dict(lora), modules_to_save=dict(mts),
            base_path=base.get("path"), base_sha256=base.get("sha256"),
            epoch=int(state.get("epoch", meta.get("epoch", -1))), step=int(state.get("step", meta.get("step", 0))),
            meta=dict(meta),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise CheckpointError(f"adapter checkpoint {source} is malformed: {exc!r}") from exc


def check_same_model(ad: AdapterCheckpoint, model: Any, source: str) -> None:
    """An adapter trained on one model class does not go into another (e.g. CosyVoice2's Qwen2LM vs CosyVoice3LM)."""
    from .targets import describe_model, model_class

    saved = ad.meta.get("model_class")
    if saved and saved != model_class(model):
        raise CheckpointError(
            f"adapter {source} was trained on {saved.rsplit('.', 1)[-1]} "
            f"({ad.meta.get('family') or 'no known family'}); the config builds {describe_model(model)}",
            hint="use the config (and base checkpoint) the adapter was trained with")


def check_model_name(ad: AdapterCheckpoint, model: str, source: str) -> None:
    """A flow adapter is not an llm export (nor the reverse): the model the adapter records decides.

    Caught before any model is built, so the message names the mismatch instead of a base checkpoint
    that "does not load strictly".
    """
    recorded = ad.meta.get("model") or ad.settings.model
    if recorded == model:
        return
    cls = ad.meta.get("model_class")
    trained_on = f" (trained on {cls.rsplit('.', 1)[-1]})" if isinstance(cls, str) and cls else ""
    raise CheckpointError(
        f"adapter {source} is a {recorded} adapter: it records model {recorded!r}{trained_on}, "
        f"but --model {model} was given", hint=f"export it with --model {recorded}, or pass a {model} checkpoint")


def _plain_losses(loss_dict: Any) -> dict | None:
    if not isinstance(loss_dict, Mapping):
        return None
    out = {}
    for k, v in loss_dict.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (int, float)):
            out[str(k)] = float(v)
    return out or None
