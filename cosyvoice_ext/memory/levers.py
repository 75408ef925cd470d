"""The memory levers, applied in place to a built CosyVoice model before the DDP wrap.

Each model lever replaces modules' ``forward`` with bound methods (``types.MethodType``) rather
than closures, so ``copy.deepcopy`` (train.py's DPO reference model) rebinds them to the copy.
None of them adds, renames or removes a parameter or buffer: checkpoints keep the stock keys.
``release_cpu_memory`` is a process setting (:mod:`.allocator`), not a model change.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
from torch import nn

from .allocator import release_cpu_memory
from .checkpointing import enable_flow_checkpointing
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


def enable_gradient_checkpointing(model: nn.Module) -> str | None:
    """Recompute blocks in backward instead of keeping their activations; what was checkpointed, or None.

    The LLM: Hugging Face's checkpointing of each Qwen2 decoder layer. The flow: each block of the
    estimator (CosyVoice2's U-Net resnet and transformer blocks, CosyVoice3's DiT blocks) and of
    CosyVoice2's conformer encoder (:mod:`.checkpointing`). Both non-reentrant: gradients reach
    LoRA tensors inside frozen blocks, and dropout draws the same masks when recomputed.
    """
    enc = qwen_encoder(model)
    if enc is not None:
        enc.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return f"{len(enc.model.model.layers)} Qwen2 decoder layers in llm.model.model.layers"
    groups = enable_flow_checkpointing(model)
    return "; ".join(g.describe() for g in groups) or None


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
    checkpointed = None
    if settings.skip_unused_logits and skip_unused_logits(model):
        applied.append("skip_unused_logits")
    if settings.gradient_checkpointing:
        checkpointed = enable_gradient_checkpointing(model)
        if checkpointed:
            applied.append("gradient_checkpointing")
    if enable_autocast(model, settings.autocast):
        applied.append(f"autocast={settings.autocast}")
    if settings.release_cpu_memory and release_cpu_memory():
        applied.append("release_cpu_memory")
    if settings.skip_unused_logits and "skip_unused_logits" not in applied:
        log.info("cosyext memory: skip_unused_logits applies to the Qwen2 LLM only; not used for %s", name)
    if settings.gradient_checkpointing and "gradient_checkpointing" not in applied:
        log.warning("cosyext memory: gradient_checkpointing found no blocks it knows in %s (%s); not used",
                    name, type(model).__name__)
    if applied:
        log.info("cosyext memory: %s: %s", name, ", ".join(applied))
    if checkpointed:
        log.info("cosyext memory: %s: gradient_checkpointing of %s", name, checkpointed)
    return applied
