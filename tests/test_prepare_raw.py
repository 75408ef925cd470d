"""`cosyext prepare` from long recordings without transcripts (issue 13), on real speech: upstream's
`asset/*.wav` (two real speakers: cross_lingual_prompt.wav 13.7 s, zero_shot_prompt.wav 3.5 s) joined
with silences into one long file, so the true utterance boundaries are known. silero-vad is the
real model from its package; ASR is a tiny random-weight Whisper built here (it loops on one token,
which Whisper's own compression-ratio check calls a failed decode); features come from the stand-in ONNX
models. Prepare runs are module-scoped and shared."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from cosyvoice_ext.eval.tiny import make_whisper_checkpoint
from cosyvoice_ext.prepare import PrepareOptions, prepare
from cosyvoice_ext.prepare import raw as raw_mod
from cosyvoice_ext.prepare import report as report_mod
from cosyvoice_ext.prepare import slicing
from cosyvoice_ext.prepare import transcribe as asr_mod
from cosyvoice_ext.prepare.loudness import clipped_fraction, normalise
from cosyvoice_ext.prepare.pipeline import NoUsableData

RATE = raw_mod.SEGMENT_RATE
#: the ASR filters off: the tiny random Whisper's looping output (rightly) fails Whisper's own checks
PERMISSIVE = dict(min_asr_logprob=-1e9, max_no_speech=1.0, max_compression_ratio=1e9)


@pytest.fixture(scope="module")
def one_thread():
    """Every test that runs models goes through `voices`, which asks for this (unit tests skip importing torch)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def voices(upstream_at, one_thread) -> dict[str, np.ndarray]:
    asset = upstream_at("ace7c47", patched=False) / "asset"
    return {name: slicing.decode_ffmpeg(asset / f"{name}_prompt.wav", RATE) for name in ("cross_lingual", "zero_shot")}


def _speech_span(x: np.ndarray) -> tuple[float, float]:
    """First and last sample above -34 dBFS: where a clip's speech starts and ends, independent of the VAD."""
    idx = np.flatnonzero(np.abs(x) > 0.02)
    return idx[0] / RATE, (idx[-1] + 1) / RATE


