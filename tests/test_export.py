"""`cosyext export`: merged weights equal the LoRA model, stock strict load, averaging by CV loss."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import yaml

from cosyvoice_ext import checkpoints
from cosyvoice_ext.errors import CheckpointError, UsageError
from cosyvoice_ext.lora import export as export_mod
from cosyvoice_ext.lora import training
from tests.helpers import run_cosyext
from tests.test_lora_helpers import (
    load_configs, max_abs_diff, outputs, randomize_lora, tiny_workspace, train_args,
)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, upstream_tree):
    return tiny_workspace(tmp_path_factory.mktemp("export"), upstream_tree)


def lora_model(ws, name, seed, **lora):
    configs = load_configs(ws, name, **lora)
    model = configs[name]
    training.prepare(model, name, configs, train_args(name, ws.base[name]))
    randomize_lora(model, seed=seed)
    return model


def write_epoch(run_dir, model, epoch, cv_loss):
    """An epoch checkpoint + info yaml laid out as upstream's save_model writes them."""
    info = {"epoch": epoch, "step": 10 * (epoch + 1), "loss_dict": {"loss": cv_loss, "acc": 0.1}, "tag": "CV",
            "optim_conf": {"lr": 0.001}, "model_dir": str(run_dir)}
    torch.save(training.checkpoint_state(model, info), run_dir / f"epoch_{epoch}_whole.pt")
    (run_dir / f"epoch_{epoch}_whole.yaml").write_text(yaml.dump(info), encoding="utf-8")


@pytest.mark.parametrize("name", ["llm", "flow"])
def test_export_equals_the_lora_model_and_loads_strictly(ws, tmp_path, name):
    model = lora_model(ws, name, seed=21)
    run = tmp_path / "run"
    run.mkdir()
    write_epoch(run, model, 0, 1.0)
    out = export_mod.export(model=name, config=ws.config, out=str(tmp_path / "out") + "/", run_dir=run,
                            base=ws.base[name], progress=lambda m: None)
    assert out == tmp_path / "out" / f"{name}.pt"
    state = checkpoints.load(out)
    assert "epoch" not in state and "step" not in state
    assert list(state) == list(checkpoints.load(ws.base[name]))  # exactly the stock keys, in order

    fresh = load_configs(ws, name, seed=77)[name]  # the stock model from the stock YAML
    fresh.load_state_dict(state, strict=True)
    diff = max_abs_diff(outputs(model, name), outputs(fresh, name))
    base = load_configs(ws, name, seed=78)[name]
    base.load_state_dict(checkpoints.tensors(checkpoints.load(ws.base[name])), strict=True)
    moved = max_abs_diff(outputs(model, name), outputs(base, name))
    print(f"\n{name}: merged vs LoRA max abs diff {diff:.2e}; LoRA vs base {moved:.2e}")
    assert diff <= 1e-5
    assert moved > 1e-3  # the adapter changes the outputs, so the equality above means something


