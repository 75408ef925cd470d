"""Load the base checkpoint into the stock model and say how much of it actually landed.

train.py loads ``--checkpoint`` with ``strict=False`` and says nothing: a wrong file (another
model, another config) leaves the model randomly initialised and LoRA then trains on noise. We
load it again, count, and stop training when it does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ..checkpoints import family_of_state
from ..errors import CheckpointError

MIN_MATCHED = 0.9


@dataclass(frozen=True)
class BaseReport:
    matched: int
    model_keys: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    shape_mismatch: tuple[str, ...]

    @property
    def fraction(self) -> float:
        return self.matched / self.model_keys if self.model_keys else 1.0

    def summary(self) -> str:
        return (f"{self.matched}/{self.model_keys} model keys loaded ({100 * self.fraction:.1f}%), "
                f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                f"{len(self.shape_mismatch)} shape mismatches")


def compare(model: nn.Module, state: Mapping[str, object]) -> BaseReport:
    """Key/shape agreement of a state dict with the model (non-tensor entries such as epoch are ignored)."""
    own = model.state_dict()
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    mismatch = tuple(k for k in own if k in tensors and tensors[k].shape != own[k].shape)
    matched = sum(1 for k in own if k in tensors and k not in mismatch)
    return BaseReport(
        matched=matched,
        model_keys=len(own),
        missing=tuple(k for k in own if k not in tensors),
        unexpected=tuple(k for k in tensors if k not in own),
        shape_mismatch=mismatch,
    )


def family_clash(model: nn.Module, state: Mapping[str, object], name: str | None) -> str:
    """`` (a cosyvoice2 llm.pt; the model is CosyVoice3LM (cosyvoice3))`` when the file is another family's, else ''."""
    from .targets import describe_model, model_family

    fam = model_family(model)
    if name is None or fam is None:
        return ""
    looks = family_of_state(state, name)
    if looks is None or looks == fam.name:
        return ""
    return f" (the file looks like a {looks} {name}.pt; the model is {describe_model(model)})"


def load_base(model: nn.Module, state: Mapping[str, object], source: str, min_matched: float = MIN_MATCHED,
              name: str | None = None) -> BaseReport:
    """Copy the base weights into the model; CheckpointError when the checkpoint does not fit it.

    ``name`` (llm/flow) lets the error say when the file is another model family's checkpoint.
    """
    report = compare(model, state)
    hint = "pass the pretrained checkpoint of this model (e.g. --checkpoint pretrained/llm.pt for --model llm) " \
           "built from the same config"
    clash = ""
    if report.shape_mismatch or report.fraction < min_matched:
        clash = family_clash(model, state, name)
        if clash:
            hint = "pass the pretrained checkpoint of the family the config builds (CosyVoice2 and CosyVoice3 " \
                   "checkpoints do not load into each other)"
    if report.shape_mismatch:
        k = report.shape_mismatch[0]
        raise CheckpointError(
            f"base checkpoint {source} does not match the model{clash}: {len(report.shape_mismatch)} tensor(s) have "
            f"other shapes, e.g. {k}: {tuple(state[k].shape)} in the file, {tuple(model.state_dict()[k].shape)} in "
            "the model", hint=hint)
    if report.fraction < min_matched:
        example = f", e.g. missing {report.missing[0]}" if report.missing else ""
        raise CheckpointError(
            f"base checkpoint {source} does not match the model{clash}: only {report.summary()}{example}", hint=hint)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and k not in report.unexpected}
    model.load_state_dict(tensors, strict=False)
    return report