def join(parts: list[np.ndarray | float]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Clips and silences (floats, seconds) end to end; returns the audio and each clip's speech span in it."""
    out, spans, t = [], [], 0.0
    for p in parts:
        if isinstance(p, float):
            p = np.zeros(int(round(p * RATE)), dtype=np.float32)
        else:
            s, e = _speech_span(p)
            spans.append((t + s, t + e))
        out.append(p)
        t += len(p) / RATE
    return np.concatenate(out), spans


@pytest.fixture(scope="module")
def talk(voices, tmp_path_factory) -> tuple[Path, list[tuple[float, float]]]:
    """One long FLAC: cross_lingual, 1.2 s silence, zero_shot, 1.5 s silence, cross_lingual."""
    c, z = voices["cross_lingual"], voices["zero_shot"]
    audio, spans = join([0.3, c, 1.2, z, 1.5, c, 0.3])
    path = tmp_path_factory.mktemp("talk") / "talk.flac"
    soundfile.write(path, audio, RATE)
    return path, spans


@pytest.fixture(scope="module")
def asr(tmp_path_factory) -> Path:
    return make_whisper_checkpoint(tmp_path_factory.mktemp("whisper") / "tiny.pt")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    from cosyvoice_ext.tiny.standin import make_pretrained_standin

    return make_pretrained_standin(tmp_path_factory.mktemp("pretrained") / "CosyVoice2-standin")


def _opts(**kw) -> dict:
    return dict(progress=False, cv_ratio=0.2, seed=0, **kw)


@pytest.fixture(scope="module")
def single(talk, asr, pretrained, tmp_path_factory):
    """One long file -> trainable data (features from the stand-ins), ASR filters off."""
    dest = tmp_path_factory.mktemp("single") / "data"
    res = prepare(PrepareOptions(src=talk[0], dest=dest, pretrained=pretrained, asr=str(asr), **PERMISSIVE, **_opts()))
    return dest, res


def _rows(data_list: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for line in data_list.read_text().split() for r in pq.read_table(line).to_pylist()]


def _all_rows(res) -> dict[str, dict]:
    return {r["utt"]: r for lst in (res.train_list, res.cv_list) for r in _rows(lst)}


# --- slicing on real speech -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def talk_probs(talk):
    audio = slicing.decode_ffmpeg(talk[0], RATE)
    return slicing.speech_probs(raw_mod._to16k(audio)), len(audio) / RATE


def test_cuts_fall_on_the_known_joins(talk, talk_probs):
    """Pauses of 1.5 s and more always cut: one utterance per clip, its speech where the clip's speech is."""
    probs, total = talk_probs
    _, spans = talk
    cuts = slicing.plan(probs, total, slicing.SliceOptions(split_pause=1.5))
    assert len(cuts) == len(spans), cuts
    for cut, (s, e) in zip(cuts, spans):
        assert abs(cut.speech_start - s) <= 0.3 and abs(cut.speech_end - e) <= 0.3, (cut, s, e)
        assert cut.start <= cut.speech_start and cut.end >= cut.speech_end  # lead/trail kept only as padding
        assert cut.speech_start - cut.start <= 0.1 + 1e-6 and cut.end - cut.speech_end <= 0.1 + 1e-6


def test_default_cuts_never_span_a_join_and_respect_the_bounds(talk, talk_probs):
    probs, total = talk_probs
    _, spans = talk
    o = slicing.SliceOptions()
    cuts = slicing.plan(probs, total, o)
    assert len(cuts) >= len(spans)
    for cut in cuts:
        inside = [i for i, (s, e) in enumerate(spans) if cut.speech_start < e and cut.speech_end > s]
        assert len(inside) == 1, (cut, spans)  # each utterance belongs to one clip
        assert o.min_sec <= cut.speech_end - cut.speech_start <= o.max_sec, cut
    for (s, e) in spans:  # every clip's speech is covered, to within 0.3 s at its ends
        mine = [c for c in cuts if s - 0.3 <= c.speech_start and c.speech_end <= e + 0.3]
        assert abs(mine[0].speech_start - s) <= 0.3 and abs(mine[-1].speech_end - e) <= 0.3


def test_over_long_speech_is_split_in_pauses_not_mid_word(talk_probs):
    """With a 6 s limit the 13.7 s clip must be split inside it: every cut is in a pause the VAD heard."""
    probs, total = talk_probs
    o = slicing.SliceOptions(max_sec=6.0)
    cuts = slicing.plan(probs, total, o)
    assert all(c.speech_end - c.speech_start <= 6.0 for c in cuts), cuts
    for a, b in zip(cuts, cuts[1:]):
        assert b.speech_start > a.speech_end  # a gap between the speech of neighbours...
        gap = probs[round(a.speech_end / slicing.FRAME_SEC):round(b.speech_start / slicing.FRAME_SEC)]
        assert len(gap) and gap.max() < o.threshold  # ...that the VAD calls silence


def test_plan_merges_short_pieces_and_splits_a_pauseless_region():
    """Synthetic probabilities (32 ms frames): a 1 s burst next to a 3 s one merges across the shorter pause;
    a 40 s region without a pause is split at its lowest-probability dip."""
    f = lambda sec: int(sec / slicing.FRAME_SEC)  # noqa: E731
    p = np.zeros(f(60), dtype=np.float32)
    p[f(1):f(2)] = 0.9  # 1 s
    p[f(2.6):f(5.6)] = 0.9  # 3 s, 0.6 s later
    p[f(12):f(52)] = 0.9  # 40 s, one dip
    p[f(30):f(30.2)] = 0.4
    cuts = slicing.plan(p, 60.0, slicing.SliceOptions(max_sec=25.0))
    assert [round(c.speech_start) for c in cuts] == [1, 12, 30]
    assert abs(cuts[1].speech_end - 30.1) < 0.2 or abs(cuts[2].speech_start - 30.1) < 0.2
    assert cuts[0].speech_end == pytest.approx(5.6, abs=0.05)


# --- loudness, filters, TSV (unit) ----------------------------------------------------------------

@pytest.mark.slow  # importing pyloudnorm (scipy.signal) takes seconds
def test_loudness_reaches_the_target_and_never_clips():
    import pyloudnorm

    t = np.arange(3 * RATE) / RATE
    quiet = (0.01 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    y, info = normalise(quiet, RATE, -20.0)
    assert pyloudnorm.Meter(RATE).integrated_loudness(y.astype(np.float64)) == pytest.approx(-20.0, abs=0.1)
    assert not info.peak_limited and info.gain_db > 20
    spiky = quiet.copy()
    spiky[100] = 0.5  # one peak: normalising to -20 LUFS would push it far past full scale
    y, info = normalise(spiky, RATE, -20.0)
    assert info.peak_limited and np.abs(y).max() <= 10 ** (-1 / 20) + 1e-6
    hard = np.clip(quiet * 300, -1, 1)
    assert clipped_fraction(hard) > 0.5 and clipped_fraction(quiet) == 0.0


def _seg(**kw) -> raw_mod.Segment:
    base = dict(utt="r_0000", recording="r", spk="s", start=0.0, end=5.2, speech_start=0.1, speech_end=5.1,
                path=Path("x.wav"), speech_ratio=0.9, lufs_before=-30.0, gain_db=10.0, peak_limited=False,
                clipped=0.0)
    return raw_mod.Segment(**{**base, **kw})


def test_every_filter_gives_its_reason():
    o = raw_mod.RawOptions()
    assert raw_mod._prefilter(_seg(), o) is None
    assert raw_mod._prefilter(_seg(speech_end=1.1), o).startswith("too short")
    assert raw_mod._prefilter(_seg(speech_end=20.0, end=20.1), o).startswith("too long")
    assert raw_mod._prefilter(_seg(speech_ratio=0.3), o).startswith("low speech ratio: 0.30")
    assert raw_mod._prefilter(_seg(clipped=0.01), o).startswith("clipped: 1.00%")
    ok = dict(text="hello", avg_logprob=-0.3, no_speech_prob=0.1)
    assert raw_mod._asr_filter(_seg(**ok), o) is None
    assert raw_mod._asr_filter(_seg(**{**ok, "avg_logprob": -2.5}), o).startswith("low ASR confidence")
    assert raw_mod._asr_filter(_seg(**{**ok, "avg_logprob": float("nan")}), o).startswith("low ASR confidence")
    assert raw_mod._asr_filter(_seg(**{**ok, "no_speech_prob": 0.9}), o).startswith("ASR: no speech")
    assert raw_mod._asr_filter(_seg(**{**ok, "text": ""}), o) == "empty ASR transcript"
    assert "Whisper looping" in raw_mod._asr_filter(_seg(**{**ok, "compression_ratio": 9.5}), o)


def test_transcripts_tsv_round_trips_tabs_and_newlines(tmp_path):
    rows = [{"utt": "a", "text": "tab\there\nand a \\ backslash", "start": "1.000"}]
    (tmp_path / "t.tsv").write_bytes(asr_mod.render(rows))
    back = asr_mod.read(tmp_path / "t.tsv")
    assert back["a"]["text"] == rows[0]["text"] and back["a"]["start"] == "1.000"


def test_recommendation_comes_from_the_memory_model():
    from cosyvoice_ext.memory.model import max_frames_fitting

    for gpu, family in ((16, "cosyvoice2"), (24, "cosyvoice3"), (80, "cosyvoice2")):
        rec = report_mod.recommend(42.0, gpu, family)
        for m in ("llm", "flow"):
            assert rec.max_frames[m] == min(max_frames_fitting(m, gpu, lora=True, family=family), 8000)
    assert report_mod.recommend(42.0, 16, "cosyvoice2").max_frames["flow"] < \
        report_mod.recommend(42.0, 40, "cosyvoice2").max_frames["flow"]  # a bigger card fits bigger batches
    assert [report_mod.recommend(m, 16, "cosyvoice2").lora_rank for m in (5, 30, 120)] == [8, 16, 32]
    assert report_mod.recommend(5, 16, "cosyvoice2").epochs > report_mod.recommend(120, 16, "cosyvoice2").epochs


# --- full runs ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_one_long_file_gives_segments_transcripts_and_shards(single, talk):
    dest, res = single
    tsv = asr_mod.read(dest / "transcripts.tsv")
    segs = sorted((dest / "segments").glob("*.wav"))
    assert res.segments == len(segs) == len(tsv) >= 3 and res.segments_kept == len(segs)
    assert res.asr_computed == len(segs) and res.edited == 0
    rows = _all_rows(res)
    assert sorted(rows) == sorted(tsv) == [p.stem for p in segs]
    for utt, row in rows.items():
        assert row["text"] == tsv[utt]["text"] != "" and tsv[utt]["source"] == "asr" and tsv[utt]["status"] == "kept"
        assert row["wav"] == str(dest / "segments" / f"{utt}.wav") and len(row["speech_token"]) > 0
        info = soundfile.info(dest / "segments" / f"{utt}.wav")
        assert info.samplerate == RATE and info.channels == 1 and info.subtype == "PCM_16"
        assert float(tsv[utt]["end"]) - float(tsv[utt]["start"]) == pytest.approx(info.duration, abs=0.01)
    import pyloudnorm

    for p in segs:  # every stored utterance at -20 LUFS (or held at -1 dBFS peak)
        x, _ = soundfile.read(p, dtype="float64")
        lufs = pyloudnorm.Meter(RATE).integrated_loudness(x)
        assert lufs == pytest.approx(-20.0, abs=0.5) or np.abs(x).max() >= 0.85, (p.name, lufs)
    summary = json.loads((dest / "prepare_summary.json").read_text())
    assert summary["segments"] == {"cut": len(segs), "kept": len(segs), "transcripts_edited": 0}


@pytest.mark.slow
def test_report_has_every_section_and_a_recommendation_from_the_memory_model(single):
    from cosyvoice_ext.memory.model import max_frames_fitting

    dest, res = single
    page = (dest / "report.html").read_text()
    md = (dest / "report.md").read_text()
    for title in ("Kept and dropped", "Durations", "Text length vs audio length", "Speaker-embedding spread",
                  "Where to start training"):
        assert title in page and title in md
    imgs = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(imgs) == 3 and all(s.startswith("data:image/png;base64,") for s in imgs)  # self-contained
    assert sorted(p.name for p in (dest / "report").glob("*.png")) == ["durations.png", "speaker_spread.png",
                                                                       "text_vs_audio.png"]
    assert "campplus" in md  # --pretrained given: its embeddings, not resemblyzer's
    minutes = round(sum(res.seconds.values()) / 60, 2)
    assert f"| kept | {res.segments_kept} | {minutes} |" in md
    for m in ("llm", "flow"):
        assert f"{m}: max_frames_in_batch {max_frames_fitting(m, 16.0, lora=True, family='cosyvoice2')}" in md
    assert "starting point" in md


@pytest.fixture(scope="module")
def folder(voices, talk, asr, tmp_path_factory):
    """A folder: the long file plus a ready-cut utterance with its own transcript; --no-features, so the
    report's speaker spread comes from resemblyzer (real embeddings of the real voices)."""
    src = tmp_path_factory.mktemp("folder") / "alice"
    src.mkdir()
    shutil.copy(talk[0], src / "talk.flac")
    soundfile.write(src / "ready.wav", voices["cross_lingual"][: 6 * RATE], RATE)
    (src / "ready.txt").write_text("the words someone typed\n", encoding="utf-8")
    dest = src.parent / "out"
    res = prepare(PrepareOptions(src=src, dest=dest, no_features=True, asr=str(asr), **PERMISSIVE, **_opts()))
    return src, dest, res


@pytest.mark.slow
def test_existing_transcripts_win_over_asr(folder):
    src, dest, res = folder
    rows = _all_rows(res)
    assert rows["ready"]["text"] == "the words someone typed" and rows["ready"]["wav"] == str(src / "ready.wav")
    tsv = asr_mod.read(dest / "transcripts.tsv")
    assert "ready" not in tsv and not (dest / "segments" / "ready.wav").exists()
    assert res.asr_computed == len(tsv) == res.segments  # Whisper never heard the transcribed file


@pytest.mark.slow
def test_report_flags_the_second_voice(folder):
    """cross_lingual's speaker fills the recording; zero_shot's one utterance is the outlier."""
    _, dest, res = folder
    summary = json.loads((dest / "prepare_summary.json").read_text())["report"]
    tsv = asr_mod.read(dest / "transcripts.tsv")
    zero = [u for u, r in tsv.items() if 15.0 < float(r["start"]) < 16.0]
    assert summary["speaker_outliers"] == zero and len(zero) == 1, (summary, tsv)
    assert summary["embeddings"].startswith("resemblyzer")
    assert f"- {zero[0]} (alice):" in (dest / "report.md").read_text()


@pytest.mark.slow
def test_a_users_edit_of_transcripts_tsv_wins(single, asr, pretrained, talk, tmp_path):
    dest0, res0 = single
    dest = tmp_path / "data"
    shutil.copytree(dest0, dest, symlinks=True)
    tsv_path = dest / "transcripts.tsv"
    lines = tsv_path.read_text().splitlines()
    edited, emptied = lines[1].split("\t"), lines[2].split("\t")
    edited[4], emptied[4] = "ba do ka", ""
    lines[1], lines[2] = "\t".join(edited), "\t".join(emptied)
    tsv_path.write_text("\n".join(lines) + "\n")
    opts = dict(src=talk[0], pretrained=pretrained, asr=str(asr), **PERMISSIVE, **_opts())
    res = prepare(PrepareOptions(dest=dest, resume=True, **opts))
    assert res.asr_computed == 0 and res.asr_reused == res0.segments - 2 and res.edited == 2
    rows = _all_rows(res)
    assert rows[edited[0]]["text"] == "ba do ka" and emptied[0] not in rows
    report = (dest / "prepare_report.tsv").read_text()
    assert f"{emptied[0]}\t" in report and "empty transcript (transcripts.tsv)" in report
    after = asr_mod.read(tsv_path)
    assert after[edited[0]]["text"] == "ba do ka" and after[edited[0]]["source"] == "edited"
    # a stricter ASR threshold on the next run drops ASR texts but not the user's
    res = prepare(PrepareOptions(dest=dest, resume=True, **{**opts, "max_compression_ratio": 2.4}))
    assert sorted(_all_rows(res)) == [edited[0]]
    assert asr_mod.read(tsv_path)[edited[0]]["source"] == "edited"
    # --force starts over: ASR texts again, edits gone
    res = prepare(PrepareOptions(dest=dest, force=True, **opts))
    assert res.edited == 0 and {r["source"] for r in asr_mod.read(tsv_path).values()} == {"asr"}


@pytest.mark.slow
def test_filters_report_every_dropped_segment_with_its_reason(voices, asr, tmp_path):
    """A lone 1 s burst (too short), a clip amplified into clipping, and Whisper's real low-confidence filter."""
    c, z = voices["cross_lingual"], voices["zero_shot"]
    burst = z[int(0.5 * RATE):int(1.6 * RATE)]
    hot = np.clip(z * 8, -1.0, 1.0)
    audio, _ = join([0.3, c, 3.0, burst, 3.0, c, 1.2, hot, 0.3])
    soundfile.write(tmp_path / "f.wav", audio, RATE)
    with pytest.raises(NoUsableData):
        prepare(PrepareOptions(src=tmp_path / "f.wav", dest=tmp_path / "out", no_features=True, asr=str(asr),
                               report=False, **_opts()))
    tsv = asr_mod.read(tmp_path / "out" / "transcripts.tsv")
    report = [ln.split("\t") for ln in (tmp_path / "out" / "prepare_report.tsv").read_text().splitlines()[1:]]
    assert sorted(r[0] for r in report) == sorted(tsv)  # every segment cut is in the report, with its reason
    kinds = {u: r["status"].split(":")[0] for u, r in tsv.items()}
    by_start = sorted(tsv, key=lambda u: float(tsv[u]["start"]))
    assert kinds[by_start[-1]] == "clipped"
    assert "too short" in [kinds[u] for u in by_start]
    assert {kinds[u] for u in by_start if kinds[u] not in ("clipped", "too short")} <= \
        {"low ASR confidence", "ASR", "empty ASR transcript"}
    assert all(r[2] == tsv[r[0]]["status"] for r in report)


def _tree(dest: Path) -> dict[str, bytes]:
    return {str(p.relative_to(dest)): p.read_bytes() for p in sorted(dest.rglob("*"))
            if p.is_file() and ".cosyext-prepare" not in p.parts}


def _outside(root: Path, skip: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file() and not any(s in p.parts for s in skip)}


def _kill_while_transcribing(src: Path, dest: Path, asr: Path, pretrained: Path) -> None:
    """`cosyext prepare --resume` in a child process, SIGKILLed once its first Whisper result is on disk."""
    import signal
    import sys
    import time

    cmd = [sys.executable, "-m", "cosyvoice_ext.cli", "prepare", str(src), str(dest), "--pretrained", str(pretrained),
           "--asr", str(asr), "--min-asr-logprob=-1e9", "--max-no-speech", "1", "--max-compression-ratio", "1e9",
           "--cv-ratio", "0.2", "--seed", "0", "--no-progress", "--resume"]
    cache = dest / ".cosyext-prepare" / raw_mod.ASR_CACHE
    before = len(cache.read_text().splitlines()) if cache.is_file() else 0
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if cache.is_file() and len(cache.read_text().splitlines()) > before:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    out = proc.communicate()[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, f"the child was to be killed mid-ASR; it ended with " \
                                               f"{proc.returncode}:\n{out[-2000:]}"


@pytest.mark.slow
def test_interrupted_runs_resume_to_identical_bytes_and_write_only_in_dest(talk, asr, pretrained, tmp_path,
                                                                          monkeypatch):
    """Interrupted while cutting (Ctrl-C), killed with SIGKILL while transcribing (a real `cosyext prepare`
    process), interrupted while computing features, each resumed: the same bytes as an uninterrupted run in
    the same DEST (segments, TSV, shards, lists, report), and nothing written outside DEST."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(talk[0], src / "talk.flac")
    dest = tmp_path / "data"
    opts = dict(src=src, pretrained=pretrained, asr=str(asr), **PERMISSIVE, **_opts())
    before = _outside(tmp_path, ("data", "clean"))
    prepare(PrepareOptions(dest=dest, **opts))
    clean = _tree(dest)
    dest.rename(tmp_path / "clean")

    transcribed = []
    real_transcribe = asr_mod.transcribe

    def fail_on(module, name, n):
        real, calls = getattr(module, name), []

        def wrapped(*a, **k):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*a, **k)
        monkeypatch.setattr(module, name, wrapped)

    def counting(*a, **k):
        transcribed.append(1)
        return real_transcribe(*a, **k)

    from cosyvoice_ext.prepare import loudness
    from cosyvoice_ext.prepare.features import OnnxFeatures

    monkeypatch.setattr(asr_mod, "transcribe", counting)
    fail_on(loudness, "normalise", 3)  # mid-recording: two segments written
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareOptions(dest=dest, **opts))
    monkeypatch.undo()
    _kill_while_transcribing(src, dest, asr, pretrained)
    monkeypatch.setattr(asr_mod, "transcribe", counting)
    fail_on(OnnxFeatures, "extract", 2)
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareOptions(dest=dest, resume=True, **opts))
    monkeypatch.undo()
    res = prepare(PrepareOptions(dest=dest, resume=True, **opts))
    assert res.asr_computed == 0 and res.asr_reused == res.segments and res.features_reused > 0
    assert 0 < len(transcribed) < res.segments  # the rest were transcribed by the killed run, and kept
    assert _tree(dest) == clean
    assert _outside(tmp_path, ("data", "clean")) == before


@pytest.mark.slow
def test_cli_runs_from_one_file_and_prints_what_it_did(talk, asr, tmp_path, capsys):
    from cosyvoice_ext.cli import main

    m4a = tmp_path / "talk.m4a"  # AAC in MP4: what phones record; ffmpeg decodes it, libsndfile cannot
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(talk[0]), "-c:a", "aac", "-b:a", "96k", str(m4a)],
                   check=True)
    assert main(["prepare", str(m4a), str(tmp_path / "out"), "--no-features", "--asr", str(asr), "--no-progress",
                 "--language", "en", "--min-asr-logprob=-1e9", "--max-no-speech", "1", "--max-compression-ratio", "1e9",
                 "--no-report"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"segments: \d+ cut, \d+ kept; ASR: \d+ transcribed, 0 reused", out), out
    assert not (tmp_path / "out" / "report.html").exists()
    tsv = asr_mod.read(tmp_path / "out" / "transcripts.tsv")
    assert len(tsv) >= 3 and {r["language"] for r in tsv.values()} == {"en"}  # given, not detected
    assert main(["prepare", str(tmp_path / "nope.flac"), str(tmp_path / "o2"), "--asr", str(asr),
                 "--no-features"]) == 2


@pytest.mark.slow
def test_one_long_file_trains_under_torchrun(single, upstream_tree, tmp_path_factory):
    """The prepared data of one long recording through upstream's stock train.py (torchrun, LLM, one epoch)."""
    from cosyvoice_ext.tiny.workspace import make_workspace, train_command, train_env

    _, res = single
    ws = make_workspace(tmp_path_factory.mktemp("raw_ws"), n_train=2, n_cv=1, upstream=upstream_tree, max_epoch=1,
                        max_frames_in_batch=1200)
    ws = dataclasses.replace(ws, train_list=res.train_list, cv_list=res.cv_list)
    exp = tmp_path_factory.mktemp("raw_run") / "exp"
    env = {**train_env(upstream_tree), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(train_command(ws, upstream_tree, "llm", exp, checkpoint=ws.llm_ckpt), env=env,
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert re.search(r"TRAIN Batch \d+/\d+ loss \d+\.\d+", log), log[-3000:]
    assert (exp / "epoch_0_whole.pt").is_file(), sorted(os.listdir(exp))


def test_cli_options_and_cutting_defaults_agree():
    """The CLI, PrepareOptions and raw.RawOptions state the same defaults: `cosyext prepare` with no raw
    options cuts and filters exactly as the library's RawOptions() does."""
    from cosyvoice_ext.cli import build_parser
    from cosyvoice_ext.commands.prepare_cmd import RAW_ARGS
    from cosyvoice_ext.prepare.pipeline import raw_options

    args = build_parser().parse_args(["prepare", "SRC", "DEST"])
    defaults = PrepareOptions(src=Path("SRC"), dest=Path("DEST"))
    for name in RAW_ARGS:
        assert getattr(args, name) == getattr(defaults, name), name
    assert raw_options(defaults) == raw_mod.RawOptions()
