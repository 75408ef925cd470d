"""A small measured model of one training step's peak memory, for ``cosyext lint --gpu-memory``.

A step has two peaks and the larger one wins:

- the *activation* peak at the end of forward: weights + Adam state (+ fp32 gradients of LoRA
  tensors, negligible) + activations, and activations grow linearly with ``max_frames_in_batch``;
- the *update* peak in ``clip_grad_norm_`` / ``optimizer.step()``: weights + gradients + Adam state
  + the optimizer's temporaries; activations are gone by then. Only a full fine-tune has one that
  matters (0.5B parameters of fp32 gradients and two Adam moments: 7.5 GiB before any activation).

Per model family (``family=``: ``cosyvoice2``, the default, or ``cosyvoice3``, the names of
:mod:`cosyvoice_ext.family`): the LLMs are the same Qwen2, the flows are not (CosyVoice3's DiT flow
has ~3x the parameters of CosyVoice2's U-Net flow).

State sizes come from parameter counts (fp32: 4 bytes a weight or gradient, 8 bytes of Adam state
per trainable parameter). The activation lines and the update temporaries come from
``benchmarks/bench_train_memory.py`` (BENCHMARKS.md): CPU training-step RSS peaks above the
process's RSS before the model was built, one configuration per subprocess. On a GPU the card
also holds the CUDA context (``CUDA_CONTEXT_GIB``).

Accuracy: CPU RSS includes glibc allocator slack (measured: LoRA at 2000 frames 8.3 GiB with the
default allocator, 5.6 GiB with ``MALLOC_MMAP_THRESHOLD_=131072``), so the activation lines are on
the high side of what CUDA's caching allocator needs; attention memory also grows with utterance
length, not only with frames (measured with equal utterances: 8 s at 400 frames, 20 s at 2000).
Treat it as "will this fit, roughly" (±30%), which is what a lint warning needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from .config import AUTOCAST_MODES

GIB = 1024 ** 3
CUDA_CONTEXT_GIB = 0.5
MODELS = ("llm", "flow")
FAMILIES = ("cosyvoice2", "cosyvoice3")  # cosyvoice_ext.family names
DEFAULT_FAMILY = "cosyvoice2"


@dataclass(frozen=True)
class ModelSize:
    params: int            # all parameters (fp32)
    lora_trainable: int    # LoRA r=16 tensors (LLM: q,k,v,o,gate,up,down; flow: attention projections)
    update_extra_gib: float  # measured optimizer/clipping temporaries of a full fine-tune


@dataclass(frozen=True)
class ActivationLine:
    intercept_gib: float
    gib_per_frame: float

    def at(self, frames: float) -> float:
        return self.intercept_gib + self.gib_per_frame * frames


# Parameter counts of the benchmark models, per family (CosyVoice2-0.5B and CosyVoice3-0.5B dims).
SIZES_BY_FAMILY: dict[str, dict[str, ModelSize]] = {
    "cosyvoice2": {
        "llm": ModelSize(params=505_803_812, lora_trainable=8_798_208, update_extra_gib=1.07),
        # flow: its full fine-tune peaked in the activation phase at 400 frames, so its update
        # temporaries were not seen; scaled from the LLM's (14% of weights + grads + Adam)
        "flow": ModelSize(params=112_549_360, lora_trainable=3_407_872, update_extra_gib=0.24),
    },
    "cosyvoice3": {
        # CosyVoice3LM: the same Qwen2 plus 6,761-row speech embedding and bias-free decoder
        "llm": ModelSize(params=506_148_480, lora_trainable=8_798_208, update_extra_gib=1.07),
        # DiT flow (dim 1024, depth 22); LoRA: the DiT blocks' attention and feed-forward (its default).
        # Its full fine-tune peaks in the update at 400 frames (run F): 5.87 GiB above the baseline,
        # 0.91 more than weights + grads + Adam
        "flow": ModelSize(params=332_257_088, lora_trainable=5_046_272, update_extra_gib=0.91),
    },
}
SIZES: dict[str, ModelSize] = SIZES_BY_FAMILY[DEFAULT_FAMILY]

# Measured LoRA training-step peaks, GiB above the process baseline, per (family, model, levers) and
# max_frames_in_batch. "ckpt" = gradient_checkpointing, "skip" = skip_unused_logits, "amp" =
# autocast. LLMs: BENCHMARKS.md run C (MALLOC_MMAP_THRESHOLD_=131072, so RSS follows live tensors as
# on a GPU); CosyVoice3's LLM is the same Qwen2 (run F measured both LLMs within 0.03 GiB of each
# other at 400 and 2000 frames). Flows: CosyVoice2 run D, CosyVoice3 run F (default allocator, on
# the high side). Activations = these minus the LoRA model's weights, gradients and Adam state.
_QWEN2_LORA_PEAKS = {400: 2.78, 2000: 5.56}
LORA_PEAKS: dict[tuple[str, str, frozenset], dict[int, float]] = {
    ("cosyvoice2", "llm", frozenset()): _QWEN2_LORA_PEAKS,
    ("cosyvoice2", "flow", frozenset()): {400: 1.87, 2000: 9.35},
    ("cosyvoice3", "llm", frozenset()): _QWEN2_LORA_PEAKS,
    ("cosyvoice3", "flow", frozenset()): {400: 2.87, 2000: 8.35},
}

# Per-frame activation growth with these levers / without, LoRA, same run and allocator: slopes
# between 400 and 2000 frames. LLM (both families: the same Qwen2): run D. Flows: run F (lora+ckpt vs
# lora, default allocator), where "ckpt" checkpoints the estimator's blocks (and CosyVoice2's
# conformer encoder layers): CosyVoice2 (4.13-2.23)/(10.48-3.02) = 0.25, CosyVoice3
# (5.70-3.20)/(9.46-3.98) = 0.46. With the default allocator both still count freed memory glibc
# keeps (run F's lora+ckpt+release slopes are 0.08x and 0.05x): on a GPU they are upper bounds.
# autocast's is not measured at 2000 frames on this CPU (bf16 is emulated and 10x slower); 0.6
# assumes half-size activations plus fp32 islands (norms, softmax, loss).
# (Run C's ckpt+skip rows are not used: at 3.38 GiB for both 400 and 2000 frames they show the
# model-building peak, which run C still recorded, not the training step's.)
_LLM_FACTORS = {
    frozenset(): 1.0,
    frozenset({"skip"}): 0.97,
    frozenset({"ckpt"}): 0.54,
    frozenset({"ckpt", "skip"}): 0.44,
}
SLOPE_FACTORS: dict[tuple[str, str], dict[frozenset, float]] = {
    ("cosyvoice2", "llm"): _LLM_FACTORS,
    ("cosyvoice3", "llm"): _LLM_FACTORS,
    ("cosyvoice2", "flow"): {frozenset(): 1.0, frozenset({"ckpt"}): 0.25},
    ("cosyvoice3", "flow"): {frozenset(): 1.0, frozenset({"ckpt"}): 0.46},
}
AMP_SLOPE_FACTOR = 0.6


def _line(points: dict[int, float]) -> ActivationLine:
    """Through the smallest and largest measured frame counts; through the origin for a single point
    (an upper bound on the slope: activations have a positive intercept)."""
    if len(points) == 1:
        (x, y), = points.items()
        return ActivationLine(0.0, max(0.0, y) / x)
    (x0, y0), (x1, y1) = sorted(points.items())[0], sorted(points.items())[-1]
    slope = max(0.0, (y1 - y0) / (x1 - x0)) if x1 != x0 else 0.0
    return ActivationLine(y0 - slope * x0, slope)


def _size(family: str, model: str) -> ModelSize:
    if family not in SIZES_BY_FAMILY:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    return SIZES_BY_FAMILY[family][model]


def _lora_states_gib(family: str, model: str) -> float:
    size = _size(family, model)
    return (size.params + size.lora_trainable) * 4 / GIB + size.lora_trainable * 12 / GIB


ACTIVATIONS: dict[tuple[str, str, frozenset], ActivationLine] = {
    key: _line({f: gib - _lora_states_gib(key[0], key[1]) for f, gib in points.items()})
    for key, points in LORA_PEAKS.items()
}


def _levers(model: str, gradient_checkpointing: bool, autocast: str | bool | None,
            skip_unused_logits: bool) -> frozenset:
    if autocast not in (None, False) and str(autocast).lower() not in AUTOCAST_MODES:
        raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_MODES)}, got {autocast!r}")
    on = set()
    if gradient_checkpointing:
        on.add("ckpt")
    if skip_unused_logits and model == "llm":
        on.add("skip")
    if autocast not in (None, False) and str(autocast).lower() != "off":
        on.add("amp")
    return frozenset(on)


def activation_line(model: str, levers: frozenset, family: str = DEFAULT_FAMILY) -> ActivationLine:
    """The measured line without levers, its slope scaled by what the levers measured."""
    _size(family, model)
    plain = ACTIVATIONS.get((family, model, frozenset()))
    if plain is None:
        raise ValueError(f"no activation measurement for {family} {model}")
    factor = SLOPE_FACTORS[(family, model)].get(frozenset(levers - {"amp"}), 1.0)
    if "amp" in levers:
        factor *= AMP_SLOPE_FACTOR
    return ActivationLine(plain.intercept_gib, plain.gib_per_frame * factor)


def breakdown_gib(model: str, max_frames: float, *, lora: bool, gradient_checkpointing: bool = False,
                  autocast: str | bool | None = "off", skip_unused_logits: bool = False,
                  family: str = DEFAULT_FAMILY) -> dict[str, float]:
    """The estimate's parts: weights, grads, optimizer, activations, update temporaries, context."""
    size = _size(family, model)
    trainable = size.lora_trainable if lora else size.params
    act = activation_line(model, _levers(model, gradient_checkpointing, autocast, skip_unused_logits), family)
    return {
        "weights": size.params * 4 / GIB + (size.lora_trainable * 4 / GIB if lora else 0.0),
        "grads": trainable * 4 / GIB,
        "optimizer": trainable * 8 / GIB,
        "activations": max(0.0, act.at(max(0.0, float(max_frames)))),
        "update_temporaries": 0.0 if lora else size.update_extra_gib,
        "cuda_context": CUDA_CONTEXT_GIB,
    }


