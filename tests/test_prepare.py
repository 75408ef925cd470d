"""`cosyext prepare` end to end on generated recordings, with tiny ONNX stand-ins of campplus and
the speech tokenizers built in the test (same names, dtypes and shapes as the pretrained files),
for CosyVoice2 and CosyVoice3 data; the token/audio alignment is checked against upstream's own
data pipeline at ace7c47."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from cosyvoice_ext import family
from cosyvoice_ext.cli import main
from cosyvoice_ext.errors import UsageError
from cosyvoice_ext.prepare import PrepareOptions, align, prepare
from cosyvoice_ext.prepare import pipeline as pipeline_mod
from cosyvoice_ext.tiny.standin import V3_TOKEN_OFFSET, make_pretrained_standin
from cosyvoice_ext.tiny.data import wav_bytes, write_recordings
from cosyvoice_ext.tiny.qwen import LEXICON

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

COLUMNS = ["utt", "wav", "audio_data", "text", "spk", "utt_embedding", "spk_embedding", "speech_token"]
# file -> reason substring in the report
BAD = {
    "spkA/short.wav": "too short",
    "spkA/junk.wav": "unreadable audio",
    "spkA/silent_text.wav": "empty transcript",
    "spkA/notext.wav": "missing transcript",
    "spkA/orphan.txt": "transcript without a .wav",
    "spkA/narrowband.wav": "below 16000 Hz",
    "spkB/zero.wav": "empty (0 bytes)",
}


def _tone(seconds: float, rate: int, freq: float, channels: int = 1) -> bytes:
    """A gliding tone (so fbank and mel change over time), PCM16 WAV."""
    t = np.arange(int(seconds * rate)) / rate
    audio = 0.4 * np.sin(2 * np.pi * (freq + 150 * t) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    if channels == 1:
        return wav_bytes(audio, rate)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = np.stack([audio, 0.5 * audio], axis=1)
        w.writeframes((frames * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def make_recordings(root: Path, n_a: int = 6, n_b: int = 3) -> dict[str, str]:
    """Two speakers' folders of wav + txt/lab pairs plus one file for every way an input can be bad;
    returns the expected {utt: text} of the good ones."""
    good = {}
    for spk, n, rate in (("spkA", n_a, 24000), ("spkB", n_b, 22050)):
        (root / spk).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"{spk.lower()}_{i:02d}"
            words = [LEXICON[(i * 3 + k) % len(LEXICON)] for k in range(2 + i % 3)]
            (root / spk / f"{stem}.wav").write_bytes(_tone(1.0 + 0.25 * i, rate, 150 + 40 * i + 300 * (spk == "spkB")))
            suffix = ".lab" if spk == "spkB" else ".txt"
            (root / spk / f"{stem}{suffix}").write_text("  ".join(words) + "\n", encoding="utf-8")
            good[f"{spk}_{stem}"] = " ".join(words)
    # 44.1 kHz stereo: resampled to 16 kHz for features and averaged to mono
    (root / "spkB" / "stereo.wav").write_bytes(_tone(1.5, 44100, 330, channels=2))
    (root / "spkB" / "stereo.txt").write_text("ba do", encoding="utf-8")
    good["spkB_stereo"] = "ba do"
    a = root / "spkA"
    (a / "short.wav").write_bytes(_tone(0.1, 24000, 200))
    (a / "short.txt").write_text("ba")
    (a / "junk.wav").write_bytes(b"RIFF\x00\x00this is not audio")
    (a / "junk.txt").write_text("ba")
    (a / "silent_text.wav").write_bytes(_tone(1.0, 24000, 200))
    (a / "silent_text.txt").write_text("  \n")
    (a / "notext.wav").write_bytes(_tone(1.0, 24000, 200))
    (a / "orphan.txt").write_text("ba")
    (a / "narrowband.wav").write_bytes(_tone(1.0, 8000, 200))
    (a / "narrowband.txt").write_text("ba")
    (root / "spkB" / "zero.wav").write_bytes(b"")
    (root / "spkB" / "zero.txt").write_text("ba")
    return good


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    return make_pretrained_standin(tmp_path_factory.mktemp("pretrained"))


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("recordings") / "voice"
    return root, make_recordings(root)


@pytest.fixture(scope="module")
def prepared(recordings, pretrained, tmp_path_factory):
    src, good = recordings
    dest = tmp_path_factory.mktemp("prepared") / "data"
    res = prepare(PrepareOptions(src=src, dest=dest, pretrained=pretrained, cv_ratio=0.25, shard_size=3, seed=1,
                                 progress=False))
    return dest, res, good


def _rows(data_list: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for line in data_list.read_text().split() for r in pq.read_table(line).to_pylist()]


def _expected_features(pretrained: Path, wav: Path,
                       tokenizer: str = "speech_tokenizer_v2.onnx") -> tuple[np.ndarray, list[int]]:
    """Upstream's extract_embedding.py / extract_speech_token.py recipe, written out independently."""
    import onnxruntime
    import soundfile
    import torch
    import torchaudio
    import torchaudio.compliance.kaldi as kaldi
    import whisper

    data, rate = soundfile.read(str(wav), dtype="float32", always_2d=True)
    audio = torch.from_numpy(data.T.copy()).mean(dim=0, keepdim=True)
    if rate != 16000:
        audio = torchaudio.transforms.Resample(orig_freq=rate, new_freq=16000)(audio)
    feat = kaldi.fbank(audio, num_mel_bins=80, dither=0, sample_frequency=16000)
    feat = feat - feat.mean(dim=0, keepdim=True)
    camp = onnxruntime.InferenceSession(str(pretrained / "campplus.onnx"), providers=["CPUExecutionProvider"])
    emb = camp.run(None, {camp.get_inputs()[0].name: feat.unsqueeze(0).numpy()})[0].flatten()
    mel = whisper.log_mel_spectrogram(audio, n_mels=128)
    tok = onnxruntime.InferenceSession(str(pretrained / tokenizer), providers=["CPUExecutionProvider"])
    ins = tok.get_inputs()
    tokens = tok.run(None, {ins[0].name: mel.numpy(), ins[1].name: np.array([mel.shape[2]], dtype=np.int32)})[0]
    return emb, tokens.flatten().tolist()


