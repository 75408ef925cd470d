"""Eval metrics against known values (issue 11, item 5): WER/CER of given strings normalised as
Seed-TTS-eval does, bootstrap CIs that cover the true mean, speaker similarity of identical audio,
campplus computed as upstream's front end does, DNSMOS of noise, a tiny real Whisper, and the
`cosyext_register_metrics` hook a third party adds a metric through. resemblyzer and DNSMOS, on real
speech, are in tests/test_eval_real_voices.py (the upstream bundle's audio; their models load for
seconds, which the unit tier cannot afford)."""

from __future__ import annotations

import numpy as np
import pytest

from cosyvoice_ext import plugins
from cosyvoice_ext.errors import PluginError, UsageError
from cosyvoice_ext.eval import Clip, Context, MetricUnavailable, Sample, Score
from cosyvoice_ext.eval import bootstrap, metric, normalize, score
from cosyvoice_ext.eval.asr import ErrorRate, load_whisper
from cosyvoice_ext.eval.speaker import CampplusSimilarity
from cosyvoice_ext.eval.tiny import make_whisper_checkpoint
from cosyvoice_ext.hookspecs import hookimpl

RATE = 16000


def _sample(clip: Clip, text: str = "hello world", utt: str = "u1", system: str = "tuned") -> Sample:
    return Sample(utt, text, normalize.detect_language(text), system, clip)


