"""A deliberately rough GPU-memory model for one training step, used by rule CX106.

Peak GiB = fixed cost (weights, gradients, optimizer state) + per-frame activation cost, linear in
the frames of the largest batch (``max_frames_in_batch`` for dynamic batching). The coefficients
are fitted to two measured points per setting (DESIGN.md §10, CosyVoice2-0.5B LLM, fp32):
full fine-tune 10.9 GiB @ 400 frames, 13.5 @ 2000; LoRA r16 5.0 @ 400, 14.7 @ 2000 (LoRA keeps
more activations: dropout copies each targeted layer's input). Flow numbers are an estimate scaled
from its ~0.1B parameters. Good to a factor of ~1.5; the performance work refines it.
"""

from __future__ import annotations

# (fixed GiB, GiB per frame)
COEFFS: dict[tuple[str, bool], tuple[float, float]] = {
    ("llm", False): (10.25, 0.0016),
    ("llm", True): (2.6, 0.0061),
    ("flow", False): (2.5, 0.0040),
    ("flow", True): (1.0, 0.0045),
}


def estimate_gib(model: str, frames: float, lora: bool) -> float | None:
    c = COEFFS.get((model, lora))
    if c is None:
        return None
    return c[0] + c[1] * frames


def max_frames_fitting(model: str, gib: float, lora: bool, headroom: float = 0.9) -> int | None:
    """Largest ``max_frames_in_batch`` whose estimate stays under ``headroom`` of the card."""
    c = COEFFS.get((model, lora))
    if c is None:
        return None
    return max(0, int((gib * headroom - c[0]) / c[1]))