def _decode(data: bytes) -> tuple[np.ndarray, int, str]:
    """(frames x channels float64, rate, subtype) as libsndfile reads them."""
    import soundfile

    with soundfile.SoundFile(io.BytesIO(data)) as f:
        return f.read(dtype="float64", always_2d=True), f.samplerate, f.subtype


def _samples_24k(data: bytes) -> int:
    """How long upstream's `resample` step makes this audio: torchaudio's Resample run for real."""
    import torch
    import torchaudio

    audio, rate, _ = _decode(data)
    mono = torch.from_numpy(audio.mean(axis=1)).float().unsqueeze(0)
    return mono.shape[1] if rate == 24000 else torchaudio.transforms.Resample(rate, 24000)(mono).shape[1]


def _assert_stored_audio_is_the_source_cut_to_whole_tokens(row: dict) -> None:
    """The alignment invariant (tokens == ceil(samples_24k / 960)); audio_data is the source file's bytes,
    or a WAV of the source's first frames (same rate, channels, encoding and sample values) cut by less
    than two tokens."""
    source = Path(row["wav"]).read_bytes()
    n_tokens = len(row["speech_token"])
    assert n_tokens == math.ceil(_samples_24k(row["audio_data"]) / 960), row["utt"]
    if row["audio_data"] == source:
        return
    stored, rate, subtype = _decode(row["audio_data"])
    original, src_rate, src_subtype = _decode(source)
    assert (rate, subtype, stored.shape[1]) == (src_rate, src_subtype, original.shape[1])
    assert 0 < len(original) - len(stored) < 2 * rate * 960 / 24000, "cut by less than two tokens"
    assert np.array_equal(stored, original[:len(stored)]), "the stored audio is the source's first frames, exactly"


# --- output format ----------------------------------------------------------------------------

