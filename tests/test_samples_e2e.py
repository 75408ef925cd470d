"""Samples during training, for real: the stock train.py under torchrun with 2 gloo ranks, LoRA on the LLM
of a tiny inference dir (the pretrained dir samples build upstream's CosyVoice2 from), a mid-epoch
checkpoint every 2 steps, `--timeout 1` and early stopping on the samples' speaker similarity.

One run proves several things (CI budget): the wavs next to each checkpoint, TensorBoard audio and
scalars, one metrics row per checkpoint (speaker similarity, and WER with a random-weight Whisper), no rank timing out although rank 0 samples far longer than
--timeout between two steps of an epoch, early stopping by the eval metric with best.yaml naming it,
and `export --run` choosing that checkpoint.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.upstream]

TIMEOUT = 1  # train.py --timeout: the join's monitored barrier


@pytest.fixture(scope="module")
def run(tmp_path_factory, upstream_tree):
    from cosyvoice_ext.eval.tiny import make_whisper_checkpoint
    from cosyvoice_ext.tiny.api import detect_api
    from cosyvoice_ext.tiny.data import write_parquet_dataset, write_train_cv
    from cosyvoice_ext.tiny.inference import make_inference_dir, render_inference_config
    from cosyvoice_ext.tiny.qwen import LEXICON
    from cosyvoice_ext.tiny.workspace import Workspace, train_command, train_env

    root = tmp_path_factory.mktemp("samples")
    t0 = time.perf_counter()
    pretrained = make_inference_dir(root / "pretrained", upstream=upstream_tree)
    t1 = time.perf_counter()
    # equal utterances in 2 equal shards: both ranks take the same number of batches, so the join never
    # waits for a rank that ran out of data (what the short --timeout would report as uneven workload)
    train_list, cv_list = write_train_cv(root / "data", 12, 4, shards=2, min_sec=1.6, max_sec=1.6)
    # the sentences samples speak: 3 words each (a random LLM speaks ~20x the text tokens), 2 s recordings; 4 of
    # them (one more CV utterance is the zero-shot prompt) take ~2.5 s on a quiet machine, well over --timeout 1
    # (2 sentences took 0.9 s there: the timeout test proved nothing)
    samples_cv = write_parquet_dataset(root / "samples_cv", 5, seed=5, min_sec=2.0, max_sec=2.5, utt_prefix="scv",
                                       text_fn=lambda i: " ".join(LEXICON[3 * i:3 * i + 3]))
    whisper = make_whisper_checkpoint(root / "whisper.pt")  # random weights: the ASR path, offline
    extra = f"""cosyext:
  llm:
    r: 4
    alpha: 8
    dropout: 0.0
  early_stop:
    metric: samples/sim_campplus
    patience: 2
    min_delta: 1000
  samples:
    pretrained: {pretrained.root}
    cv_data: {samples_cv}
    sentences: 4
    max_seconds: 60
    at_init: true
    metrics: [sim_campplus, wer]
    asr: {whisper}
