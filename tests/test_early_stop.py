"""Early stopping on the CV loss: settings, decisions, and a real 2-rank torchrun run that stops."""

from __future__ import annotations

import dataclasses
import math

import pytest
import yaml

from cosyvoice_ext.early_stop import EarlyStopper, Settings, parse_settings, read_best, write_best
from cosyvoice_ext.errors import ConfigError


@pytest.mark.parametrize("section, key", [
    ({"patience": 0}, "patience"),
    ({"patience": True}, "patience"),
    ({"patience": 2, "min_delta": -1}, "min_delta"),
    ({"patience": 2, "min_detla": 0.1}, "min_detla"),
    ("often", "early_stop"),
])
def test_bad_settings_name_the_key(section, key):
    with pytest.raises(ConfigError, match=f"cosyext.early_stop.*{key}|{key}"):
        parse_settings({"cosyext": {"early_stop": section}})


def test_absent_section_means_off():
    assert parse_settings({}) is None and parse_settings({"cosyext": {"llm": {}}}) is None
    assert parse_settings({"cosyext": {"early_stop": {"patience": 3}}}) == Settings(3, 0.0, "loss")


def test_stopper_counts_evaluations_without_improvement():
    s = EarlyStopper(Settings(patience=2, min_delta=0.1))
    assert s.update(5.0, "epoch_0_whole", 0, 10) == (True, False)
    assert s.update(4.95, "epoch_1_whole", 1, 20) == (False, False)  # not better by more than min_delta
    assert s.update(4.0, "epoch_2_whole", 2, 30) == (True, False)
    assert s.update(math.nan, "epoch_3_whole", 3, 40) == (False, False)
    assert s.update(4.5, "epoch_4_whole", 4, 50) == (False, True)
    assert s.best == {"checkpoint": "epoch_2_whole.pt", "epoch": 2, "step": 30, "metric": "loss", "value": 4.0}


def test_best_pointer_roundtrip(tmp_path):
    assert read_best(tmp_path) is None
    write_best(tmp_path, {"checkpoint": "epoch_3_whole.pt", "epoch": 3, "step": 9, "metric": "loss", "value": 1.5})
    assert read_best(tmp_path)["checkpoint"] == "epoch_3_whole.pt"
    assert not list(tmp_path.glob(".*tmp"))


def test_stopper_on_a_metric_where_higher_is_better():
    s = EarlyStopper(Settings(patience=2, min_delta=0.01, metric="samples/sim_campplus", higher_is_better=True))
    assert s.update(0.50, "epoch_0_whole", 0, 10) == (True, False)
    assert s.update(0.505, "epoch_1_whole", 1, 20) == (False, False)  # not higher by more than min_delta
    assert s.update(0.60, "epoch_2_whole", 2, 30) == (True, False)
    assert s.update(0.40, "epoch_3_whole", 3, 40) == (False, False)  # lower is worse here
    assert s.update(math.nan, "epoch_4_whole", 4, 50) == (False, True)
    assert s.best == {"checkpoint": "epoch_2_whole.pt", "epoch": 2, "step": 30, "metric": "samples/sim_campplus",
                      "value": 0.60, "higher_is_better": True}


@pytest.mark.parametrize("metric, samples, key_or_direction", [
    ("samples/sim_campplus", {"pretrained": "p", "metrics": ["sim_campplus"]}, True),
    ("samples/wer", {"pretrained": "p", "metrics": ["sim_campplus", "wer"], "asr": "tiny"}, False),
    ("loss", None, False),
    ("samples/sim_resemblyzer", {"pretrained": "p", "metrics": ["sim_campplus"]}, "cosyext.early_stop.metric"),
    ("samples/sim_campplus", None, "cosyext.early_stop.metric"),
])
def test_sample_metric_direction_comes_from_the_metric(metric, samples, key_or_direction):
    """At training start a sample metric must be one the samples: section records; its direction is the metric's."""
    from cosyvoice_ext.early_stop import resolve

    configs = {"cosyext": {"early_stop": {"patience": 2, "metric": metric},
                           **({"samples": samples} if samples else {})}}
    settings = parse_settings(configs)
    if isinstance(key_or_direction, str):
        with pytest.raises(ConfigError) as info:
            resolve(settings, configs)
        assert info.value.key == key_or_direction and metric in str(info.value)
    else:
        assert resolve(settings, configs).higher_is_better is key_or_direction


