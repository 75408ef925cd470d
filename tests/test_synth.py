"""`cosyext synth` with upstream's real CosyVoice2 and CosyVoice3 classes on tiny model dirs.

The audio of a tiny random model is noise, but every path is upstream's: the class from the verified
tree, its front end, its LLM thread, its flow and HiFT. All the ace7c47 work (CosyVoice2 and
CosyVoice3 in one tree) runs in ONE child process (tests/synth_probe.py): the tiny dirs are built,
a real torchrun LoRA run of the CosyVoice3 flow trains in the background while the CosyVoice2
command lines run, then the run is exported (--serve) and compared with the same adapter applied in
memory. The 2025 pin (CosyVoice2, prompt as a 16 kHz tensor) is covered by test_lora_e2e.py's
export --serve test, which synthesises from its exported dir the same way.

The unit tests at the top check the refusals, which all happen before upstream is imported.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cosyvoice_ext.cli import main
from tests.conftest import MAIN
from tests.synth_probe import cli, run_probe

#: both families: 25 speech tokens per second at 24 kHz
SAMPLES_PER_TOKEN = 960
#: upstream's llm.inference default: at most 20 speech tokens per text token
MAX_TOKEN_TEXT_RATIO = 20
#: merged (export --serve) vs unmerged (adapter in memory), same seed: max abs sample difference allowed
#: (float wavs). Measured 1.0e-7 for the CosyVoice3 flow LoRA here (the adapter itself moves samples by
#: 4.6e-3, peak 0.06) and 9.3e-8 for CosyVoice2 llm+flow at 44316c34 (test_lora_e2e.py: the same speech
#: tokens). What is left is float summation order: x@A@B added to W@x vs (W + B@A)@x.
MERGE_TOLERANCE = 1e-5
TEXT = "hello world"
CV3_LORA = "cosyext:\n  flow: {r: 4, alpha: 8, dropout: 0.0}\n"


# ---- unit tier: refusals before upstream is imported ------------------------------------------------

@pytest.fixture
def fake_dir(tmp_path) -> Path:
    """A directory with every file name a CosyVoice2 model dir needs (contents only as far as the checks read)."""
    d = tmp_path / "model"
    (d / "CosyVoice-BlankEN").mkdir(parents=True)
    (d / "cosyvoice2.yaml").write_text("sample_rate: 24000\nhift: !new:cosyvoice.hifigan.generator.HiFTGenerator\n")
    for name in ("llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v2.onnx"):
        (d / name).write_bytes(b"x")
    torch.save({"alice": {"embedding": torch.zeros(1, 192)}, "bob": {"embedding": torch.ones(1, 192)}},
               d / "spk2info.pt")
    return d


def synth(capsys, *args: str) -> tuple[int, str]:
    rc = main(["synth", *args])
    return rc, capsys.readouterr().err


def test_refusals_exit_2_with_a_hint_before_anything_is_loaded(fake_dir, tmp_path, capsys):
    out = tmp_path / "out.wav"
    up = ["--upstream", str(tmp_path / "no-such-tree")]  # never reached: each refusal comes first
    cases = [
        (["--model-dir", str(tmp_path / "missing")], "does not exist"),
        (["--model-dir", str(fake_dir), "--speaker", "carol"], "speaker 'carol' is not registered"),
        (["--model-dir", str(fake_dir)], "no single or default speaker (it registers 2: alice, bob)"),
        (["--model-dir", str(fake_dir), "--speaker", "alice", "--llm", str(tmp_path)], "apply to --pretrained"),
        (["--model-dir", str(fake_dir), "--prompt-wav", str(tmp_path / "p.wav")], "needs both --prompt-wav"),
        (["--model-dir", str(fake_dir), "--speaker", "alice", "--prompt-text", "hi"], "two voices"),
        (["--pretrained", str(fake_dir), "--speaker", "alice", "--flow", str(tmp_path / "nope")], "does not exist"),
    ]
    for args, message in cases:
        rc, err = synth(capsys, *args, "--text", TEXT, "-o", str(out), *up)
        assert rc == 2 and message in err and "next: " in err, (args, err)
        assert "Traceback" not in err
    rc, err = synth(capsys, "--model-dir", str(fake_dir), "--speaker", "alice", "--text", TEXT,
                    "-o", str(fake_dir / "x.wav"), *up)
    assert rc == 2 and "would write into the model dir" in err and not (fake_dir / "x.wav").exists()
    out.write_bytes(b"keep")
    rc, err = synth(capsys, "--model-dir", str(fake_dir), "--speaker", "alice", "--text", TEXT, "-o", str(out), *up)
    assert rc == 2 and "exists; synth does not overwrite without --force" in err and out.read_bytes() == b"keep"
    # past every check of the inputs and outputs, the upstream tree is the next thing looked at
    rc, err = synth(capsys, "--model-dir", str(fake_dir), "--speaker", "alice", "--text", TEXT,
                    "-o", str(tmp_path / "new.wav"), *up)
    assert rc == 2 and "upstream directory" in err and not (tmp_path / "new.wav").exists()


def test_a_training_config_without_a_vocoder_is_refused(fake_dir, tmp_path, capsys):
    (fake_dir / "cosyvoice2.yaml").write_text("sample_rate: 24000\nhift: null\n")
    rc, err = synth(capsys, "--model-dir", str(fake_dir), "--speaker", "alice", "--text", TEXT,
                    "-o", str(tmp_path / "o.wav"))
    assert rc == 2 and "hift: null" in err and "No valid model type found" in err


def test_text_file_lines_are_checked_before_loading(fake_dir, tmp_path, capsys):
    lines = tmp_path / "lines.txt"
    for text, message in [("a\tone\na\ttwo\n", "lines.txt:2: ID 'a' repeats line 1"),
                          ("../x\tone\n", "cannot be a file name"), ("x\t \n", "has no text after the tab"),
                          ("\n  \n", "holds no text")]:
        lines.write_text(text)
        rc, err = synth(capsys, "--model-dir", str(fake_dir), "--speaker", "alice", "--text-file", str(lines),
                        "-o", str(tmp_path / "out"))
        assert rc == 2 and message in err, (text, err)
    lines.write_text("one\nb\ttwo\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "b.wav").write_bytes(b"keep")
    rc, err = synth(capsys, "--model-dir", str(fake_dir), "--speaker", "alice", "--text-file", str(lines),
                    "-o", str(tmp_path / "out"))
    assert rc == 2 and "b.wav exists" in err


# ---- upstream: one probe process at ace7c47 -------------------------------------------------------------

@pytest.fixture(scope="module")
def ace(upstream_at, tmp_path_factory) -> dict:
    tree = upstream_at(MAIN)
    w = tmp_path_factory.mktemp("synth_ace")
    cv2, cv3, out = w / "cv2", w / "cv3", w / "out"
    run, serve, prompt, lines = w / "cv3train", w / "serve" / "cv3_voice", w / "prompt.wav", w / "lines.txt"
    out.mkdir()
    lines.write_text(f"{TEXT}\nu2\tgood day\n")
    up = ["--upstream", tree]

    def say(step, model, *args):
        return cli(step, "synth", "--model-dir", model, "--text", TEXT, "-o", out / f"{step}.wav", *up, *args)

    actions = [
        {"do": "build", "dest": str(cv2), "family": "cosyvoice2"},
        {"do": "build", "dest": str(cv3), "family": "cosyvoice3"},
        {"do": "prompt", "dest": str(prompt), "seconds": 1.0},
        {"do": "train_start", "name": "cv3_flow", "pre": str(cv3), "root": str(run), "model": "flow",
         "extra": CV3_LORA, "lr": 0.05},
        {"do": "tokens", "id": "cv2_tokens", "qwen": str(cv2 / "CosyVoice-BlankEN"), "text": TEXT},
        {"do": "tokens", "id": "cv3_tokens", "qwen": str(cv3 / "CosyVoice-BlankEN"),
         "text": "You are a helpful assistant.<|endofprompt|>" + TEXT},
        say("cv2_a", cv2, "--seed", 0), say("cv2_b", cv2, "--seed", 0), say("cv2_c", cv2, "--seed", 1),
        say("cv2_sa", cv2, "--seed", 0, "--stream"), say("cv2_sb", cv2, "--seed", 0, "--stream"),
        say("cv2_sc", cv2, "--seed", 1, "--stream"),
        say("cv2_zs", cv2, "--prompt-wav", prompt, "--prompt-text", "希望你以后"),
        say("cv2_tf", cv2, "--text-frontend", "--format", "float"),
        cli("cv2_file", "synth", "--model-dir", cv2, "--text-file", lines, "-o", out / "file", *up),
        {"do": "train_wait", "name": "cv3_flow"},
        # float wavs: the comparisons below see the model's samples, not their 16-bit rounding
        cli("cv3_base", "synth", "--pretrained", cv3, "--text", TEXT, "-o", out / "cv3_base.wav", "--format", "float",
            *up),
        cli("cv3_unmerged", "synth", "--pretrained", cv3, "--flow", run / "exp", "--text", TEXT,
            "-o", out / "cv3_unmerged.wav", "--format", "float", *up),
        cli("cv3_export", "export", "--model", "flow", "--run", run / "exp", "--config", run / "train.yaml",
            "--qwen-pretrain-path", cv3 / "CosyVoice-BlankEN", "--upstream", tree, "--serve", cv3,
            "--speaker-data", run / "data" / "train" / "data.list", "--speaker-name", "my_voice", "-o", serve),
        say("cv3_merged", serve, "--speaker", "tiny_speaker", "--format", "float"),
        # no --speaker: speaker_config.json's default_speaker (export --serve made it my_voice)
        say("cv3_registered", serve, "--stream"),
        say("cv3_zs", cv3, "--prompt-wav", prompt, "--prompt-text", "希望你以后"),
    ]
    result = run_probe({"tree": str(tree), "actions": actions}, w)
    print("\nprobe seconds:", result["seconds"])
    return {"result": result, "tree": tree, "out": out, "cv2": cv2, "cv3": cv3, "serve": serve, "run": run,
            "lines": lines}


def ok(ace: dict, step: str) -> dict:
    got = ace["result"]["steps"][step]
    assert got["rc"] == 0, f"{step}: exit {got['rc']}\n{got['stderr'][-3000:]}"
    return got


def wav(ace: dict, step: str) -> tuple[np.ndarray, int, str]:
    import soundfile

    ok(ace, step)
    info = soundfile.info(str(ace["out"] / f"{step}.wav"))
    audio, sr = soundfile.read(str(ace["out"] / f"{step}.wav"), dtype="float32")
    return audio, sr, info.subtype


def model_rate(model_dir: Path) -> int:
    yaml = next(model_dir.glob("cosyvoice*.yaml")).read_text()
    return int(re.search(r"^sample_rate: (\d+)", yaml, re.M).group(1))


@pytest.mark.slow
@pytest.mark.parametrize("step, family", [("cv2_a", "cv2"), ("cv2_sa", "cv2"), ("cv2_zs", "cv2"),
                                          ("cv3_base", "cv3"), ("cv3_registered", "cv3"), ("cv3_zs", "cv3")])
def test_wavs_at_the_models_rate_with_a_plausible_length(ace, step, family):
    audio, sr, subtype = wav(ace, step)
    tokens = ace["result"]["steps"][f"{family}_tokens"]["tokens"]
    bound = MAX_TOKEN_TEXT_RATIO * tokens * SAMPLES_PER_TOKEN
    assert sr == model_rate(ace[family]) == 24000 and subtype == ("FLOAT" if step == "cv3_base" else "PCM_16")
    assert 0 < len(audio) <= bound, (len(audio), bound)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert f"at {sr} Hz" in ok(ace, step)["stdout"]


@pytest.mark.slow
def test_the_same_seed_gives_the_same_samples_offline_and_streaming(ace):
    a, b, c = (wav(ace, s)[0] for s in ("cv2_a", "cv2_b", "cv2_c"))
    sa, sb, sc = (wav(ace, s)[0] for s in ("cv2_sa", "cv2_sb", "cv2_sc"))
    assert np.array_equal(a, b) and np.array_equal(sa, sb)
    assert not np.array_equal(a, c) and not np.array_equal(sa, sc)


@pytest.mark.slow
def test_a_text_file_gives_one_wav_per_line_with_a_progress_bar(ace):
    import soundfile

    got = ok(ace, "cv2_file")
    files = sorted(p.name for p in (ace["out"] / "file").iterdir())
    assert files == ["0001.wav", "u2.wav"]
    assert "synth: 100%" in got["stderr"] and "2/2" in got["stderr"]
    # every line uses --seed: the line 'hello world' is the wav of --text 'hello world'
    line, _ = soundfile.read(str(ace["out"] / "file" / "0001.wav"), dtype="float32")
    assert np.array_equal(line, wav(ace, "cv2_a")[0])


@pytest.mark.slow
def test_registered_speaker_and_zero_shot_prompt_are_different_voices(ace):
    a, zs = wav(ace, "cv2_a")[0], wav(ace, "cv2_zs")[0]
    assert "zero-shot prompt" in ok(ace, "cv2_zs")["stderr"]
    assert "registered speaker 'tiny_speaker'" in ok(ace, "cv2_a")["stderr"]
    n = min(len(a), len(zs))
    assert len(a) != len(zs) or not np.allclose(a[:n], zs[:n], atol=1e-3)


@pytest.mark.slow
def test_text_frontend_on_runs_offline_and_writes_float(ace):
    audio, _, subtype = wav(ace, "cv2_tf")
    assert subtype == "FLOAT" and len(audio) > 0


@pytest.mark.slow
def test_nothing_touched_the_network(ace):
    result = ace["result"]
    assert result["connects"] == [] and result["downloads"] == []
    assert Path(result["module"]).resolve().is_relative_to(ace["tree"].resolve())


@pytest.mark.slow
def test_adapters_change_the_output_and_merged_equals_unmerged(ace):
    """A real torchrun LoRA run of the CosyVoice3 flow: applied in memory it changes the audio; exported
    (--serve, merged) it gives the same audio as in memory, for the same seed."""
    train = ace["result"]["trains"]["cv3_flow"]
    assert train["rc"] == 0, train["log"]
    base, unmerged, merged = (wav(ace, s)[0] for s in ("cv3_base", "cv3_unmerged", "cv3_merged"))
    assert "flow: LoRA r=4 adapter" in ok(ace, "cv3_unmerged")["stderr"]
    assert len(base) == len(unmerged)  # the llm is untouched: the same tokens
    change = float(np.abs(base - unmerged).max())
    assert len(merged) == len(unmerged)
    diff = float(np.abs(merged - unmerged).max())
    print(f"\nCosyVoice3 flow LoRA: audio max |x| {np.abs(base).max():.3g}; base vs adapter max |diff| "
          f"{change:.3g}; merged vs unmerged {diff:.3g}")
    assert diff <= MERGE_TOLERANCE and change > 10 * MERGE_TOLERANCE


@pytest.mark.slow
def test_export_serve_cosyvoice3_loads_in_upstreams_class_and_speaks_as_the_registered_speaker(ace):
    exported = ok(ace, "cv3_export")
    assert f"serve with: CosyVoice3('{ace['serve']}')" in exported["stdout"]
    spoke = ok(ace, "cv3_registered")
    assert f"CosyVoice3('{ace['serve'].resolve()}') from upstream" in spoke["stderr"]
    assert "registered speaker 'my_voice'" in spoke["stderr"]
    spk2info = torch.load(ace["serve"] / "spk2info.pt", weights_only=True)
    assert set(spk2info) == {"tiny_speaker", "my_voice"}
    assert not (ace["serve"] / "flow.pt").is_symlink() and (ace["serve"] / "hift.pt").is_symlink()
    assert len(wav(ace, "cv3_registered")[0]) > 0
