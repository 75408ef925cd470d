"""The measured memory model lint uses for --gpu-memory: consistent with its own measurements and sane."""

from __future__ import annotations

import pytest

from cosyvoice_ext import family as families
from cosyvoice_ext.memory import model as mm


def test_reproduces_the_measured_lora_peaks():
    assert mm.LORA_PEAKS, "the model needs measurements (BENCHMARKS.md)"
    for (fam, model, levers), points in mm.LORA_PEAKS.items():
        kw = {"gradient_checkpointing": "ckpt" in levers, "skip_unused_logits": "skip" in levers,
              "autocast": "bf16" if "amp" in levers else "off"}
        for frames, gib in points.items():
            est = mm.estimate_peak_gib(model, frames, lora=True, family=fam, **kw)
            assert est == pytest.approx(gib + mm.CUDA_CONTEXT_GIB, abs=0.05), (fam, model, levers, frames)


def test_every_family_and_model_is_measured():
    """The family names are cosyvoice_ext.family's; each (family, model) has sizes, a LoRA line and factors."""
    assert set(mm.FAMILIES) == set(families.FAMILIES)
    for fam in mm.FAMILIES:
        for model in mm.MODELS:
            assert (fam, model, frozenset()) in mm.LORA_PEAKS and (fam, model) in mm.SLOPE_FACTORS
            assert 0 < mm.SIZES_BY_FAMILY[fam][model].lora_trainable < mm.SIZES_BY_FAMILY[fam][model].params


@pytest.mark.parametrize("frames, measured", [(400, 8.61), (2000, 9.39)])
def test_full_fine_tune_matches_its_measurements(frames, measured):
    """Full fine-tune = LoRA's activations + full gradients and Adam state (BENCHMARKS.md run C).

    Only the update temporaries come from the 400-frame point; at 2000 frames it is a prediction."""
    est = mm.estimate_peak_gib("llm", frames, lora=False) - mm.CUDA_CONTEXT_GIB
    assert est == pytest.approx(measured, rel=0.1)


@pytest.mark.parametrize("fam", mm.FAMILIES)
@pytest.mark.parametrize("model", mm.MODELS)
def test_grows_with_frames_and_lora_is_smaller(model, fam):
    for lora in (False, True):
        a, b = (mm.estimate_peak_gib(model, f, lora=lora, family=fam) for f in (400, 2000))
        assert 0 < a <= b
    assert mm.estimate_peak_gib(model, 400, lora=True, family=fam) < \
        mm.estimate_peak_gib(model, 400, lora=False, family=fam)


def test_the_default_family_is_cosyvoice2():
    for model in mm.MODELS:
        assert mm.estimate_peak_gib(model, 2000, lora=True) == \
            mm.estimate_peak_gib(model, 2000, lora=True, family="cosyvoice2")


def test_cosyvoice3_flow_is_the_bigger_model():
    """The DiT flow has ~3x the CosyVoice2 flow's parameters: its full fine-tune needs more at any size."""
    for frames in (0, 400, 2000):
        assert mm.estimate_peak_gib("flow", frames, lora=False, family="cosyvoice3") > \
            mm.estimate_peak_gib("flow", frames, lora=False, family="cosyvoice2")


@pytest.mark.parametrize("fam", mm.FAMILIES)
def test_levers_never_cost_memory(fam):
    for model in mm.MODELS:
        plain = mm.estimate_peak_gib(model, 2000, lora=True, family=fam)
        for kw in ({"gradient_checkpointing": True}, {"skip_unused_logits": True}, {"autocast": "bf16"},
                   {"gradient_checkpointing": True, "skip_unused_logits": True}):
            assert mm.estimate_peak_gib(model, 2000, lora=True, family=fam, **kw) <= plain + 1e-9, (model, kw)


@pytest.mark.parametrize("fam", mm.FAMILIES)
def test_checkpointing_applies_to_the_flow_and_skip_logits_does_not(fam):
    plain = mm.estimate_peak_gib("flow", 2000, lora=True, family=fam)
    assert mm.estimate_peak_gib("flow", 2000, lora=True, family=fam, gradient_checkpointing=True) < plain
    assert mm.estimate_peak_gib("flow", 2000, lora=True, family=fam, skip_unused_logits=True) == plain


@pytest.mark.parametrize("model, lora", [("llm", False), ("llm", True), ("flow", True)])
@pytest.mark.parametrize("budget", [8.0, 16.0, 24.0])
@pytest.mark.parametrize("fam", mm.FAMILIES)
def test_max_frames_fitting_is_the_inverse(model, lora, budget, fam):
    fit = mm.max_frames_fitting(model, budget, lora=lora, headroom=0.9, family=fam)
    if fit == 0:
        assert mm.estimate_peak_gib(model, 0, lora=lora, family=fam) > 0.9 * budget
        return
    assert mm.estimate_peak_gib(model, fit, lora=lora, family=fam) <= 0.9 * budget + 1e-9
    assert mm.estimate_peak_gib(model, fit + 1, lora=lora, family=fam) > 0.9 * budget


def test_full_llm_fine_tune_does_not_fit_a_small_card():
    assert mm.max_frames_fitting("llm", 8, lora=False) == 0
    assert mm.max_frames_fitting("llm", 16, lora=True) > mm.max_frames_fitting("llm", 16, lora=False)


@pytest.mark.parametrize("call", [
    lambda: mm.estimate_peak_gib("hift", 400, lora=False),
    lambda: mm.estimate_peak_gib("llm", 400, lora=True, autocast="fp8"),
    lambda: mm.estimate_peak_gib("flow", 400, lora=True, family="cosyvoice4"),
    lambda: mm.max_frames_fitting("flow", 16, lora=True, family="CosyVoice3"),
])
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()
