"""From loaded checkpoints to stock-keyed weights: adapters merged into the base with peft's
``merge()``, DeepSpeed model states merged with the config's settings, full state dicts taken as
they are; averaging over merged weights; and the checks every tensor passes before it is written
(finite values: a NaN or Inf weight is refused, naming the tensor and the file it came from).
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ... import checkpoints
from ...errors import CheckpointError, UsageError
from .. import adapter as adapter_io
from ..base import compare, family_clash
from ..config import SECTION, LoraSettings
from ..inject import inject, load_exact, lora_state, module_tensors
from ..merge import merge_into_stock
from ..targets import resolve_modules_to_save, resolve_targets


def recorded_base(state: Mapping, path: Path, model: str, *, must_exist: bool = True) -> str | None:
    """The base an adapter records (None for other checkpoints), after checking it is an adapter of ``model``;
    ``must_exist``: a recorded base that is not here is an error (no ``--base`` replaces it)."""
    if not checkpoints.is_adapter(state):
        return None
    ad = adapter_io.read(state, str(path))
    adapter_io.check_model_name(ad, model, str(path))
    if must_exist and ad.base_path and not os.path.isfile(ad.base_path):
        raise UsageError(f"adapter {path} was trained on {ad.base_path}, which does not exist here",
                         hint="pass the base checkpoint with --base FILE")
    return ad.base_path


def check_finite(state: Mapping, what: str) -> None:
    """CheckpointError naming the first tensor of ``state`` that holds NaN or Inf."""
    bad = checkpoints.nonfinite(state)
    if bad is None:
        return
    key, nan, inf, size = bad
    counts = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n)
    raise CheckpointError(f"{what}: tensor {key} holds {counts} value(s) of {size}; refusing to export "
                          "non-finite weights", hint="export an earlier epoch (--checkpoint FILE), or "
                          "--val-best to pick by CV loss; a diverged run needs a lower learning rate")


def merged_weights(stock: nn.Module, state: Mapping, path: str | os.PathLike, base_sha256: str | None,
                   settings: LoraSettings | None = None, name: str | None = None) -> "OrderedDict[str, torch.Tensor]":
    """Stock-keyed merged weights of one loaded checkpoint.

    An adapter is applied to ``stock``; a DeepSpeed model-states file holds the whole LoRA-injected
    model, merged with ``settings`` (the config's section); a full state dict is taken as it is.
    """
    if isinstance(state.get("module"), Mapping) and "ds_version" in state:
        module = state["module"]
        check_finite(module, f"checkpoint {path}")
        if any(".lora_" in k for k in module):
            if settings is None:
                raise UsageError(f"{path} holds LoRA weights but the config has no {SECTION}: section for this model",
                                 hint="pass the config the run was trained with")
            model = copy.deepcopy(stock)
            targets = resolve_targets(model, settings)
            inject(model, settings, targets, resolve_modules_to_save(model, settings, targets))
            try:
                model.load_state_dict(dict(module), strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"{path} does not fit the LoRA model of the config: {exc}",
                                      hint="pass the config the run was trained with") from exc
            merge_into_stock(model)
            return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
        state = module
    if not checkpoints.is_adapter(state):
        full = checkpoints.tensors(state)
        report = compare(stock, full)
        if report.missing or report.unexpected or report.shape_mismatch:
            raise CheckpointError(f"{path} is neither a cosyext adapter nor a full checkpoint of this model"
                                  f"{family_clash(stock, full, name)}: "
                                  f"{report.summary()}")
        check_finite(full, f"checkpoint {path}")
        return OrderedDict((k, full[k]) for k in stock.state_dict())
    ad = adapter_io.read(state, str(path))
    if name is not None:
        adapter_io.check_model_name(ad, name, str(path))
    if ad.base_sha256 and base_sha256 and ad.base_sha256 != base_sha256:
        raise CheckpointError(
            f"adapter {path} was trained on base sha256 {ad.base_sha256[:12]} (recorded path {ad.base_path}), "
            f"--base has sha256 {base_sha256[:12]}", hint="pass the base checkpoint the adapter was trained on as --base")
    adapter_io.check_same_model(ad, stock, str(path))
    check_finite(ad.lora, f"adapter {path}")
    check_finite(ad.modules_to_save, f"adapter {path} (modules_to_save)")
    model = copy.deepcopy(stock)
    targets = resolve_targets(model, ad.settings)
    to_save = resolve_modules_to_save(model, ad.settings, targets)
    inject(model, ad.settings, targets, to_save)
    load_exact(model, ad.modules_to_save, f"adapter {path} (modules_to_save)", expected=set(module_tensors(model, to_save)))
    load_exact(model, ad.lora, f"adapter {path}", expected=set(lora_state(model)))
    merge_into_stock(model)
    return OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())


def average(states: list[Mapping[str, torch.Tensor]]) -> "OrderedDict[str, torch.Tensor]":
    """Element-wise mean (float64 accumulation, original dtype); non-float tensors must agree and are kept."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, first in states[0].items():
        if first.is_floating_point():
            acc = torch.zeros(first.shape, dtype=torch.float64)
            for s in states:
                acc += s[key].to(torch.float64)
            out[key] = (acc / len(states)).to(first.dtype)
        else:
            if any(not torch.equal(s[key], first) for s in states[1:]):
                raise CheckpointError(f"cannot average {key}: a non-float tensor that differs between checkpoints")
            out[key] = first.clone()
    return out
