"""The memory levers, applied in place to a built CosyVoice model before the DDP wrap.

Each lever replaces one module's ``forward`` with a bound method (``types.MethodType``) rather
than a closure, so ``copy.deepcopy`` (train.py's DPO reference model) rebinds it to the copy.
None of them adds, renames or removes a parameter or buffer: checkpoints keep the stock keys.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
from torch import nn

from .config import SECTION, KEY, MemoryConfigError, MemorySettings

log = logging.getLogger("cosyvoice_ext.memory")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_AUTOCAST_ATTR = "_cosyext_autocast"
_INNER_ATTR = "_cosyext_forward_inside_autocast"


def qwen_encoder(model: nn.Module) -> nn.Module | None:
    """The Qwen2Encoder inside a Qwen2LM (``model.llm`` holding a Hugging Face causal LM), else None."""
    enc = getattr(model, "llm", None)
    lm = getattr(enc, "model", None)
    if isinstance(enc, nn.Module) and hasattr(lm, "lm_head") and hasattr(lm, "gradient_checkpointing_enable") \
            and isinstance(getattr(lm, "model", None), nn.Module):
        return enc
    return None


def check_runtime(settings: MemorySettings, args: Any, cuda: bool | None = None) -> None:
    """Refuse lever combinations the run cannot honour, before any model work.

    ``cuda``: whether training runs on a GPU (default: whether one is visible, which is what the
    patched ``batch_forward`` decides with).
    """
    mode = settings.autocast
    if mode == "off":
        return
    key = f"{SECTION}.{KEY}.autocast"
    cuda = torch.cuda.is_available() if cuda is None else cuda
    engine = getattr(args, "train_engine", "torch_ddp")
    if engine == "deepspeed":
        raise MemoryConfigError(key, f"{mode} autocast is not used under DeepSpeed, which casts by its own dtype",
                                hint="set the precision in the DeepSpeed config (bf16/fp16 'enabled') and autocast: off")
    use_amp = bool(getattr(args, "use_amp", False))
    if mode == "fp16":
        if not cuda:
            raise MemoryConfigError(key, "fp16 autocast needs a CUDA GPU; on CPU use bf16",
                                    hint="set cosyext.memory.autocast: bf16")
        if not use_amp:
            raise MemoryConfigError(key, "fp16 training without loss scaling underflows gradients",
                                    hint="add --use_amp to train.py so upstream creates its GradScaler")
    if mode == "bf16":
        if use_amp:
            raise MemoryConfigError(key, "--use_amp already makes upstream autocast to fp16 with a GradScaler; "
                                    "bf16 would fight it", hint="drop --use_amp, or set autocast: fp16")
        if cuda and not torch.cuda.is_bf16_supported():
            raise MemoryConfigError(key, "this GPU has no bf16 support", hint="set autocast: fp16 and pass --use_amp")


def enable_gradient_checkpointing(model: nn.Module) -> bool:
    """Recompute each Qwen2 decoder layer in backward (non-reentrant: works with frozen inputs and LoRA)."""
    enc = qwen_encoder(model)
    if enc is None:
        return False
    enc.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return True


def _decoder_hidden_states(self: nn.Module, xs: torch.Tensor, xs_lens: torch.Tensor):
    """Qwen2Encoder.forward's result without the LM head: the final-norm hidden states and the mask."""
    positions = torch.arange(xs.size(1), device=xs_lens.device)
    masks = positions.unsqueeze(0) < xs_lens.unsqueeze(1)
    out = self.model.model(inputs_embeds=xs, attention_mask=masks, use_cache=False, return_dict=True)
    return out.last_hidden_state, masks.unsqueeze(1)


def skip_unused_logits(model: nn.Module) -> bool:
    """Make the Qwen2Encoder call the decoder (``.model.model``) instead of the whole causal LM.

    Upstream reads only ``hidden_states[-1]``; the 151,936-way vocabulary projection it also
    computes is ~27% of the forward's FLOPs and a 0.53 GiB-per-1,000-positions transient (freed
    before backward, so the peak drops less than the time: BENCHMARKS.md).
    """
    enc = qwen_encoder(model)
    if enc is None:
        return False
    enc.forward = types.MethodType(_decoder_hidden_states, enc)
    return True


def _autocast_forward(self: nn.Module, *args: Any, **kwargs: Any):
    param = next(self.parameters(), None)
    device_type = param.device.type if param is not None else "cpu"
    with torch.autocast(device_type=device_type, dtype=DTYPES[getattr(self, _AUTOCAST_ATTR)]):
        return getattr(self, _INNER_ATTR)(*args, **kwargs)


def enable_autocast(model: nn.Module, mode: str) -> bool:
    """Run ``model.forward`` under ``torch.autocast`` (weights and optimizer state stay fp32)."""
    if mode == "off":
        return False
    if mode not in DTYPES:
        raise MemoryConfigError(f"{SECTION}.{KEY}.autocast", f"unknown mode {mode!r}")
    if _INNER_ATTR not in model.__dict__:
        model.__dict__[_INNER_ATTR] = model.forward
        model.forward = types.MethodType(_autocast_forward, model)
    model.__dict__[_AUTOCAST_ATTR] = mode
    return True


def apply(model: nn.Module, name: str, settings: MemorySettings) -> list[str]:
    """Apply the configured levers to ``model`` (the one train.py trains, named ``name``); what was applied."""
    applied = []
    if settings.skip_unused_logits and skip_unused_logits(model):
        applied.append("skip_unused_logits")
    if settings.gradient_checkpointing and enable_gradient_checkpointing(model):
        applied.append("gradient_checkpointing")
    if enable_autocast(model, settings.autocast):
        applied.append(f"autocast={settings.autocast}")
    skipped = [k for k in ("gradient_checkpointing", "skip_unused_logits") if getattr(settings, k) and k not in applied]
    if skipped:
        log.info("cosyext memory: %s apply to the Qwen2 LLM only; not used for %s", ", ".join(skipped), name)
    if applied:
        log.info("cosyext memory: %s: %s", name, ", ".join(applied))
    return applied