"""
    text = render_inference_config(pretrained.qwen_dir, api=detect_api(upstream_tree), max_epoch=3, lr=0.01,
                                   max_frames_in_batch=400, extra=extra)
    assert text.count("save_per_step: -1") >= 1
    config = root / "train.yaml"
    config.write_text(text.replace("save_per_step: -1", "save_per_step: 2", 1), encoding="utf-8")
    ws = Workspace(root=root, qwen_dir=pretrained.qwen_dir, config=config, train_list=train_list, cv_list=cv_list,
                   llm_ckpt=pretrained.path("llm.pt"), flow_ckpt=pretrained.path("flow.pt"))
    exp = root / "exp"
    t2 = time.perf_counter()
    res = subprocess.run(train_command(ws, upstream_tree, "llm", exp, nproc=2, checkpoint=ws.llm_ckpt,
                                       extra_args=["--timeout", str(TIMEOUT)]),
                         env=train_env(upstream_tree), capture_output=True, text=True, timeout=900)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-6000:]
    print(f"\ntiny inference dir {t1 - t0:.1f} s, data and config {t2 - t1:.1f} s, 2-rank run {time.perf_counter() - t2:.1f} s")
    rate = int(re.search(r"^sample_rate: (\d+)", text, re.M).group(1))
    return exp, log, rate


def test_wavs_next_to_each_checkpoint_and_one_metrics_row_per_checkpoint(run):
    import soundfile

    from cosyvoice_ext.samples import read_rows

    exp, log, rate = run
    rows = read_rows(exp)
    checkpoints = sorted(p.stem for p in exp.glob("*.pt"))
    assert sorted(r["name"] for r in rows) == checkpoints and rows[0]["name"] == "init"
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    for row in rows:
        assert row["error"] is None
        assert -1.0 <= row["metrics"]["samples/sim_campplus"] <= 1.0
        assert len(row["utterances"]) == 4 and row["skipped_for_time"] == []
        for utt, entry in row["utterances"].items():
            wav = exp / "samples" / row["name"] / f"{utt}.wav"
            assert entry["wav"] == str(wav.relative_to(exp)) and len(entry["text"].split()) == 3
            info = soundfile.info(str(wav))
            assert info.samplerate == rate and info.channels == 1 and info.frames / rate > 0.1
            assert entry["scores"]["samples/sim_campplus"] is not None
            # WER against the text it was asked to say, with what the (random) ASR heard beside it
            assert entry["scores"]["samples/wer"] >= 0 and "transcript" in entry["details"]["samples/wer"]
        assert row["metrics"]["samples/wer"] >= 0
    # the build happens once, at init; every later checkpoint only applies its adapter
    assert log.count("cosyext samples: upstream CosyVoice2 ready") == 1
    print("\nsamples seconds per checkpoint:", [r["seconds"]["total"] for r in rows],
          "overhead vs training time since the previous checkpoint:", [r["overhead"] for r in rows])


def test_no_rank_times_out_while_rank_0_samples_longer_than_timeout(run):
    from cosyvoice_ext.samples import read_rows

    exp, log, _ = run
    mid_epoch = [r for r in read_rows(exp) if "_step_" in r["name"]]
    assert mid_epoch, "the run must save mid-epoch, where the ranks go on training after the checkpoint"
    assert max(r["seconds"]["total"] for r in mid_epoch) > TIMEOUT
    assert "monitoredBarrier" not in log and "uneven workload" not in log
    for rank in (0, 1):  # rank 0's log survives upstream's inference import (modelscope mutes root handlers)
        assert re.search(rf"TRAIN Batch 1/\d+ loss .* rank {rank}", log), f"rank {rank} did not train epoch 1"


def test_early_stop_by_the_eval_metric_and_export_run_takes_its_best(run):
    from cosyvoice_ext.lora.export.runs import select
    from cosyvoice_ext.samples import read_rows

    exp, log, _ = run
    evaluated = [r for r in read_rows(exp) if r["name"] != "init"]
    # min_delta 1000: nothing after the first evaluation improves; patience 2 stops at the third, mid-run
    assert len(evaluated) == 3 and not list(exp.glob("epoch_2_*"))
    assert f"early stopping after {evaluated[2]['name']}: samples/sim_campplus has not improved" in log
    best = yaml.safe_load((exp / "best.yaml").read_text())
    assert best["metric"] == "samples/sim_campplus" and best["higher_is_better"] is True
    assert best["checkpoint"] == evaluated[0]["checkpoint"]
    assert best["value"] == pytest.approx(evaluated[0]["metrics"]["samples/sim_campplus"])
    said: list[str] = []
    chosen = select(exp, None, 1, False, said.append)
    assert [c.path for c in chosen] == [exp / best["checkpoint"]] and "samples/sim_campplus" in said[0]


def _audio_events(path: Path) -> list[tuple[str, int, object]]:
    """(tag, step, Summary.Audio) of every audio summary in one events file (TFRecord framing)."""
    import struct

    from tensorboard.compat.proto import event_pb2

    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        out += [(v.tag, event.step, v.audio) for v in event.summary.value if v.HasField("audio")]
    return out


def test_tensorboard_has_the_audio_and_the_metrics_and_plot_still_reads_it(run):
    from cosyvoice_ext import plot
    from cosyvoice_ext.samples import read_rows

    exp, _, rate = run
    tb = exp / "tensorboard"
    rows = read_rows(exp)
    ours = list(tb.glob("events.out.tfevents.*.cosyext-samples"))  # a second writer beside train.py's
    assert len(ours) == 1 and len(list(tb.glob("events.out.tfevents.*"))) == 2
    audio = _audio_events(ours[0])
    for utt in rows[0]["utterances"]:
        clips = [(step, a) for tag, step, a in audio if tag == f"samples/audio/{utt}"]
        assert [step for step, _ in clips] == [r["step"] + 1 for r in rows]
        assert all(a.sample_rate == rate and a.encoded_audio_string[:4] == b"RIFF" for _, a in clips)
    scalars = plot.read_scalars(tb)
    for metric in ("samples/sim_campplus", "samples/wer"):
        assert scalars[metric] == pytest.approx({r["step"] + 1: r["metrics"][metric] for r in rows})
    assert {c.split for c in plot.load_runs([tb])} == {"TRAIN", "CV"}
