"""`cosyext plot` on real TensorBoard event files, written with torch's SummaryWriter under the tags and
steps upstream's log_per_step / log_per_save use (and, in one test, by those upstream functions)."""

from __future__ import annotations

import csv
import io
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from cosyvoice_ext.cli import main


def _f32(x: float) -> float:
    return float(np.float32(x))


def write_run(tb_dir: Path, *, epochs: int = 3, steps_per_epoch: int = 4, start: float = 6.0,
              decay: float = 0.9, cv_offset: float = 0.3, start_step: int = 0) -> dict:
    """Event files as upstream writes them: per optimizer step TRAIN/{epoch,lr,grad_norm,loss,acc} at
    step + 1; after each epoch CV/{epoch,lr,loss,acc} at step + 1. Returns what was written."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tb_dir))
    written = {"TRAIN": [], "CV": []}
    step = start_step
    loss = start
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            loss *= decay
            for k, v in (("epoch", epoch), ("lr", 1e-3), ("grad_norm", 2.0), ("loss", loss), ("acc", 1 / loss)):
                writer.add_scalar(f"TRAIN/{k}", v, step + 1)
            written["TRAIN"].append((step + 1, epoch, loss))
            step += 1
        cv = loss + cv_offset + (0.5 if epoch == epochs - 1 and epochs > 2 else 0.0)  # last epoch overfits
        for k, v in (("epoch", epoch), ("lr", 1e-3), ("loss", cv), ("acc", 1 / cv)):
            writer.add_scalar(f"CV/{k}", v, step)  # log_per_save: step + 1 of the last TRAIN step
        written["CV"].append((step, epoch, cv))
    writer.close()
    return written


def _read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def _plot_csv(capsys, *args: str) -> list[dict]:
    assert main(["plot", *args, "--format", "csv", "-o", "-"]) == 0
    return _read_csv(capsys.readouterr().out)


@pytest.fixture
def two_runs(tmp_path):
    a = write_run(tmp_path / "exp_a" / "tensorboard" / "llm" / "torch_ddp")
    b = write_run(tmp_path / "exp_b" / "tb", epochs=2, steps_per_epoch=3, start=5.0, decay=0.8, cv_offset=0.1)
    return tmp_path, a, b


def test_csv_per_step_has_every_value_of_every_run(two_runs, capsys):
    root, a, b = two_runs
    rows = _plot_csv(capsys, str(root / "exp_a"), str(root / "exp_b" / "tb"))
    assert list(rows[0]) == ["run", "split", "step", "epoch", "loss"]
    got = {}
    for r in rows:
        got.setdefault((r["run"], r["split"]), []).append((int(r["step"]), int(r["epoch"]), float(r["loss"])))
    run_a, run_b = str(root / "exp_a"), str(root / "exp_b" / "tb")
    assert set(got) == {(run_a, "TRAIN"), (run_a, "CV"), (run_b, "TRAIN"), (run_b, "CV")}
    for run, written in ((run_a, a), (run_b, b)):
        for split in ("TRAIN", "CV"):
            assert got[(run, split)] == [(s, e, _f32(v)) for s, e, v in written[split]]


def test_csv_per_epoch_averages_train_and_keeps_cv(two_runs, tmp_path, capsys):
    root, a, _ = two_runs
    out = tmp_path / "out" / "loss.csv"
    assert main(["plot", str(root / "exp_a"), "--per", "epoch", "-o", str(out)]) == 0
    rows = _read_csv(out.read_text())
    train = [(int(r["epoch"]), float(r["loss"])) for r in rows if r["split"] == "TRAIN"]
    cv = [(int(r["epoch"]), int(r["step"]), float(r["loss"])) for r in rows if r["split"] == "CV"]
    assert [e for e, _ in train] == [0, 1, 2]
    for epoch, value in train:
        mine = [_f32(v) for _, e, v in a["TRAIN"] if e == epoch]
        assert value == pytest.approx(sum(mine) / len(mine), rel=1e-12)
    assert cv == [(e, s, _f32(v)) for s, e, v in a["CV"]]


def test_metric_option_reads_other_loss_dict_entries(two_runs, capsys):
    root, a, _ = two_runs
    rows = _plot_csv(capsys, str(root / "exp_a"), "--metric", "acc")
    assert [float(r["acc"]) for r in rows if r["split"] == "TRAIN"] == [_f32(1 / v) for _, _, v in a["TRAIN"]]


def test_several_event_dirs_under_one_argument_are_separate_runs(tmp_path, capsys):
    write_run(tmp_path / "exp" / "tensorboard" / "llm" / "torch_ddp", epochs=1)
    write_run(tmp_path / "exp" / "tensorboard" / "flow" / "torch_ddp", epochs=1, start=2.0)
    rows = _plot_csv(capsys, str(tmp_path / "exp"))
    assert {r["run"] for r in rows} == {f"{tmp_path / 'exp'}/tensorboard/flow/torch_ddp",
                                        f"{tmp_path / 'exp'}/tensorboard/llm/torch_ddp"}
    event_file = next((tmp_path / "exp" / "tensorboard" / "flow").rglob("events.out.tfevents.*"))
    rows = _plot_csv(capsys, str(event_file))  # an event file itself names its directory
    assert {r["run"] for r in rows} == {str(event_file)}


def test_resumed_run_keeps_the_newest_value_per_step(tmp_path, capsys):
    tb = tmp_path / "tb"
    write_run(tb, epochs=2, steps_per_epoch=3, start=4.0)
    time.sleep(0.05)
    second = write_run(tb, epochs=2, steps_per_epoch=3, start=9.0, start_step=3)  # resume from epoch 1
    assert len(list(tb.glob("events.out.tfevents.*"))) == 2
    rows = _plot_csv(capsys, str(tb))
    train = {int(r["step"]): float(r["loss"]) for r in rows if r["split"] == "TRAIN"}
    assert sorted(train) == list(range(1, 10))
    assert [train[s] for s, _, _ in second["TRAIN"]] == [_f32(v) for _, _, v in second["TRAIN"]]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("per", ["step", "epoch"])
def test_png_overlays_runs(two_runs, tmp_path, per):
    import matplotlib.image

    root, _, _ = two_runs
    out = tmp_path / f"loss_{per}.png"
    assert main(["plot", str(root / "exp_a"), str(root / "exp_b"), "--per", per, "-o", str(out)]) == 0
    width, height = _png_size(out)
    assert 800 <= width <= 2000 and 500 <= height <= 1200
    pixels = matplotlib.image.imread(str(out))[..., :3]
    colours = {tuple(c) for c in (pixels.reshape(-1, 3) * 255).round().astype(int)}
    c0, c1 = (31, 119, 180), (255, 127, 14)  # matplotlib's C0 and C1: one per run
    assert c0 in colours and c1 in colours


def test_errors_say_what_to_do(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty"), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "no TensorBoard event files" in err and "--tensorboard_dir" in err
    assert main(["plot", str(tmp_path / "missing"), "-o", str(tmp_path / "x.png")]) == 2
    write_run(tmp_path / "tb", epochs=1)
    assert main(["plot", str(tmp_path / "tb"), "--metric", "nope", "-o", str(tmp_path / "x.png")]) == 2
    assert "TRAIN/loss" in capsys.readouterr().err  # the tags it does have
    assert main(["plot", str(tmp_path / "tb"), "-o", "-", "--format", "png"]) == 2
    assert not (tmp_path / "x.png").exists()


def test_per_epoch_needs_the_epoch_tag(tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "tb"))
    for s in range(1, 4):
        w.add_scalar("TRAIN/loss", 1.0 / s, s)
    w.close()
    assert len(_plot_csv(capsys, str(tmp_path / "tb"))) == 3
    assert main(["plot", str(tmp_path / "tb"), "--per", "epoch", "-o", str(tmp_path / "l.csv")]) == 2
    assert "--per step" in capsys.readouterr().err


# --- event files written by upstream's own logging functions ---------------------------------------

@pytest.mark.upstream
def test_reads_what_upstreams_log_functions_write(upstream_tree, tmp_path, capsys, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    from cosyvoice_ext.tiny.workspace import upstream_import_paths

    for p in reversed(upstream_import_paths(upstream_tree)):
        monkeypatch.syspath_prepend(p)
    from cosyvoice.utils.train_utils import log_per_save, log_per_step

    writer = SummaryWriter(str(tmp_path / "tensorboard"))
    base = {"train_engine": "torch_ddp", "accum_grad": 2, "log_interval": 1, "lr": 1e-3, "grad_norm": 1.0}
    expected_train = []
    for batch_idx in range(6):  # with accum_grad 2 upstream logs every 2nd batch, at step + 1
        step = batch_idx // 2
        loss = 3.0 - 0.25 * batch_idx
        log_per_step(writer, {**base, "tag": "TRAIN", "epoch": 0, "step": step, "batch_idx": batch_idx,
                              "loss_dict": {"loss": loss, "acc": 0.1}})
        if (batch_idx + 1) % 2 == 0:
            expected_train.append((step + 1, _f32(loss)))
    log_per_save(writer, {**base, "tag": "CV", "epoch": 0, "step": 2, "loss_dict": {"loss": 2.5, "acc": 0.2}})
    writer.close()
    capsys.readouterr()  # upstream's log lines
    rows = _plot_csv(capsys, str(tmp_path))
    assert [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == "TRAIN"] == expected_train
    assert [(int(r["step"]), r["epoch"], float(r["loss"])) for r in rows if r["split"] == "CV"] == [(3, "0", 2.5)]