def test_average_of_the_best_by_cv_loss_matches_a_hand_computation(ws, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    losses = {0: 0.50, 1: 0.20, 2: 0.30, 3: 0.90}
    adapters = {}
    for epoch, loss in losses.items():
        model = lora_model(ws, "llm", seed=100 + epoch)
        write_epoch(run, model, epoch, loss)
        adapters[epoch] = checkpoints.load(run / f"epoch_{epoch}_whole.pt")
    messages: list[str] = []
    out = export_mod.export(model="llm", config=ws.config, out=tmp_path / "avg.pt", run_dir=run,
                            base=ws.base["llm"], average_n=2, val_best=True, progress=messages.append)
    got = checkpoints.load(out)

    base = checkpoints.load(ws.base["llm"])
    scale = 8 / 4  # alpha / r
    expected = {k: v.clone() for k, v in base.items() if isinstance(v, torch.Tensor)}
    for key in list(expected):
        if not key.endswith("_proj.weight") or ".self_attn." not in key:
            continue
        prefix = key[: -len(".weight")]
        merged = []
        for epoch in (1, 2):  # the two lowest CV losses
            lora = adapters[epoch]["lora"]
            a, b = lora[f"{prefix}.lora_A.default.weight"], lora[f"{prefix}.lora_B.default.weight"]
            merged.append(base[key].double() + scale * (b.double() @ a.double()))
        expected[key] = ((merged[0] + merged[1]) / 2).float()
    changed = [k for k in expected if not torch.equal(expected[k], base[k])]
    assert len(changed) == 8
    assert set(got) == set(expected)
    for key in expected:
        assert torch.allclose(got[key], expected[key], atol=1e-6, rtol=0), key
    assert any("[1/2]" in m and "epoch_1_whole.pt" in m and "cv loss 0.2" in m for m in messages)
    assert any("[2/2]" in m and "epoch_2_whole.pt" in m for m in messages)
    assert any("averaging 2" in m for m in messages)


def test_choosing_epochs(tmp_path):
    for epoch, loss in {0: 0.4, 1: 0.1, 2: 0.3}.items():
        (tmp_path / f"epoch_{epoch}_whole.pt").write_bytes(b"x")
        (tmp_path / f"epoch_{epoch}_whole.yaml").write_text(
            yaml.dump({"epoch": epoch, "loss_dict": {"loss": loss}, "spec": (1, 2)}), encoding="utf-8")
    (tmp_path / "init.pt").write_bytes(b"x")
    (tmp_path / "epoch_0_step_5.pt").write_bytes(b"x")
    cands = export_mod.run_candidates(tmp_path)
    assert [c.epoch for c in cands] == [0, 1, 2] and [c.cv_loss for c in cands] == [0.4, 0.1, 0.3]
    assert [c.epoch for c in export_mod.choose(cands, 2, val_best=True)] == [1, 2]
    assert [c.epoch for c in export_mod.choose(cands, 2, val_best=False)] == [1, 2]
    assert [c.epoch for c in export_mod.choose(cands, 1, val_best=False)] == [2]
    with pytest.raises(UsageError, match="only 3 epoch"):
        export_mod.choose(cands, 4, val_best=True)
    (tmp_path / "epoch_2_whole.yaml").unlink()
    with pytest.raises(UsageError, match="epoch_2_whole.yaml"):
        export_mod.choose(export_mod.run_candidates(tmp_path), 2, val_best=True)


def test_export_refuses_another_base_and_pickle_payloads(ws, tmp_path):
    model = lora_model(ws, "flow", seed=3)
    run = tmp_path / "run"
    run.mkdir()
    write_epoch(run, model, 0, 1.0)
    other = tmp_path / "other_flow.pt"
    state = checkpoints.load(ws.base["flow"])
    state["input_embedding.weight"] = state["input_embedding.weight"] * 2
    torch.save(state, other)
    with pytest.raises(CheckpointError, match="was trained on base sha256"):
        export_mod.export(model="flow", config=ws.config, out=tmp_path / "x.pt", run_dir=run, base=other,
                          progress=lambda m: None)

    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "x": _Evil()}, evil)
    with pytest.raises(CheckpointError, match="pickle payload"):
        export_mod.export(model="flow", config=ws.config, out=tmp_path / "y.pt", checkpoint=evil,
                          base=ws.base["flow"], progress=lambda m: None)
    assert not (tmp_path / "y.pt").exists()


class _Evil:
    def __reduce__(self):
        return (print, ("never printed",))


def test_export_command_line(ws, tmp_path, upstream_tree):
    model = lora_model(ws, "llm", seed=8)
    run = tmp_path / "run"
    run.mkdir()
    write_epoch(run, model, 0, 0.7)
    write_epoch(run, model, 1, 0.6)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = run_cosyext("export", "--model", "llm", "--run", str(run), "--base", str(ws.base["llm"]),
                       "--config", str(ws.config), "--upstream", str(upstream_tree), "--average", "2", "--val-best",
                       "-o", str(tmp_path / "out") + "/", env=env)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out" / "llm.pt"
    assert "[2/2] merging" in proc.stderr and f"wrote {out}" in proc.stderr
    fresh = load_configs(ws, "llm", seed=5)["llm"]
    fresh.load_state_dict(checkpoints.load(out), strict=True)

    proc = run_cosyext("export", "--model", "llm", "--run", str(tmp_path / "nope"), "--config", str(ws.config),
                       "--upstream", str(upstream_tree), "-o", str(tmp_path / "z.pt"), env=env)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "next:" in proc.stderr
