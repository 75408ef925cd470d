"""The scorers with shipped weights on real speech (issue 11, item 5): the upstream bundle's
`asset/*.wav` are two real speakers (zero_shot_prompt.wav, 3.5 s; cross_lingual_prompt.wav, 13.7 s).
Similarity of identical audio is 1, two halves of one recording score high, two different voices
clearly lower; DNSMOS rates real speech far above white noise. Models load once for the module."""

from __future__ import annotations

import numpy as np
import pytest

from cosyvoice_ext.eval import Clip, Context, MetricUnavailable, Sample
from cosyvoice_ext.eval.mos import Dnsmos
from cosyvoice_ext.eval.speaker import ResemblyzerSimilarity, cosine

RATE = 16000


@pytest.fixture(scope="module")
def voices(upstream_at) -> dict[str, Clip]:
    asset = upstream_at("ace7c47", patched=False) / "asset"
    zero, cross = Clip.load(asset / "zero_shot_prompt.wav"), Clip.load(asset / "cross_lingual_prompt.wav")
    half = len(cross.samples) // 2
    return {"zero": zero, "cross": cross, "cross_a": Clip(cross.samples[:half], cross.sample_rate),
            "cross_b": Clip(cross.samples[half:], cross.sample_rate),
            "noise": Clip(np.random.default_rng(0).uniform(-0.5, 0.5, 5 * RATE).astype(np.float32), RATE)}


@pytest.fixture(scope="module")
def context() -> Context:
    return Context()


def _sample(clip: Clip) -> Sample:
    return Sample("u", "text", "en", "tuned", clip)


def test_resemblyzer_same_voice_high_different_voices_clearly_lower(voices, context):
    m = ResemblyzerSimilarity()
    context.references = [voices["cross_a"]]
    m.setup(context)
    e = m.embed
    assert m.score(_sample(voices["cross_a"])).value == pytest.approx(1.0, abs=1e-5)  # identical audio
    same = cosine(e(voices["cross_a"]), e(voices["cross_b"]))  # two halves of one recording
    different = cosine(e(voices["zero"]), e(voices["cross"]))
    noise = cosine(e(voices["zero"]), e(voices["noise"]))
    assert same > 0.85 and different < 0.75 and same - different > 0.2, (same, different)
    assert noise < different + 0.05, (noise, different)
    # a 1.7 s half of the 3.5 s prompt keeps less than 1.6 s of speech: not scored, and says so
    short = Clip(voices["zero"].samples[: len(voices["zero"].samples) // 2], voices["zero"].sample_rate)
    with pytest.raises(MetricUnavailable, match="less than the 1.6 s of speech"):
        m.score(_sample(short))


def test_dnsmos_real_speech_far_above_white_noise(voices, context):
    m = Dnsmos()
    m.setup(context)
    real = [m.score(_sample(voices[k])) for k in ("zero", "cross")]
    noise = m.score(_sample(voices["noise"]))
    assert all(r.value > 3.0 for r in real) and noise.value < 1.5, ([r.value for r in real], noise.value)
    assert set(noise.detail) == {"sig", "bak", "p808"}
    with pytest.raises(MetricUnavailable, match="less than the 1 s of audio DNSMOS"):
        m.score(_sample(Clip(voices["zero"].samples[:8000], voices["zero"].sample_rate)))