def _tone(seconds: float, freq: float = 220.0, rate: int = RATE, seed: int = 0) -> Clip:
    """A voiced-sounding signal (a harmonic-rich, vibrato, syllable-rate-modulated buzz) that a VAD keeps."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(freq * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))) / rate
    buzz = sum(np.sin(k * phase) / k for k in range(1, 30))
    noise = np.random.default_rng(seed).normal(0, 0.003, len(t))
    return Clip((0.1 * buzz * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) + noise).astype(np.float32), rate)


# --- WER / CER exactly as Seed-TTS-eval computes them ------------------------------------------------

@pytest.mark.parametrize("ref, hyp, lang, expect", [
    ("Hello, world!", "hello world", "en", 0.0),                  # punctuation and case do not count
    ("The cat sat.", "the cat sat down", "en", 1 / 3),             # one insertion over three words
    ("The cat sat.", "a cat", "en", 2 / 3),                        # a substitution and a deletion
    ("Don't stop", "dont stop", "en", 0.5),                        # the apostrophe is kept, as in run_wer.py
    ("Well -- fine; OK?", "well fine ok", "en", 0.0),
    ("你好，世界。", "你好世界", "zh", 0.0),                          # full-width punctuation stripped, per character
    ("今天天气很好！", "今天天气真好", "zh", 1 / 6),                   # CER: one character of six
    ("我们“出发”吧", "我 们 出 发", "zh", 1 / 5),                     # spaces in the hypothesis do not count
    ("The cat sat.", "", "en", 1.0),                               # nothing recognised: every word deleted
])
def test_error_rates_of_given_strings(ref, hyp, lang, expect):
    assert normalize.error_rate(ref, hyp, lang) == pytest.approx(expect)


def test_normalisation_matches_seed_tts_eval():
    assert normalize.normalize("Hello,  World! It's   me.", "en") == "hello world it's me"
    assert normalize.normalize("你好，世界。", "zh") == "你 好 世 界"
    assert normalize.normalize("《书》", "zh") == "《 书"  # zhon's set (and so Seed-TTS-eval) strips 》 but not 《
    with pytest.raises(ValueError, match="empty after removing punctuation"):
        normalize.error_rate("?!", "anything", "en")


def test_language_decides_wer_or_cer():
    assert normalize.detect_language("Hello there") == "en"
    assert normalize.detect_language("hello 你好") == "zh"
    assert normalize.detect_language("Ça va, très bien") == "en"


# --- bootstrap: coverage in simulation ---------------------------------------------------------------

def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    true_mean, n, sims = 0.3, 40, 400
    hits = 0
    for _ in range(sims):
        x = rng.gamma(2.0, true_mean / 2.0, size=n)  # skewed like per-utterance WER
        est = bootstrap.mean_ci(x, resamples=1000, rng=rng)
        hits += est.low <= true_mean <= est.high
    coverage = hits / sims
    # percentile bootstrap undercovers slightly at n=40; the binomial SE over 400 runs is ~1.1 points
    assert 0.90 <= coverage <= 0.985, coverage


def test_paired_difference_covers_the_true_difference_and_is_tighter_than_unpaired():
    rng = np.random.default_rng(2)
    hits, widths_paired, widths_unpaired = 0, [], []
    for _ in range(300):
        difficulty = rng.normal(0.5, 0.2, size=30)  # the same texts for both systems
        a = difficulty + rng.normal(0, 0.05, size=30)
        b = difficulty + 0.03 + rng.normal(0, 0.05, size=30)
        d = bootstrap.paired_diff_ci(a, b, resamples=1000, rng=rng)
        hits += d.low <= 0.03 <= d.high
        widths_paired.append(d.high - d.low)
        ea, eb = bootstrap.mean_ci(a, resamples=1000, rng=rng), bootstrap.mean_ci(b, resamples=1000, rng=rng)
        widths_unpaired.append(np.hypot(ea.high - ea.low, eb.high - eb.low))
    assert 0.90 <= hits / 300 <= 0.985
    assert np.median(widths_paired) < 0.5 * np.median(widths_unpaired)


def test_bootstrap_edges():
    assert bootstrap.mean_ci([0.7]).to_json() == {"mean": 0.7, "ci": [0.7, 0.7], "n": 1, "level": 0.95}
    assert bootstrap.mean_ci([1, 2, 3, 4], rng=5) == bootstrap.mean_ci([1, 2, 3, 4], rng=5)
    with pytest.raises(ValueError):
        bootstrap.mean_ci([])
    with pytest.raises(ValueError):
        bootstrap.paired_diff_ci([1, 2], [1])
    assert score.verdict(0.01, 0.05, True, 10) == "better" and score.verdict(0.01, 0.05, False, 10) == "worse"
    assert score.verdict(-0.01, 0.05, True, 10) == "no clear difference"


# --- speaker similarity ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from cosyvoice_ext.tiny.standin import make_pretrained_standin

    return make_pretrained_standin(tmp_path_factory.mktemp("pretrained"))


def test_campplus_similarity_of_identical_audio_is_one_and_matches_upstreams_front_end(pretrained):
    from cosyvoice_ext.prepare.audio import Decoded
    from cosyvoice_ext.prepare.features import OnnxFeatures

    ref, other = _tone(3.0, 220), _tone(3.0, 330, rate=24000, seed=1)
    m = CampplusSimilarity()
    m.setup(Context(references=[ref], pretrained=pretrained))
    assert m.score(_sample(ref)).value == pytest.approx(1.0, abs=1e-6)
    assert m.score(_sample(other)).value < 0.999
    # the embedding is prepare's (upstream's tools/extract_embedding.py and front end: 16 kHz fbank minus mean)
    prepared, _ = OnnxFeatures(pretrained).extract(Decoded(other.samples, other.sample_rate))
    np.testing.assert_allclose(m.embed(other), prepared, rtol=1e-4, atol=1e-5)


def test_campplus_says_why_it_cannot_run(pretrained, tmp_path):
    m = CampplusSimilarity()
    with pytest.raises(MetricUnavailable, match="no pretrained directory"):
        m.setup(Context(references=[_tone(2)]))
    with pytest.raises(MetricUnavailable, match="campplus.onnx does not exist"):
        m.setup(Context(references=[_tone(2)], pretrained=tmp_path))
    with pytest.raises(MetricUnavailable, match="no real recordings"):
        m.setup(Context(pretrained=pretrained))
    m.setup(Context(references=[_tone(2)], pretrained=pretrained))
    with pytest.raises(MetricUnavailable, match="less than the 0.5 s of audio sim_campplus needs"):
        m.score(_sample(_tone(0.3)))


# --- WER/CER with a tiny real Whisper ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    return make_whisper_checkpoint(tmp_path_factory.mktemp("asr") / "tiny-whisper.pt")


def test_a_tiny_whisper_checkpoint_transcribes_and_is_scored(tiny_whisper):
    ctx = Context(asr=str(tiny_whisper), texts=[("the cat sat", "en"), ("你好", "zh")])
    wer, cer = ErrorRate("wer", "en"), ErrorRate("cer", "zh")
    wer.setup(ctx)
    cer.setup(ctx)
    assert wer.model is cer.model, "one Whisper for both"
    s = wer.score(_sample(_tone(2.0), "The cat sat."))
    assert isinstance(s.detail["transcript"], str) and s.value >= 0
    assert s.value == pytest.approx(normalize.error_rate("The cat sat.", s.detail["transcript"], "en"))
    assert s.detail["reference_normalised"] == "the cat sat"
    with pytest.raises(MetricUnavailable, match="Chinese text"):
        wer.score(_sample(_tone(2.0), "你好"))
    assert 0 <= cer.score(_sample(_tone(2.0), "你好")).value


def test_the_same_seed_gives_the_same_finite_tiny_whisper(tiny_whisper, tmp_path):
    """Every tensor is seeded: the text decoder's positional embedding, which openai-whisper leaves as
    torch.empty allocated it, used to hold leftover memory (1e25, NaN logits) that differed run to run."""
    import torch

    again = torch.load(make_whisper_checkpoint(tmp_path / "again.pt"), weights_only=True)["model_state_dict"]
    first = torch.load(tiny_whisper, weights_only=True)["model_state_dict"]
    assert first.keys() == again.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, again[name]), name
        assert torch.isfinite(tensor).all() and tensor.abs().max() < 100, name


def test_wer_and_cer_say_why_they_do_not_run(tiny_whisper, tmp_path):
    with pytest.raises(MetricUnavailable, match="no ASR model: pass --asr"):
        ErrorRate("wer", "en").setup(Context(texts=[("hi", "en")]))
    with pytest.raises(MetricUnavailable, match="no Chinese texts among the 1 utterances"):
        ErrorRate("cer", "zh").setup(Context(asr=str(tiny_whisper), texts=[("hi", "en")]))
    with pytest.raises(UsageError, match="neither a file nor a Whisper model name"):
        load_whisper(str(tmp_path / "missing.pt"))
    with pytest.raises(UsageError, match="is a directory"):
        load_whisper(str(tmp_path))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="not an openai-whisper checkpoint"):
        load_whisper(str(tmp_path / "junk.pt"))


# --- metrics are plugins: cosyext_register_metrics ----------------------------------------------------

class Loudness:
    """A third party's metric: RMS level in dBFS."""

    name, label, higher_is_better = "loudness", "Loudness dBFS", True

    def setup(self, context):
        pass

    def score(self, sample):
        rms = float(np.sqrt(np.mean(sample.clip.samples ** 2)))
        if rms == 0:
            raise MetricUnavailable("silent clip")
        return Score(20 * np.log10(rms), {"rms": rms})


