"""Gradient checkpointing of the flow's blocks: recompute each block in backward instead of keeping its
activations.

Which blocks, per model class (found by structure, so subclasses and both upstream commits match):

- CosyVoice2 flow (``CausalMaskedDiffWithXvec``): the estimator ``CausalConditionalDecoder`` is a
  1-D U-Net whose ``down_blocks``/``mid_blocks``/``up_blocks`` each hold a resnet block and a list
  of transformer blocks; each resnet and each transformer block is checkpointed. Its
  ``UpsampleConformerEncoder`` conformer layers (``encoders``, ``up_encoders``) are too: at 2000
  frames they keep ~1.5 GiB of attention activations that no estimator lever touches
  (BENCHMARKS.md).
- CosyVoice3 flow (``CausalMaskedDiffWithDiT``): the DiT estimator's ``transformer_blocks``.

Why per block: checkpointing the whole estimator at once would rebuild all of its activations in
backward, so the peak would only move, not shrink. Per block, backward holds one block's
activations plus every block's input (a ``B x T x dim`` tensor each).

The checkpoint is non-reentrant ``torch.utils.checkpoint`` (gradients reach LoRA tensors inside a
frozen block, and keyword arguments pass through) with ``preserve_rng_state`` on (the default):
dropout inside a block draws the same mask in the recomputation, so loss and gradients are those
of the plain model. Flow matching's own draws (time step, noise, CFG drop, prompt cut) happen
outside the blocks, once. Only a module in training mode with autograd on is checkpointed: the CV
pass (``torch.no_grad``) and inference (``torch.inference_mode``) run the plain forward.

Each block's ``forward`` becomes a bound method (``types.MethodType``) that calls the forward it
replaced, kept in the module's ``__dict__``: ``copy.deepcopy`` rebinds both to the copy, and no
parameter or buffer is added (state-dict keys unchanged).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_INNER = "_cosyext_forward_before_checkpoint"


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    inner = self.__dict__[_INNER]
    if self.training and torch.is_grad_enabled():
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)
    return inner(*args, **kwargs)


def checkpoint_module(module: nn.Module) -> bool:
    """Make ``module`` recompute its forward in backward (training only); False if it already does."""
    if _INNER in module.__dict__:
        return False
    module.__dict__[_INNER] = module.forward
    module.forward = types.MethodType(_checkpointed_forward, module)
    return True


def is_checkpointed(module: nn.Module) -> bool:
    return _INNER in module.__dict__


@dataclass(frozen=True)
class Group:
    """Blocks of one kind under one module path, e.g. 22 DiT blocks under decoder.estimator."""

    path: str
    kind: str
    modules: tuple[nn.Module, ...]

    def describe(self) -> str:
        return f"{len(self.modules)} {self.kind}{'s' if len(self.modules) != 1 else ''} in {self.path}"


def _module_list(owner: nn.Module, name: str) -> nn.ModuleList | None:
    value = getattr(owner, name, None)
    return value if isinstance(value, nn.ModuleList) else None


def _estimator_groups(est: nn.Module, path: str) -> list[Group]:
    dit = _module_list(est, "transformer_blocks")
    if dit is not None:  # cosyvoice.flow.DiT.dit.DiT
        return [Group(path, "DiT block", tuple(dit))]
    stages = [_module_list(est, k) for k in ("down_blocks", "mid_blocks", "up_blocks")]
    if any(s is None for s in stages):
        return []
    # cosyvoice.flow.decoder.(Causal)ConditionalDecoder: each stage entry is
    # ModuleList([resnet, ModuleList(transformer blocks), (down|up)sample?])
    resnets: list[nn.Module] = []
    blocks: list[nn.Module] = []
    for stage in stages:
        for entry in stage:
            if not isinstance(entry, nn.ModuleList) or len(entry) < 2 or not isinstance(entry[1], nn.ModuleList):
                return []
            resnets.append(entry[0])
            blocks.extend(entry[1])
    return [Group(path, "U-Net resnet block", tuple(resnets)), Group(path, "U-Net transformer block", tuple(blocks))]


def _encoder_groups(enc: nn.Module, path: str) -> list[Group]:
    layers = [m for key in ("encoders", "up_encoders") for m in (_module_list(enc, key) or ())]
    return [Group(path, "conformer layer", tuple(layers))] if layers else []


def flow_groups(model: nn.Module) -> list[Group]:
    """The blocks gradient checkpointing recomputes in a CosyVoice flow model; [] for anything else."""
    decoder = getattr(model, "decoder", None)
    est = getattr(decoder, "estimator", None)
    if not isinstance(est, nn.Module):
        return []
    groups = _estimator_groups(est, "decoder.estimator")
    if not groups:
        return []
    enc = getattr(model, "encoder", None)
    if isinstance(enc, nn.Module):
        groups += _encoder_groups(enc, "encoder")
    return groups


def enable_flow_checkpointing(model: nn.Module) -> list[Group]:
    """Checkpoint every block :func:`flow_groups` finds; the groups (empty: not a flow we know)."""
    groups = flow_groups(model)
    for group in groups:
        for module in group.modules:
            checkpoint_module(module)
    return groups
