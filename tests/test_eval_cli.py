"""`cosyext eval` as a user runs it, on wavs synthesised earlier (`--synth-dir`): the table, eval.json
and eval.png; the fine-tuned − base difference and its verdict; metrics that cannot run say why; a
third party's metric installed as a distribution shows up in the table; bad arguments are exit 2."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from cosyvoice_ext import cli
from cosyvoice_ext.eval.audio import Clip, write_wav
from cosyvoice_ext.eval.data import read_list
from cosyvoice_ext.eval.run import wav_name
from cosyvoice_ext.eval.tiny import make_whisper_checkpoint
from tests.helpers import run_cosyext
from tests.test_plugins import fake_distributions

FAST = "sim_campplus,wer,cer"  # resemblyzer and DNSMOS load for seconds: tests/test_eval_real_voices.py


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory):
    """CV data of one speaker, a pretrained dir with campplus, a tiny Whisper, and two 'systems':
    tuned = the speaker's real recordings, base = the same drowned in noise."""
    from cosyvoice_ext.tiny.data import write_parquet_dataset
    from cosyvoice_ext.tiny.standin import make_pretrained_standin

    root = tmp_path_factory.mktemp("eval")
    data = write_parquet_dataset(root / "cv", 7, seed=3, min_sec=1.0, max_sec=2.0)
    pre = make_pretrained_standin(root / "pretrained")
    asr = make_whisper_checkpoint(root / "tiny-whisper.pt")
    rng = np.random.default_rng(0)
    for u in read_list(data)[1:]:  # the first is left out, as a prompt would be
        c = u.clip
        for system, samples in (("tuned", c.samples), ("base", 0.3 * c.samples + rng.normal(0, 0.3, len(c.samples)))):
            (root / "syn" / system).mkdir(parents=True, exist_ok=True)
            write_wav(root / "syn" / system / wav_name(u.utt), Clip(samples.astype(np.float32), c.sample_rate))
    return root, data, pre, asr


def _args(root, data, pre, asr, out, *extra):
    return ["eval", "--synth-dir", str(root / "syn"), "--base", str(pre), "--data", str(data), "-o", str(out),
            "--asr", str(asr), "--bootstrap", "500", *extra]


def test_eval_reports_means_cis_and_the_paired_difference(setup_dir, tmp_path, capsys):
    root, data, pre, asr = setup_dir
    out = tmp_path / "out"
    assert cli.main(_args(root, data, pre, asr, out, "--metrics", FAST)) == 0
    printed = capsys.readouterr()
    result = json.loads((out / "eval.json").read_text())
    sim = result["metrics"]["sim_campplus"]
    assert sim["systems"]["tuned"]["scored"] == sim["systems"]["base"]["scored"] == 6
    base, tuned = sim["systems"]["base"]["estimate"], sim["systems"]["tuned"]["estimate"]
    assert tuned["mean"] > base["mean"] and tuned["ci"][0] <= tuned["mean"] <= tuned["ci"][1]
    assert sim["diff"]["mean"] == pytest.approx(tuned["mean"] - base["mean"]) and sim["diff"]["ci"][0] > 0
    assert sim["verdict"] == "better" and sim["plugin"] == "metrics"
    wer = result["metrics"]["wer"]
    assert wer["unavailable"] is None and wer["diff"]["n"] == 6
    first = result["utterances"][0]
    assert first["tuned"]["details"]["wer"]["reference_normalised"] == first["text"].lower()
    assert result["metrics"]["cer"]["unavailable"].startswith("no Chinese texts among the 6 utterances")
    table = (out / "eval.txt").read_text()
    assert table in printed.out and "not run: cer: no Chinese texts" in table
    assert "SIM campplus (higher better)  6" in table and "better" in table
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[eval] scored 12/12" in printed.err
    # the same OUT again (a re-score) is fine; a directory of someone else's files is not
    assert cli.main(_args(root, data, pre, asr, out, "--metrics", "sim_campplus", "--max-utts", "2")) == 0
    assert json.loads((out / "eval.json").read_text())["metrics"]["sim_campplus"]["diff"]["n"] == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert cli.main(_args(root, data, pre, asr, tmp_path / "mine")) == 2
    assert "holds files that no earlier 'cosyext eval' wrote" in capsys.readouterr().err
    assert (tmp_path / "mine").iterdir().__next__().name == "notes.txt" and len(list((tmp_path / "mine").iterdir())) == 1


def test_missing_wavs_are_counted_and_only_pairs_enter_the_difference(setup_dir, tmp_path, capsys):
    root, data, pre, asr = setup_dir
    syn = tmp_path / "syn"
    utts = [u.utt for u in read_list(data)[1:]]
    for system, keep in (("base", utts[:4]), ("tuned", utts[2:])):
        (syn / system).mkdir(parents=True)
        for u in keep:
            (syn / system / wav_name(u)).write_bytes((root / "syn" / system / wav_name(u)).read_bytes())
    args = _args(root, data, pre, asr, tmp_path / "out", "--metrics", "sim_campplus")
    args[args.index("--synth-dir") + 1] = str(syn)
    assert cli.main(args) == 0
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    sim = result["metrics"]["sim_campplus"]
    assert sim["systems"]["base"]["scored"] == 4 and sim["systems"]["tuned"]["scored"] == 4 and sim["diff"]["n"] == 2
    assert result["utterances"][0]["tuned"]["missing"] is True