def test_a_malformed_sample_metric_is_refused_by_the_parser():
    with pytest.raises(ConfigError, match="cosyext.early_stop.metric"):
        parse_settings({"cosyext": {"early_stop": {"patience": 2, "metric": "samples/SIM campplus"}}})


def test_export_run_follows_a_best_pointer_chosen_by_a_sample_metric(tmp_path):
    """`export --run` takes the checkpoint best.yaml names and says which metric chose it."""
    from cosyvoice_ext.lora.export.runs import select

    for epoch in range(3):
        (tmp_path / f"epoch_{epoch}_whole.pt").write_bytes(b"x")
    write_best(tmp_path, {"checkpoint": "epoch_1_whole.pt", "epoch": 1, "step": 9, "metric": "samples/sim_campplus",
                          "value": 0.61, "higher_is_better": True})
    said = []
    chosen = select(tmp_path, None, 1, False, said.append)
    assert [c.path.name for c in chosen] == ["epoch_1_whole.pt"]
    assert "samples/sim_campplus 0.61, higher is better" in said[0]


@pytest.mark.slow
@pytest.mark.upstream
def test_two_ranks_stop_together_and_exit_zero(upstream_tree, tmp_path):
    import subprocess

    from cosyvoice_ext.tiny.config import write_tiny_config
    from cosyvoice_ext.tiny.workspace import make_workspace, train_command, train_env

    ws = make_workspace(tmp_path / "ws", n_train=8, n_cv=4, upstream=upstream_tree)
    # min_delta so large that nothing after the first evaluation counts as an improvement
    config = write_tiny_config(tmp_path / "conf.yaml", ws.qwen_dir, max_epoch=6,
                               extra="cosyext:\n  early_stop:\n    patience: 1\n    min_delta: 1000\n")
    ws = dataclasses.replace(ws, config=config)
    model_dir = tmp_path / "exp"
    res = subprocess.run(train_command(ws, upstream_tree, "llm", model_dir, nproc=2, checkpoint=ws.llm_ckpt),
                         env=train_env(upstream_tree), capture_output=True, text=True, timeout=900)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    assert "early stopping after epoch_1_whole" in log
    assert sorted(p.name for p in model_dir.glob("epoch_*_whole.pt")) == ["epoch_0_whole.pt", "epoch_1_whole.pt"]
    best = yaml.safe_load((model_dir / "best.yaml").read_text())
    assert best["checkpoint"] == "epoch_0_whole.pt" and best["epoch"] == 0
    assert read_best(model_dir) == best

    # export follows the pointer: the stock llm.pt it writes is epoch 0's weights, not the latest
    import torch

    from cosyvoice_ext.cli import main

    out = tmp_path / "llm.pt"
    assert main(["export", "--model", "llm", "--run", str(model_dir), "--config", str(config),
                 "--qwen-pretrain-path", str(ws.qwen_dir), "--upstream", str(upstream_tree), "-o", str(out)]) == 0
    exported = torch.load(out, weights_only=True)
    chosen = torch.load(model_dir / "epoch_0_whole.pt", weights_only=True)
    latest = torch.load(model_dir / "epoch_1_whole.pt", weights_only=True)
    assert "epoch" not in exported and "step" not in exported
    assert all(torch.equal(exported[k], chosen[k]) for k in exported)
    assert any(not torch.equal(exported[k], latest[k]) for k in exported)