def test_standin_models_have_the_pretrained_signatures(pretrained):
    import onnxruntime

    camp = onnxruntime.InferenceSession(str(pretrained / "campplus.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = camp.get_inputs(), camp.get_outputs()
    assert (inp.type, inp.shape[2], out.shape[1]) == ("tensor(float)", 80, 192)
    tok = onnxruntime.InferenceSession(str(pretrained / "speech_tokenizer_v2.onnx"),
                                       providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in tok.get_inputs()] == [("feats", "tensor(float)"),
                                                             ("feats_length", "tensor(int32)")]
    assert tok.get_inputs()[0].shape[:2] == [1, 128]
    feats = np.random.default_rng(0).normal(size=(1, 128, 200)).astype(np.float32)
    (tokens,) = tok.run(None, {"feats": feats, "feats_length": np.array([200], dtype=np.int32)})
    assert tokens.shape == (1, 50) and tokens.dtype.kind == "i"  # 100 mel frames/s -> 25 tokens/s


def test_shards_have_upstream_columns_and_side_files(prepared, recordings):
    import pyarrow.parquet as pq

    dest, res, good = prepared
    src = recordings[0]
    train, cv = _rows(res.train_list), _rows(res.cv_list)
    assert sorted(r["utt"] for r in train + cv) == sorted(good)
    assert not {r["utt"] for r in train} & {r["utt"] for r in cv}
    assert res.utts == {"train": len(train), "cv": len(cv)} and len(cv) == round(len(good) * 0.25)
    assert [r["utt"] for r in train] == sorted(r["utt"] for r in train), "shards list utterances in id order"
    for set_name, rows in (("train", train), ("cv", cv)):
        set_dir = dest / set_name
        shard_files = set_dir.joinpath("data.list").read_text().split()
        assert len(shard_files) == -(-len(rows) // 3) == res.shards[set_name]
        assert pq.read_schema(shard_files[0]).names == COLUMNS
        utt_jsons = set_dir.joinpath("utt2data.list").read_text().split()
        spk_jsons = set_dir.joinpath("spk2data.list").read_text().split()
        assert len(utt_jsons) == len(spk_jsons) == len(shard_files)
        for shard, uj, sj in zip(shard_files, utt_jsons, spk_jsons):
            in_shard = pq.read_table(shard, columns=["utt", "spk"]).to_pylist()
            assert json.loads(Path(uj).read_text()) == {r["utt"]: shard for r in in_shard}
            assert json.loads(Path(sj).read_text()) == {s: shard for s in sorted({r["spk"] for r in in_shard})}
    kept = [r["audio_data"] == Path(r["wav"]).read_bytes() for r in train + cv]
    assert any(kept) and not all(kept), "the set has files already at whole tokens and files that need a cut"
    for r in train + cv:
        assert r["text"] == good[r["utt"]]
        assert r["spk"] == r["utt"].split("_")[0]
        assert Path(r["wav"]).is_absolute() and Path(r["wav"]).is_relative_to(src)
        _assert_stored_audio_is_the_source_cut_to_whole_tokens(r)
        assert len(r["utt_embedding"]) == len(r["spk_embedding"]) == 192
        with wave.open(io.BytesIO(r["audio_data"])) as w:
            seconds = w.getnframes() / w.getframerate()
        assert abs(len(r["speech_token"]) - 25 * seconds) <= 1.5, "25 speech tokens per second"
    assert list(dest.joinpath("prepare_summary.json").read_text()) and not list(dest.rglob(".*.tmp"))


def test_speaker_embedding_is_the_mean_of_its_utterances(prepared):
    dest, res, _ = prepared
    rows = _rows(res.train_list) + _rows(res.cv_list)
    for spk in ("spkA", "spkB"):
        mine = [r for r in rows if r["spk"] == spk]
        mean = np.mean([r["utt_embedding"] for r in mine], axis=0)
        assert all(np.allclose(r["spk_embedding"], mean, atol=1e-6) for r in mine)
        assert np.abs(mean).max() > 0
    a = next(r for r in rows if r["spk"] == "spkA")["spk_embedding"]
    b = next(r for r in rows if r["spk"] == "spkB")["spk_embedding"]
    assert not np.allclose(a, b)


def test_features_follow_upstreams_extraction_recipe(prepared, pretrained):
    _, res, _ = prepared
    rows = {r["utt"]: r for r in _rows(res.train_list) + _rows(res.cv_list)}
    for utt in ("spkA_spka_01", "spkB_stereo"):  # 24 kHz mono; 44.1 kHz stereo
        emb, tokens = _expected_features(pretrained, Path(rows[utt]["wav"]))
        assert np.allclose(rows[utt]["utt_embedding"], emb, rtol=1e-5, atol=1e-6)
        assert rows[utt]["speech_token"] == tokens  # the stand-in never gives surplus tokens: none dropped
    assert rows["spkA_spka_00"]["speech_token"] != rows["spkA_spka_03"]["speech_token"]
    assert res.family == "cosyvoice2" and res.family_source == "detected from " + str(pretrained /
                                                                                       "speech_tokenizer_v2.onnx")
    assert res.speech_tokenizer == "speech_tokenizer_v2.onnx" and res.instruct is None


def test_bad_files_are_reported_with_reasons_and_skipped(prepared, recordings):
    dest, res, _ = prepared
    src = recordings[0]
    lines = dest.joinpath("prepare_report.tsv").read_text().splitlines()
    assert lines[0] == "utt\tpath\treason"
    by_path = {Path(line.split("\t")[1]): line.split("\t")[2] for line in lines[1:]}
    assert set(by_path) == {src / p for p in BAD}
    for rel, why in BAD.items():
        assert why in by_path[src / rel], (rel, by_path[src / rel])
    assert len(res.skipped) == len(BAD)


def test_split_is_deterministic_by_seed():
    ids = [f"u{i:03d}" for i in range(40)]
    train, cv = pipeline_mod.split(ids, 0.1, seed=5)
    assert (train, cv) == pipeline_mod.split(list(reversed(ids)), 0.1, seed=5)
    assert len(cv) == 4 and sorted(train + cv) == ids and cv == sorted(cv)
    assert pipeline_mod.split(ids, 0.1, seed=6)[1] != cv
    assert pipeline_mod.split(ids[:3], 0.01, seed=0)[1] != [], "a cv set is never silently empty"
    assert pipeline_mod.split(ids[:3], 0.0, seed=0)[1] == []


# --- command line -----------------------------------------------------------------------------

def test_without_pretrained_exits_2_with_the_command_to_run(recordings, tmp_path, capsys):
    src, _ = recordings
    assert main(["prepare", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--pretrained" in err and "speech_token" in err and "--no-features" in err
    assert not (tmp_path / "out").exists()
    assert main(["prepare", str(src), str(tmp_path / "o2"), "--pretrained", str(tmp_path)]) == 2
    assert "campplus.onnx" in capsys.readouterr().err


def test_no_features_writes_zeros_and_warns(recordings, tmp_path, capsys):
    src, good = recordings
    assert main(["prepare", str(src), str(tmp_path / "out"), "--no-features", "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "cannot train" in cap.err and "train:" in cap.out
    for rel, why in BAD.items():
        assert f"skipped {src / rel}: " in cap.err and why in cap.err
    rows = _rows(tmp_path / "out" / "train" / "data.list") + _rows(tmp_path / "out" / "cv" / "data.list")
    assert len(rows) == len(good)
    assert all(r["speech_token"] == [] and not any(r["utt_embedding"]) and not any(r["spk_embedding"]) for r in rows)


def test_bad_options_and_empty_source(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["prepare", str(tmp_path / "empty"), str(tmp_path / "o"), "--no-features"]) == 2
    assert "no .wav files" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "empty"), str(tmp_path / "o"), "--no-features", "--cv-ratio", "1"]) == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"nope")
    (tmp_path / "bad" / "x.txt").write_text("ba")
    assert main(["prepare", str(tmp_path / "bad"), str(tmp_path / "o3"), "--no-features", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "no usable utterances" in err and "unreadable audio" in err
    assert "x.wav" in (tmp_path / "o3" / "prepare_report.tsv").read_text()


# --- resume -----------------------------------------------------------------------------------

def _tree(dest: Path) -> dict[str, bytes]:
    """Every output file, with DEST's own path replaced so two destinations compare equal."""
    return {str(p.relative_to(dest)): p.read_bytes().replace(str(dest).encode(), b"<DEST>")
            for p in sorted(dest.rglob("*")) if p.is_file() and ".cosyext-prepare" not in p.parts}


def test_interrupted_run_resumes_to_identical_output(recordings, pretrained, tmp_path, monkeypatch):
    src, _ = recordings
    opts = dict(src=src, pretrained=pretrained, cv_ratio=0.2, shard_size=2, seed=3, progress=False)
    clean = prepare(PrepareOptions(dest=tmp_path / "clean", **opts))

    dest = tmp_path / "resumed"
    from cosyvoice_ext.prepare.features import OnnxFeatures

    real_extract, calls = OnnxFeatures.extract, []

    def dies_on_fourth(self, audio):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_extract(self, audio)

    monkeypatch.setattr(OnnxFeatures, "extract", dies_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareOptions(dest=dest, **opts))
    monkeypatch.setattr(OnnxFeatures, "extract", real_extract)
    assert not (dest / "train" / "data.list").exists()

    with pytest.raises(Exception, match="earlier 'cosyext prepare' run"):
        prepare(PrepareOptions(dest=dest, **opts))  # no --resume: refuse to touch it

    import pyarrow.parquet as pq

    real_write, calls = pq.write_table, []

    def dies_mid_second_shard(table, where, *a, **kw):  # a kill while pyarrow is writing shard 2
        calls.append(where)
        if len(calls) == 2:
            Path(where).write_bytes(b"PAR1 half a shard")
            raise KeyboardInterrupt
        return real_write(table, where, *a, **kw)

    monkeypatch.setattr(pq, "write_table", dies_mid_second_shard)
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareOptions(dest=dest, resume=True, **opts))
    monkeypatch.setattr(pq, "write_table", real_write)
    shard_files = sorted(dest.rglob("parquet_*.parquet"))
    assert len(shard_files) == 1, "exactly the one finished shard is in place"

    res = prepare(PrepareOptions(dest=dest, resume=True, **opts))
    assert res.features_computed == 0 and res.features_reused == clean.features_computed
    assert res.shards_reused == 1 and res.shards_written == sum(clean.shards.values()) - 1
    assert _tree(dest) == _tree(tmp_path / "clean")
    again = prepare(PrepareOptions(dest=dest, resume=True, **opts))
    assert again.shards_written == 0 and again.features_computed == 0


def test_ctrl_c_prints_the_command_that_resumes(recordings, pretrained, tmp_path, monkeypatch, capsys):
    import shlex

    from cosyvoice_ext.prepare.features import OnnxFeatures

    src, good = recordings
    real_extract = OnnxFeatures.extract

    def interrupted(self, audio):
        raise KeyboardInterrupt

    monkeypatch.setattr(OnnxFeatures, "extract", interrupted)
    argv = ["prepare", str(src), str(tmp_path / "out"), "--pretrained", str(pretrained), "--seed", "7",
            "--cv-ratio", "0.3", "--no-progress"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err
    command = shlex.split(err.strip().splitlines()[-1])
    assert command[:2] == ["cosyext", "prepare"] and command[-1] == "--resume"
    assert command[command.index("--seed") + 1] == "7" and command[command.index("--cv-ratio") + 1] == "0.3"
    monkeypatch.setattr(OnnxFeatures, "extract", real_extract)
    assert main(argv) == 2, "a second plain run refuses to touch the interrupted DEST"
    assert "--resume" in capsys.readouterr().err
    assert main(command[1:] + ["--no-progress"]) == 0
    assert "cv:" in capsys.readouterr().out
    assert len(_rows(tmp_path / "out" / "train" / "data.list") + _rows(tmp_path / "out" / "cv" / "data.list")) == \
        len(good)


def test_resume_rewrites_shards_whose_inputs_changed(recordings, pretrained, tmp_path):
    src = tmp_path / "src"
    import shutil

    shutil.copytree(recordings[0], src)
    opts = dict(src=src, pretrained=pretrained, cv_ratio=0.0, shard_size=4, seed=0, progress=False)
    first = prepare(PrepareOptions(dest=tmp_path / "d", **opts))
    (src / "spkB" / "spkb_00.lab").write_text("do re mi")  # text of one utterance in the 3rd train shard
    for p in ("spkB/spkb_01.wav", "spkB/spkb_01.lab", "spkB/spkb_02.wav", "spkB/spkb_02.lab", "spkB/stereo.wav",
              "spkB/stereo.txt"):
        (src / p).unlink()
    res = prepare(PrepareOptions(dest=tmp_path / "d", resume=True, **opts))
    assert first.shards["train"] == 3 and res.shards["train"] == 2
    assert res.shards_reused == 1 and res.shards_written == 1
    assert not (tmp_path / "d" / "train" / "parquet" / "parquet_000000002.parquet").exists()
    rows = _rows(res.train_list)
    assert {r["utt"]: r["text"] for r in rows}["spkB_spkb_00"] == "do re mi"
    assert len(rows) == 7


# --- Kaldi layout -----------------------------------------------------------------------------

def test_kaldi_dir(recordings, pretrained, tmp_path, monkeypatch):
    src, good = recordings
    kd = tmp_path / "kaldi"
    kd.mkdir()
    monkeypatch.chdir(src)
    wavs = sorted((src / "spkA").glob("spka_0[0-3].wav"))
    scp = [f"k{i} spkA/{w.name}" for i, w in enumerate(wavs)]  # relative to the recipe root (cwd)
    scp += ["k9 sox in.wav -t wav - |", "k8 /nowhere/x.wav", f"k7 {src / 'spkA' / 'junk.wav'}"]
    (kd / "wav.scp").write_text("\n".join(scp) + "\n")
    (kd / "text").write_text("k0 ba  do\nk1 ki\nk2\nk3 mi\nk7 ba\nk8 ba\nk9 ba\nk5 lost\n")
    (kd / "spk2utt").write_text("alice k0 k1 k2 k7 k8 k9\n")
    res = prepare(PrepareOptions(src=kd, dest=tmp_path / "out", pretrained=pretrained, cv_ratio=0.0, progress=False))
    rows = _rows(res.train_list)
    assert [(r["utt"], r["text"], r["spk"]) for r in rows] == [("k0", "ba do", "alice"), ("k1", "ki", "alice")]
    reasons = {p.utt: p.reason for p in res.skipped}
    assert reasons["k2"] == "empty transcript"
    assert "no speaker" in reasons["k3"]
    assert "pipe commands" in reasons["k9"]
    assert reasons["k8"] == "audio file not found"
    assert "unreadable" in reasons["k7"]
    assert "not in wav.scp" in reasons["k5"]


# --- alignment -------------------------------------------------------------------------------

def test_resampled_length_is_torchaudios_own():
    import torch
    import torchaudio

    # 600122 frames at 44.1 kHz: exactly 326597.007 at 24 kHz; torchaudio's float32 ceil gives 326597
    for rate, frames in ((44100, 600122), (44100, 66150), (22050, 33075), (16000, 16001), (48000, 47999)):
        real = torchaudio.transforms.Resample(rate, 24000)(torch.zeros(1, frames)).shape[1]
        assert align.resampled_length(frames, rate) == real, (rate, frames)
    assert align.resampled_length(600122, 44100) == 326597 != math.ceil(600122 * 80 / 147)
    assert align.resampled_length(12345, 24000) == 12345


def test_alignment_plan_cuts_audio_or_drops_surplus_tokens():
    plan = align.plan(30000, 24000, list(range(31)))  # 31.25 tokens of audio, 31 tokens
    assert (plan.frames, len(plan.tokens), plan.cut) == (31 * 960, 31, True)
    plan = align.plan(30000, 24000, list(range(33)))  # one surplus token: it describes no audio
    assert (plan.frames, plan.tokens, plan.cut) == (30000, list(range(32)), False)
    plan = align.plan(24000, 24000, list(range(25)))
    assert (plan.frames, plan.cut) == (24000, False)
    for rate in (16000, 22050, 44100, 48000):
        for tokens in (25, 26, 80):
            frames = align.plan(tokens * rate // 25 + rate // 100, rate, list(range(tokens))).frames
            assert math.ceil(align.resampled_length(frames, rate) / 960) == tokens
            assert align.resampled_length(frames + 1, rate) > tokens * 960, "the longest such cut"
    with pytest.raises(align.Misaligned, match="returned 10 tokens for 2.00 s of audio; upstream's flow needs 50"):
        align.plan(48000, 24000, list(range(10)))


# --- CosyVoice3 ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained3(tmp_path_factory) -> Path:
    """A CosyVoice3 stand-in dir, detectable as a real one is: by its cosyvoice3.yaml."""
    return make_pretrained_standin(tmp_path_factory.mktemp("pretrained3"), family="cosyvoice3",
                                   config_text="# stand-in: prepare reads only the name\n")


@pytest.fixture(scope="module")
def recordings3(tmp_path_factory) -> Path:
    """Speech-like audio of whole tokens (24 kHz; 22.05 kHz, resampled upstream) and tones of any length
    (24 kHz mono, 44.1 kHz stereo) that need a cut."""
    root = tmp_path_factory.mktemp("recordings3")
    write_recordings(root, 5, seed=3, min_sec=1.2, max_sec=2.5, speaker="ana")
    write_recordings(root, 3, seed=4, min_sec=1.2, max_sec=2.5, sample_rate=22050, speaker="ben")
    (root / "cid").mkdir()
    for name, tone in (("odd", _tone(1.37, 24000, 220)), ("wide", _tone(1.61, 44100, 260, channels=2))):
        (root / "cid" / f"{name}.wav").write_bytes(tone)
        (root / "cid" / f"{name}.txt").write_text("ba do ki", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def prepared3(recordings3, pretrained3, tmp_path_factory):
    dest = tmp_path_factory.mktemp("prepared3") / "data"
    res = prepare(PrepareOptions(src=recordings3, dest=dest, pretrained=pretrained3, cv_ratio=0.25, shard_size=3,
                                 progress=False))
    return dest, res


def test_cosyvoice3_data_has_instruct_and_v3_tokens(prepared3, pretrained3, recordings3):
    import pyarrow.parquet as pq

    dest, res = prepared3
    assert (res.family, res.family_source) == ("cosyvoice3", f"detected from {pretrained3 / 'cosyvoice3.yaml'}")
    assert res.speech_tokenizer == "speech_tokenizer_v3.onnx"
    assert res.instruct == family.COSYVOICE3.default_instruct == "You are a helpful assistant.<|endofprompt|>"
    rows = _rows(res.train_list) + _rows(res.cv_list)
    assert len(rows) == 10 and res.utts == {"train": 8, "cv": 2}
    for shard in (dest / "train" / "data.list").read_text().split():
        assert pq.read_schema(shard).names == COLUMNS + ["instruct"]
    for r in rows:
        assert r["instruct"] == res.instruct
        assert min(r["speech_token"]) >= V3_TOKEN_OFFSET, "tokens come from speech_tokenizer_v3.onnx"
        emb, tokens = _expected_features(pretrained3, Path(r["wav"]), "speech_tokenizer_v3.onnx")
        assert np.allclose(r["utt_embedding"], emb, rtol=1e-5, atol=1e-6) and r["speech_token"] == tokens
        _assert_stored_audio_is_the_source_cut_to_whole_tokens(r)
    summary = json.loads((dest / "prepare_summary.json").read_text())
    assert {k: summary[k] for k in ("family", "instruct", "speech_tokenizer")} == {
        "family": "cosyvoice3", "instruct": res.instruct, "speech_tokenizer": "speech_tokenizer_v3.onnx"}
    assert summary["alignment"]["samples_per_token"] == 960 and summary["alignment"]["audio_cut"] == res.audio_cut > 0


def test_family_is_detected_from_the_tokenizer_when_the_dir_has_no_yaml(recordings3, tmp_path, capsys):
    bare = make_pretrained_standin(tmp_path / "bare3", family="cosyvoice3")
    assert not list(bare.glob("*.yaml"))
    assert main(["prepare", str(recordings3), str(tmp_path / "out"), "--pretrained", str(bare), "--no-progress",
                 "--cv-ratio", "0"]) == 0
    out = capsys.readouterr().out
    assert f"family: cosyvoice3 (detected from {bare / 'speech_tokenizer_v3.onnx'}); " \
           "speech tokens: speech_tokenizer_v3.onnx; instruct: 'You are a helpful assistant.<|endofprompt|>'" in out
    assert "aligned to whole tokens: audio cut in" in out
    assert {r["instruct"] for r in _rows(tmp_path / "out" / "train" / "data.list")} == {
        family.COSYVOICE3.default_instruct}


def test_explicit_family_and_instruct(recordings3, pretrained3, pretrained, tmp_path, capsys):
    instruct = "You are a helpful assistant. Speak slowly.<|endofprompt|>"
    assert main(["prepare", str(recordings3), str(tmp_path / "a"), "--pretrained", str(pretrained3), "--family",
                 "cosyvoice3", "--instruct", instruct, "--no-progress"]) == 0
    assert "family: cosyvoice3 (--family)" in capsys.readouterr().out
    assert {r["instruct"] for r in _rows(tmp_path / "a" / "train" / "data.list")} == {instruct}
    # without features: no tokenizer, but still the family's columns
    res = prepare(PrepareOptions(src=recordings3, dest=tmp_path / "b", no_features=True, family="cosyvoice3",
                                 cv_ratio=0, progress=False))
    assert (res.family, res.family_source, res.speech_tokenizer) == ("cosyvoice3", "--family", "")
    assert all(r["instruct"] == res.instruct and r["speech_token"] == [] for r in _rows(res.train_list))
    # CosyVoice2 stays as it was: no instruct column
    res = prepare(PrepareOptions(src=recordings3, dest=tmp_path / "c", pretrained=pretrained, family="cosyvoice2",
                                 cv_ratio=0, progress=False))
    assert "instruct" not in _rows(res.train_list)[0] and res.speech_tokenizer == "speech_tokenizer_v2.onnx"


@pytest.mark.parametrize("argv, message", [
    (["--family", "cosyvoice2", "--pretrained", "{v3}"],
     "--family cosyvoice2, but {v3} is a CosyVoice3 model directory (it holds cosyvoice3.yaml)"),
    (["--family", "cosyvoice3", "--pretrained", "{v2}"],
     "--family cosyvoice3, but {v2} is a CosyVoice2 model directory (it holds speech_tokenizer_v2.onnx)"),
    (["--pretrained", "{v2}", "--instruct", "You are a helpful assistant.<|endofprompt|>"],
     "--instruct is for CosyVoice3 data; CosyVoice2 samples carry no instruct text"),
    (["--pretrained", "{v3}", "--instruct", "Speak slowly."],
     "--instruct 'Speak slowly.' lacks <|endofprompt|>"),
])
def test_family_conflicts_are_errors_that_say_what_was_seen(recordings3, pretrained, pretrained3, tmp_path, capsys,
                                                             argv, message):
    argv = [a.format(v2=pretrained, v3=pretrained3) for a in argv]
    assert main(["prepare", str(recordings3), str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert message.format(v2=pretrained, v3=pretrained3) in err
    assert not (tmp_path / "out").exists(), "nothing is written"


def test_unknown_family_is_a_usage_error(recordings3, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prepare", str(recordings3), str(tmp_path / "out"), "--family", "cosyvoice4", "--no-features"])
    assert exc.value.code == 2 and "invalid choice: 'cosyvoice4'" in capsys.readouterr().err


def test_resume_refuses_data_for_another_family_or_instruct(recordings3, pretrained, pretrained3, tmp_path,
                                                          monkeypatch):
    from cosyvoice_ext.prepare.features import OnnxFeatures

    opts = dict(src=recordings3, cv_ratio=0.25, shard_size=3, progress=False)
    clean = prepare(PrepareOptions(dest=tmp_path / "clean", pretrained=pretrained3, **opts))
    dest = tmp_path / "resumed"
    real_extract, calls = OnnxFeatures.extract, []

    def dies_on_third(self, audio):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_extract(self, audio)

    monkeypatch.setattr(OnnxFeatures, "extract", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareOptions(dest=dest, pretrained=pretrained3, **opts))
    monkeypatch.setattr(OnnxFeatures, "extract", real_extract)
    before = sorted(p.name for p in dest.rglob("*"))

    with pytest.raises(UsageError) as exc:  # the v2 dir: another family, another tokenizer
        prepare(PrepareOptions(dest=dest, pretrained=pretrained, resume=True, **opts))
    assert "holds data prepared for cosyvoice3 (speech_tokenizer_v3.onnx, instruct 'You are a helpful " \
           "assistant.<|endofprompt|>'); this run is for cosyvoice2 (speech_tokenizer_v2.onnx)" in str(exc.value)
    assert "--family cosyvoice3" in exc.value.hint and "--resume" in exc.value.hint
    with pytest.raises(UsageError, match="instruct 'You are a helpful assistant. Speak slowly.<|endofprompt|>'"):
        prepare(PrepareOptions(dest=dest, pretrained=pretrained3, resume=True,
                               instruct="You are a helpful assistant. Speak slowly.<|endofprompt|>", **opts))
    assert sorted(p.name for p in dest.rglob("*")) == before, "a refused resume writes nothing"

    res = prepare(PrepareOptions(dest=dest, pretrained=pretrained3, resume=True, **opts))
    assert res.features_reused == 2 and res.features_computed == clean.features_computed - 2
    assert _tree(dest) == _tree(tmp_path / "clean")


def test_resume_of_a_dest_from_before_families_counts_as_cosyvoice2(recordings3, pretrained3, tmp_path):
    dest = tmp_path / "old"
    (dest / ".cosyext-prepare").mkdir(parents=True)  # what an earlier cosyext left: state without run.json
    with pytest.raises(UsageError, match="holds data prepared for cosyvoice2 .*this run is for cosyvoice3"):
        prepare(PrepareOptions(src=recordings3, dest=dest, pretrained=pretrained3, resume=True, progress=False))


# --- the real upstream Dataset ------------------------------------------------------------------

@pytest.fixture(scope="module")
def upstream_root(upstream_tree) -> Path:
    from cosyvoice_ext.tiny.workspace import upstream_import_paths

    paths = upstream_import_paths(upstream_tree)
    sys.path[:0] = paths
    yield upstream_tree
    for p in paths:
        if p in sys.path:
            sys.path.remove(p)


@pytest.mark.upstream
@pytest.mark.parametrize("model", ["llm", "flow"])
def test_upstream_dataset_pipeline_reads_the_shards(upstream_root, prepared, tmp_path, monkeypatch, model):
    from cosyvoice.dataset.dataset import Dataset

    from cosyvoice_ext.tiny.config import load_tiny_config, write_tiny_config
    from cosyvoice_ext.tiny.qwen import make_tiny_qwen

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, res, _ = prepared
    qwen = make_tiny_qwen(tmp_path / "qwen")
    configs = load_tiny_config(write_tiny_config(tmp_path / "tiny.yaml", qwen), model, qwen_dir=qwen)
    for data_list in (res.train_list, res.cv_list):
        expected = {r["utt"]: r for r in _rows(data_list)}
        dataset = Dataset(str(data_list), data_pipeline=configs["data_pipeline"], mode="train", shuffle=False,
                          partition=False)
        batches = list(dataset)
        assert sorted(u for b in batches for u in b["utts"]) == sorted(expected)
        for b in batches:
            assert b["speech_feat"].shape[2] == 80
            assert b["embedding"].shape[1] == 192
            for i, utt in enumerate(b["utts"]):
                n = int(b["speech_token_len"][i])
                assert b["speech_token"][i, :n].tolist() == expected[utt]["speech_token"][:n]
                assert n >= len(expected[utt]["speech_token"]) - 1


# --- upstream's data pipeline at ace7c47: the alignment the flow needs ----------------------------

ACE7C47 = "ace7c47"
#: the recipe blocks that decide speech_feat and speech_token lengths, taken from upstream's own yaml
PIPELINE_KEYS = ("sample_rate", "filter", "resample", "feat_extractor", "compute_fbank", "parse_embedding", "padding")
RECIPES = {"cosyvoice2": "examples/libritts/cosyvoice2/conf/cosyvoice2.yaml",
           "cosyvoice3": "examples/libritts/cosyvoice3/conf/cosyvoice3.yaml"}

# Runs in a subprocess: its `cosyvoice` is ace7c47's, not the pin's other tests import in-process.
PROCESSOR_CHECK = r'''
import json, sys
from hyperpyyaml import load_hyperpyyaml
from cosyvoice.dataset import processor

jobs = json.loads(sys.argv[1])

def with_text_token(data):  # stands in for `tokenize`: filter and compute_fbank only need its length
    for sample in data:
        sample["text_token"] = list(range(len(sample["text"].split())))
        yield sample

out = {}
for recipe, data_list in jobs:
    with open(recipe) as f:
        conf = load_hyperpyyaml(f)
    data = [{"src": f} for f in open(data_list).read().split()]
    stream = with_text_token(processor.parquet_opener(data))
    for step in ("filter", "resample", "compute_fbank", "parse_embedding"):  # data_pipeline's order
        stream = conf[step](stream)
    samples = list(stream)
    batch = next(conf["padding"]([samples]))
    lengths = zip(batch["speech_feat_len"].tolist(), batch["speech_token_len"].tolist())
    for utt, (feat_len, token_len) in zip(batch["utts"], lengths):
        out[utt] = [feat_len, token_len]
    out["<batch " + data_list + ">"] = [batch["speech_feat"].shape[1], batch["speech_token"].shape[1]]
print(json.dumps(out))
'''


def _recipe_blocks(yaml_text: str, keys: tuple[str, ...]) -> str:
    """The top-level blocks `keys` of an upstream config, verbatim (the rest would build whole models)."""
    blocks, current = [], None
    for line in yaml_text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            current = line.split(":", 1)[0] if line.split(":", 1)[0] in keys else None
        if current:
            blocks.append(line)
    return "\n".join(blocks) + "\n"


@pytest.fixture(scope="module")
def ace7c47_tree(upstream_at) -> Path:
    """Upstream at ace7c47, pristine: the data pipeline is not patched."""
    return upstream_at(ACE7C47, patched=False)


def _upstream_lengths(tree: Path, jobs: list[tuple[str, Path]], tmp_path: Path) -> dict[str, list[int]]:
    """{utt: [speech_feat_len, speech_token_len]} from upstream's pipeline, per (family recipe, data.list)."""
    recipes = {}
    for fam in {fam for fam, _ in jobs}:
        if not (tree / RECIPES[fam]).is_file():
            pytest.fail(f"{tree} has no {RECIPES[fam]}: this test needs a git checkout of upstream (bundle, mirror "
                        "or GitHub), not a PyPI-assembled tree")
        recipes[fam] = tmp_path / f"{fam}-pipeline.yaml"
        recipes[fam].write_text(_recipe_blocks((tree / RECIPES[fam]).read_text(encoding="utf-8"), PIPELINE_KEYS))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "third_party" / "Matcha-TTS")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("onnx_path", None)  # precomputed tokens: online extraction off
    job = json.dumps([[str(recipes[fam]), str(data_list)] for fam, data_list in jobs])
    proc = subprocess.run([sys.executable, "-c", PROCESSOR_CHECK, job], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.upstream
@pytest.mark.slow  # ~30 s: a fresh interpreter imports torch, whisper and matcha
def test_upstream_pipeline_at_ace7c47_gives_two_mel_frames_per_stored_token(ace7c47_tree, prepared, prepared3,
                                                                            tmp_path):
    """What the flows at ace7c47 need (`h` = tokens upsampled x2 meets `speech_feat` frame by frame), for
    every prepared row of both families, through upstream's own filter/resample/compute_fbank/padding."""
    jobs = [(fam, lst) for fam, res in (("cosyvoice2", prepared[1]), ("cosyvoice3", prepared3[1]))
            for lst in (res.train_list, res.cv_list)]
    stored = {r["utt"]: len(r["speech_token"]) for _, lst in jobs for r in _rows(lst)}
    lengths = _upstream_lengths(ace7c47_tree, jobs, tmp_path)
    batches = {k: v for k, v in lengths.items() if k.startswith("<batch")}
    per_utt = {k: v for k, v in lengths.items() if not k.startswith("<batch")}
    assert len(batches) == 4 and sorted(per_utt) == sorted(stored), "upstream's filter kept every prepared row"
    for utt, (feat_len, token_len) in per_utt.items():
        assert token_len == stored[utt] and feat_len == 2 * token_len, (utt, feat_len, token_len)
    assert all(feat == 2 * tok for feat, tok in batches.values()), batches