@pytest.mark.slow  # builds and installs a distribution: seconds, out of the unit tier
def test_a_third_party_metric_installed_as_a_distribution_is_in_the_table(setup_dir, tmp_path):
    root, data, pre, asr = setup_dir
    plugin = ("1.0", textwrap.dedent("""
        import numpy as np
        from cosyvoice_ext.eval import MetricUnavailable, Score
        from cosyvoice_ext.hookspecs import hookimpl

        class Peak:
            name, label, higher_is_better = "peak", "Peak level", True
            def setup(self, context):
                pass
            def score(self, sample):
                return Score(float(np.abs(sample.clip.samples).max()))

        class Needs:
            name, label, higher_is_better = "needs_gpu", "GPU score", True
            def setup(self, context):
                raise MetricUnavailable("acme-gpu-scorer is not installed")
            def score(self, sample):
                raise AssertionError("never called: setup said it cannot run")

        @hookimpl
        def cosyext_register_metrics(register):
            register(Peak())
            register(Needs())
    """))
    env = fake_distributions(tmp_path, acme=plugin)
    res = run_cosyext(*_args(root, data, pre, asr, tmp_path / "out", "--metrics", "peak,needs_gpu,sim_campplus"), env=env)
    assert res.returncode == 0, res.stderr
    assert "Peak level (higher better)" in res.stdout
    assert "not run: needs_gpu: acme-gpu-scorer is not installed" in res.stdout
    listed = run_cosyext("eval", "--list-metrics", env=env)
    assert "peak  Peak level (higher is better; plugin acme)" in listed.stdout
    assert "wer  WER (lower is better; plugin metrics)" in listed.stdout


@pytest.mark.parametrize("extra, message", [
    (["--metrics", "sim_campplsu"], "no metric named sim_campplsu; did you mean 'sim_campplus'?"),
    (["--speaker", "nobody"], "speaker 'nobody' is not in the data"),
    (["--bootstrap", "5"], "--bootstrap >= 100"),
])
def test_bad_arguments_are_exit_2_with_a_message(setup_dir, tmp_path, extra, message, capsys):
    root, data, pre, asr = setup_dir
    assert cli.main(_args(root, data, pre, asr, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "  next: " in err, err
    assert not (tmp_path / "out" / "eval.json").exists()


def test_eval_needs_something_to_evaluate(setup_dir, tmp_path, capsys):
    root, data, pre, asr = setup_dir
    assert cli.main(["eval", "--base", str(pre), "--data", str(data), "-o", str(tmp_path / "out")]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp_path), "--synth-dir", str(root / "syn"), "--base", str(pre), "--data", str(data)]) == 2
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


class _Recorder:
    """A system as eval drives it: loaded once before its first utterance, closed after its last."""

    def __init__(self, name, calls, gain):
        self.name, self.calls, self.gain = name, calls, gain
        self.info = {"kind": name}

    def load(self):
        self.calls.append(("load", self.name))

    def close(self):
        self.calls.append(("close", self.name))

    def __call__(self, u, seed, prompt):
        self.calls.append(("say", self.name, u.utt, seed, prompt.utt, prompt.wav.is_file()))
        noise = np.random.default_rng(seed).normal(0, 0.1, 16000).astype(np.float32)
        return Clip(self.gain * noise + u.clip.at(16000)[:16000].mean(), 16000)


def test_synthesis_runs_one_system_at_a_time_with_the_same_texts_seeds_and_prompt(setup_dir, tmp_path):
    from cosyvoice_ext.eval.run import Options, evaluate

    root, data, pre, asr = setup_dir
    calls = []
    systems = {"base": _Recorder("base", calls, 1.0), "tuned": _Recorder("tuned", calls, 0.5)}
    out = tmp_path / "out"
    result = evaluate(Options(data=data, out=out, pretrained=pre, seed=7, max_utts=3, metrics=["sim_campplus"],
                              resamples=200), systems)
    prompt = result["prompt"]["utt"]
    said = [c for c in calls if c[0] == "say"]
    utts = [u["utt"] for u in result["utterances"]]
    assert [c[0] for c in calls] == ["load"] + ["say"] * 3 + ["close", "load"] + ["say"] * 3 + ["close"]
    assert [c[1:4] for c in said] == [(s, u, 7 + i) for s in ("base", "tuned") for i, u in enumerate(utts)]
    assert all(c[4] == prompt and c[5] for c in said) and prompt not in utts
    assert (out / "wavs" / "prompt" / wav_name(prompt)).is_file()
    for u in result["utterances"]:
        assert u["base"]["seed"] == u["tuned"]["seed"] == u["seed"]
        assert Clip.load(u["tuned"]["wav"]).sample_rate == 16000
    assert result["systems"]["tuned"]["kind"] == "tuned" and result["systems"]["base"]["audio_seconds"] == 3.0


def test_synthesis_needs_a_complete_pretrained_dir_as_base(setup_dir, tmp_path, capsys):
    root, data, pre, asr = setup_dir  # pre: campplus and a tokenizer only, no model
    assert cli.main(["eval", str(root), "--base", str(pre), "--data", str(data), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--base" in err and "is not a CosyVoice2 or CosyVoice3 model dir" in err and "next:" in err, err
    assert not (tmp_path / "out").exists()