def estimate_peak_gib(model: str, max_frames: float, *, lora: bool, gradient_checkpointing: bool = False,
                      autocast: str | bool | None = "off", skip_unused_logits: bool = False,
                      family: str = DEFAULT_FAMILY) -> float:
    """Estimated peak GPU memory (GiB) of one training step at ``max_frames_in_batch = max_frames``.

    ``model``: 'llm' or 'flow'; ``lora``: whether the model has a ``cosyext.<model>`` LoRA section;
    the levers as in ``cosyext.memory`` (``skip_unused_logits`` is ignored for the flow, as the plugin
    does; ``release_cpu_memory`` changes CPU RSS only, so it is not a parameter); ``family``:
    'cosyvoice2' or 'cosyvoice3' (:mod:`cosyvoice_ext.family` names; the flows differ 3x in size).
    """
    b = breakdown_gib(model, max_frames, lora=lora, gradient_checkpointing=gradient_checkpointing,
                      autocast=autocast, skip_unused_logits=skip_unused_logits, family=family)
    activation_peak = b["weights"] + b["optimizer"] + b["activations"] + (b["grads"] if lora else 0.0)
    update_peak = b["weights"] + b["grads"] + b["optimizer"] + b["update_temporaries"]
    return max(activation_peak, update_peak) + b["cuda_context"]


def max_frames_fitting(model: str, budget_gib: float, *, lora: bool, headroom: float = 0.9,
                       gradient_checkpointing: bool = False, autocast: str | bool | None = "off",
                       skip_unused_logits: bool = False, family: str = DEFAULT_FAMILY, limit: int = 100_000) -> int:
    """Largest ``max_frames_in_batch`` (up to ``limit``) whose estimate stays within ``headroom`` of
    the card; 0 if not even an empty batch fits."""
    kw = dict(lora=lora, gradient_checkpointing=gradient_checkpointing, autocast=autocast,
              skip_unused_logits=skip_unused_logits, family=family)
    cap = budget_gib * headroom
    if estimate_peak_gib(model, 0, **kw) > cap:
        return 0
    lo, hi = 0, limit
    if estimate_peak_gib(model, hi, **kw) <= cap:
        return hi
    while hi - lo > 1:  # the estimate is monotone in frames
        mid = (lo + hi) // 2
        if estimate_peak_gib(model, mid, **kw) <= cap:
            lo = mid
        else:
            hi = mid
    return lo
