"""Add peft LoRA layers to a CosyVoice model in place, freeze the base, move adapter tensors in and out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from .config import LoraSettings

ADAPTER_NAME = "default"
_LORA_MARK = ".lora_"


@dataclass(frozen=True)
class ParamCounts:
    trainable: int
    total: int

    def __str__(self) -> str:
        pct = 100.0 * self.trainable / self.total if self.total else 0.0
        return f"trainable {self.trainable:,} / total {self.total:,} parameters ({pct:.3f}%)"


def peft_config(settings: LoraSettings, targets: list[str]):
    """A peft LoraConfig for exactly these module names."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(targets),
        bias="none",
    )


def has_lora(model: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def inject(model: nn.Module, settings: LoraSettings, targets: list[str], modules_to_save: list[str]) -> ParamCounts:
    """Inject LoRA into ``targets``, freeze everything except LoRA and ``modules_to_save``."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(peft_config(settings, targets), model, adapter_name=ADAPTER_NAME)
    trainable_prefixes = tuple(m + "." for m in modules_to_save)
    for name, p in model.named_parameters():
        p.requires_grad_(_LORA_MARK in name or name.startswith(trainable_prefixes))
    return count_params(model)


def count_params(model: nn.Module) -> ParamCounts:
    params = list(model.parameters())
    return ParamCounts(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors (peft's key names, adapter name included), detached on CPU."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if _LORA_MARK in k}


def module_tensors(model: nn.Module, modules: list[str]) -> dict[str, torch.Tensor]:
    """All state-dict entries under the given module names (stock key names)."""
    prefixes = tuple(m + "." for m in modules)
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k.startswith(prefixes)}


def load_exact(model: nn.Module, tensors: Mapping[str, torch.Tensor], what: str,
               expected: set[str] | None = None) -> int:
    """Copy ``tensors`` into the model bit for bit; every key must exist with the same shape and dtype.

    ``expected``: the keys that must all be present (e.g. every LoRA tensor of the model), so an
    adapter trained with other targets is refused instead of half-loaded.
    """
    own = model.state_dict()
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise CheckpointError(f"{what}: {len(unknown)} tensor(s) have no place in the model, e.g. {unknown[0]}",
                              hint="resume with the same cosyext: LoRA settings the adapter was trained with")
    if expected is not None:
        missing = sorted(expected - set(tensors))
        if missing:
            raise CheckpointError(f"{what}: {len(missing)} tensor(s) of the model are missing, e.g. {missing[0]}",
                                  hint="resume with the same cosyext: LoRA settings the adapter was trained with")
    with torch.no_grad():
        for k, v in tensors.items():
            dst = own[k]
            if dst.shape != v.shape or dst.dtype != v.dtype:
                raise CheckpointError(f"{what}: {k} is {tuple(v.shape)} {v.dtype} in the checkpoint, "
                                      f"{tuple(dst.shape)} {dst.dtype} in the model",
                                      hint="the adapter was trained with another r or another model config")
            dst.copy_(v)
    return len(tensors)