def _plugin(*metrics, name="acme"):
    class Plugin:
        @hookimpl
        def cosyext_register_metrics(self, register):
            for m in metrics:
                register(m)

    Plugin.__name__ = name
    return Plugin()


def test_a_third_party_metric_is_registered_beside_the_builtins():
    pm = plugins.new_manager(autoload=False)
    pm.register(_plugin(Loudness()), name="acme")
    found = metric.collect(pm)
    assert {"sim_campplus", "sim_resemblyzer", "wer", "cer", "dnsmos"} <= set(found)
    assert found["loudness"].plugin == "acme" and found["wer"].plugin == "metrics"
    assert list(metric.select(found, ["loudness", "wer"])) == ["loudness", "wer"]
    with pytest.raises(UsageError, match="no metric named loudnes; did you mean 'loudness'"):
        metric.select(found, ["loudnes"])


def test_bad_metric_registrations_are_named():
    pm = plugins.new_manager(autoload=False)
    pm.register(_plugin(Loudness()), name="acme")
    pm.register(_plugin(Loudness(), name="fork"), name="fork")
    with pytest.raises(PluginError, match="metric 'loudness' is registered by two plugins: 'acme' and 'fork'"):
        metric.collect(pm)
    pm.unregister(name="fork")
    bad = Loudness()
    bad.name = "Loud Ness"
    pm.register(_plugin(bad, name="bad"), name="bad")
    with pytest.raises(PluginError, match="plugin 'bad' registered a metric named 'Loud Ness'"):
        metric.collect(pm)


def test_a_crashing_or_unavailable_metric_is_reported_not_dropped():
    class Flaky(Loudness):
        name = "flaky"

        def score(self, sample):
            raise ZeroDivisionError("oops")

    class Absent(Loudness):
        name = "absent"

        def setup(self, context):
            raise MetricUnavailable("acme-scorer is not installed")

    regs = {m.name: metric.Registered(m, "acme") for m in (Loudness(), Flaky(), Absent())}
    runs = score.setup(regs, Context(), lambda s: None)
    silent = Clip(np.zeros(RATE, np.float32), RATE)
    samples = [_sample(_tone(1.0), utt="u1", system="base"), _sample(silent, utt="u2", system="base"),
               _sample(_tone(1.0, 300), utt="u1"), _sample(_tone(1.0, 300), utt="u2")]
    score.score_all(runs, samples, lambda s: None)
    out = score.summarise(runs, ["u1", "u2"], resamples=200)
    assert out["absent"]["unavailable"] == "acme-scorer is not installed"
    assert out["flaky"]["unavailable"].startswith("crashed in score() of base/u1 (plugin 'acme'): ZeroDivisionError")
    loud = out["loudness"]
    assert loud["systems"]["base"]["scored"] == 1 and loud["systems"]["base"]["skipped"] == {"silent clip": 1}
    assert loud["diff"]["n"] == 1, "the difference is paired: only u1 was scored in both systems"
