"""The measured memory model lint uses for --gpu-memory: consistent with its own measurements and sane."""

from __future__ import annotations

import pytest

from cosyvoice_ext.memory import model as mm


def test_reproduces_the_measured_lora_peaks():
    assert mm.LORA_PEAKS, "the model needs measurements (BENCHMARKS.md)"
    for (model, levers), points in mm.LORA_PEAKS.items():
        kw = {"gradient_checkpointing": "ckpt" in levers, "skip_unused_logits": "skip" in levers,
              "autocast": "bf16" if "amp" in levers else "off"}
        for frames, gib in points.items():
            est = mm.estimate_peak_gib(model, frames, lora=True, **kw)
            assert est == pytest.approx(gib + mm.CUDA_CONTEXT_GIB, abs=0.05), (model, levers, frames)


@pytest.mark.parametrize("frames, measured", [(400, 8.61), (2000, 9.39)])
def test_full_fine_tune_matches_its_measurements(frames, measured):
    """Full fine-tune = LoRA's activations + full gradients and Adam state (BENCHMARKS.md run C).

    Only the update temporaries come from the 400-frame point; at 2000 frames it is a prediction."""
    est = mm.estimate_peak_gib("llm", frames, lora=False) - mm.CUDA_CONTEXT_GIB
    assert est == pytest.approx(measured, rel=0.1)


@pytest.mark.parametrize("model", ["llm", "flow"])
def test_grows_with_frames_and_lora_is_smaller(model):
    for lora in (False, True):
        a, b = (mm.estimate_peak_gib(model, f, lora=lora) for f in (400, 2000))
        assert 0 < a <= b
    assert mm.estimate_peak_gib(model, 400, lora=True) < mm.estimate_peak_gib(model, 400, lora=False)


def test_llm_levers_never_cost_memory_and_are_ignored_for_flow():
    plain = mm.estimate_peak_gib("llm", 2000, lora=True)
    for kw in ({"gradient_checkpointing": True}, {"skip_unused_logits": True},
               {"gradient_checkpointing": True, "skip_unused_logits": True}):
        assert mm.estimate_peak_gib("llm", 2000, lora=True, **kw) <= plain + 1e-9, kw
    assert mm.estimate_peak_gib("flow", 2000, lora=True, gradient_checkpointing=True, skip_unused_logits=True) == \
        mm.estimate_peak_gib("flow", 2000, lora=True)


@pytest.mark.parametrize("model, lora", [("llm", False), ("llm", True), ("flow", True)])
@pytest.mark.parametrize("budget", [8.0, 16.0, 24.0])
def test_max_frames_fitting_is_the_inverse(model, lora, budget):
    fit = mm.max_frames_fitting(model, budget, lora=lora, headroom=0.9)
    if fit == 0:
        assert mm.estimate_peak_gib(model, 0, lora=lora) > 0.9 * budget
        return
    assert mm.estimate_peak_gib(model, fit, lora=lora) <= 0.9 * budget + 1e-9
    assert mm.estimate_peak_gib(model, fit + 1, lora=lora) > 0.9 * budget


def test_full_llm_fine_tune_does_not_fit_a_small_card():
    assert mm.max_frames_fitting("llm", 8, lora=False) == 0
    assert mm.max_frames_fitting("llm", 16, lora=True) > mm.max_frames_fitting("llm", 16, lora=False)


@pytest.mark.parametrize("call", [
    lambda: mm.estimate_peak_gib("hift", 400, lora=False),
    lambda: mm.estimate_peak_gib("llm", 400, lora=True, autocast="fp8"),
])
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()
