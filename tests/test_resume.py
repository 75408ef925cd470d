"""Exact resume (issue 10, item 6): adapter checkpoints carry the optimizer, scheduler, grad-scaler and RNG
states, and a run stopped after epoch k and resumed gives the same losses and final adapter weights as the
uninterrupted run, bit for bit.

The unit part drives cosyvoice_ext.resume the way the relay does; the slow part trains the stock train.py
under torchrun on the tiny models of both supported setups (every upstream import in a child process).
"""

from __future__ import annotations

import io
import logging
import random
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cosyvoice_ext import checkpoints, resume
from cosyvoice_ext.errors import CheckpointError
from tests.conftest import MAIN, PIN


@pytest.fixture(autouse=True)
def _fresh_state():
    resume.reset()
    yield
    resume.reset()


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def _roundtrip(obj):
    """What train.py and the LoRA plugin do with a checkpoint: torch.save, then a weights-only load."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_rng_states_round_trip_through_a_weights_only_checkpoint():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1)  # python keeps a cached gaussian: part of the state
    state = _roundtrip(resume.rng_state())
    expected = _draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    resume.set_rng_state(state)
    assert _draws() == expected


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = torch.nn.Linear(4, 4)
        self.lora = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.drop = torch.nn.Dropout(0.3)

    def forward(self, x):
        return self.lora(self.drop(self.frozen(x)))


def _make(seed: int = 0):
    torch.manual_seed(seed)
    net = _Net()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    return net, opt, sched


def _steps(net, opt, sched, n: int) -> list[float]:
    losses = []
    for _ in range(n):
        x = torch.rand(8, 4)  # the data draws from torch's RNG, dropout too
        loss = (net(x) ** 2).mean() + random.random() * 1e-3  # and something from python's random
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def test_stopped_and_resumed_equals_uninterrupted_bitwise():
    net, opt, sched = _make()
    resume.attach(opt, sched)
    _steps(net, opt, sched, 5)
    resume.gather_rng("epoch_0_whole")
    saved = _roundtrip({"weights": {k: v.clone() for k, v in net.state_dict().items()},
                        "resume": resume.capture({"epoch": 0, "step": 5})})
    uninterrupted = _steps(net, opt, sched, 5)

    resume.reset()
    net2, opt2, sched2 = _make(seed=123)  # a new process: other init, other RNG
    net2.load_state_dict(saved["weights"])
    resume.expect(saved["resume"], "epoch_0_whole.pt")
    resume.attach(opt2, sched2)  # train_utils: optimizer and scheduler built
    resume.restore_rng()  # train_utils: after the init checkpoint
    resumed = _steps(net2, opt2, sched2, 5)
    assert resumed == uninterrupted
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    assert sched2.last_epoch == sched.last_epoch and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_without_the_training_state_a_resume_differs():
    """The control for the test above: weights alone (what upstream's checkpoints hold) do not continue exactly."""
    net, opt, sched = _make()
    _steps(net, opt, sched, 5)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    uninterrupted = _steps(net, opt, sched, 5)
    net2, opt2, sched2 = _make(seed=123)
    net2.load_state_dict(weights)
    assert _steps(net2, opt2, sched2, 5) != uninterrupted


def test_optimizer_state_holds_only_the_trainable_parameters():
    net, opt, sched = _make()
    resume.attach(opt, sched)
    _steps(net, opt, sched, 2)
    state = resume.capture({"epoch": 0, "step": 2})["optimizer"]["state"]
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert len(state) == len(trainable) == 2  # the frozen Linear has no moments
    assert sum(v.numel() for s in state.values() for v in s.values() if v.dim()) == 2 * sum(p.numel() for p in trainable)


def test_grad_scaler_state_is_restored_before_it_scales():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    net, opt, sched = _make()
    resume.attach(opt, sched)
    resume.attach_scaler(scaler)
    for _ in range(3):  # an inf gradient halves the scale: state a fresh scaler does not have
        opt.zero_grad()
        scaler.scale((net(torch.rand(2, 4)) * float("inf")).sum()).backward()
        scaler.step(opt)
        scaler.update()
    state = _roundtrip(resume.capture({"epoch": 0, "step": 3}))
    assert state["grad_scaler"]["scale"] == scaler.get_scale() == 2.0 ** 7
    resume.reset()
    resume.expect(state, "ckpt.pt")
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    resume.attach_scaler(fresh)
    assert fresh.get_scale() == 2.0 ** 7
    resume.attach_scaler(fresh)  # every later step: nothing happens again
    assert fresh.get_scale() == 2.0 ** 7


def _saved_state() -> dict:
    net, opt, sched = _make()
    resume.attach(opt, sched)
    _steps(net, opt, sched, 1)
    state = _roundtrip(resume.capture({"epoch": 0, "step": 1}))
    resume.reset()
    return state


def test_another_optimizer_is_refused():
    state = _saved_state()
    net = _Net()
    resume.expect(state, "epoch_0_whole.pt")
    with pytest.raises(CheckpointError, match="trained with the optimizer AdamW, this run builds Adam"):
        resume.attach(torch.optim.Adam(net.lora.parameters()), None)


def test_the_relay_says_a_mismatch_in_one_log_line_and_leaves_deepspeed_alone(caplog):
    from types import SimpleNamespace

    from cosyvoice_ext import relay

    state = _saved_state()
    net = _Net()
    resume.expect(state, "epoch_0_whole.pt")
    relay.optimizer_ready(SimpleNamespace(train_engine="deepspeed"), net, torch.optim.Adam(net.lora.parameters()), None)
    with caplog.at_level(logging.ERROR, logger="cosyvoice_ext"), pytest.raises(CheckpointError):
        relay.optimizer_ready(SimpleNamespace(train_engine="torch_ddp"), net, torch.optim.Adam(net.lora.parameters()),
                              None)
    assert "cosyext resume: epoch_0_whole.pt was trained with the optimizer AdamW" in caplog.text
    assert "(next: resume with the train_conf the checkpoint was trained with" in caplog.text


def test_another_adapter_shape_is_refused_naming_the_parameter():
    state = _saved_state()
    resume.expect(state, "epoch_0_whole.pt")
    wider = torch.nn.Linear(4, 6)
    with pytest.raises(CheckpointError, match=r"optimizer state exp_avg of parameter #0 has shape \(4, 4\), the "
                                              r"parameter \(6, 4\)"):
        resume.attach(torch.optim.AdamW(wider.parameters()), None)


def test_a_mid_epoch_checkpoint_says_what_upstream_does(caplog):
    state = _saved_state()
    state["position"].update(checkpoint="epoch_2_step_500", epoch=2, step=499, batch_idx=120, end_of_epoch=False)
    with caplog.at_level(logging.WARNING, logger="cosyvoice_ext.resume"):
        resume.expect(state, "epoch_2_step_500.pt")
    assert "saved within epoch 2 (step 499, batch 120)" in caplog.text
    assert "resumes at the next epoch, so the rest of epoch 2 is not trained" in caplog.text


def test_another_world_size_is_said(caplog, monkeypatch):
    state = _saved_state()
    state["rng"] = state["rng"] * 2  # saved by 2 ranks
    resume.expect(state, "epoch_0_whole.pt")
    with caplog.at_level(logging.WARNING, logger="cosyvoice_ext.resume"):
        resume.restore_rng()
    assert "saved with 2 rank(s), this run has 1" in caplog.text


def test_an_unknown_resume_format_is_refused():
    with pytest.raises(CheckpointError, match="not version 1"):
        resume.expect({"version": 99}, "x.pt")


# --- the real thing: stock train.py under torchrun, both supported setups ---------------------------

LORA = """\
cosyext:
  llm: {r: 4, alpha: 8, dropout: 0.1}
  flow: {r: 4, alpha: 8, dropout: 0.1}
"""
LOSS_LINE = re.compile(r" INFO (TRAIN Batch (\d+)/\d+ loss \S+ .* rank \d+)$", re.M)
SETUPS = {"cosyvoice2@44316c34": (PIN, "cosyvoice2"), "cosyvoice3@ace7c47": (MAIN, "cosyvoice3")}
EPOCHS, STOP_AFTER = 3, 0


# every model and both rank counts, over both setups, without the full cross product (CI time)
CASES = [("cosyvoice2@44316c34", "llm", 1), ("cosyvoice2@44316c34", "flow", 1),
         ("cosyvoice3@ace7c47", "flow", 1), ("cosyvoice3@ace7c47", "llm", 2)]


@pytest.fixture(scope="module")
def setups(upstream_at, tmp_path_factory):
    """`setups(name)`: the tree and tiny workspace of a setup, made once per module."""
    from cosyvoice_ext.tiny.workspace import make_workspace

    made: dict = {}

    def get(name: str):
        if name not in made:
            rev, family = SETUPS[name]
            tree = upstream_at(rev)
            root = tmp_path_factory.mktemp(f"resume-{family}-{rev}")
            ws = make_workspace(root / "ws", n_train=12, n_cv=4, upstream=tree, family=family, extra=LORA, lr=0.01,
                                max_frames_in_batch=400, shards=2, max_epoch=EPOCHS)
            made[name] = (name, tree, ws)
        return made[name]

    return get


def _train(tree: Path, ws, model: str, model_dir: Path, checkpoint: Path, nproc: int, config: Path | None = None):
    import dataclasses

    from cosyvoice_ext.tiny.workspace import train_command, train_env

    if config is not None:
        ws = dataclasses.replace(ws, config=config)
    res = subprocess.run(train_command(ws, tree, model, model_dir, nproc=nproc, checkpoint=checkpoint),
                         env=train_env(tree), capture_output=True, text=True, timeout=900)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    return log


def _losses(log: str, from_epoch: int) -> list[str]:
    return sorted(m.group(1) for m in LOSS_LINE.finditer(log) if int(m.group(2)) >= from_epoch)


def _tensorboard(model_dir: Path) -> dict:
    from cosyvoice_ext.plot import read_scalars

    return read_scalars(model_dir / "tensorboard")


def _size_without_resume(state: dict, tmp: Path) -> int:
    torch.save({k: v for k, v in state.items() if k != resume.STATE_KEY}, tmp)
    return tmp.stat().st_size


@pytest.mark.slow
@pytest.mark.parametrize("setup_name, model, nproc", CASES)
def test_stopped_after_epoch_k_and_resumed_equals_the_uninterrupted_run(setups, setup_name, model, nproc, tmp_path):
    name, tree, ws = setups(setup_name)
    base = ws.llm_ckpt if model == "llm" else ws.flow_ckpt
    full = tmp_path / "uninterrupted"
    full_log = _train(tree, ws, model, full, base, nproc)

    # the stopped run: the same config, trained for STOP_AFTER + 1 epochs only
    short_cfg = tmp_path / "stop.yaml"
    short_cfg.write_text(ws.config.read_text().replace(f"max_epoch: {EPOCHS}\n", f"max_epoch: {STOP_AFTER + 1}\n"))
    assert short_cfg.read_text() != ws.config.read_text()
    stopped = tmp_path / "stopped"
    _train(tree, ws, model, stopped, base, nproc, config=short_cfg)
    stop_ckpt = stopped / f"epoch_{STOP_AFTER}_whole.pt"
    assert not (stopped / f"epoch_{STOP_AFTER + 1}_whole.pt").exists()
    same_start = checkpoints.load(full / stop_ckpt.name)["lora"]
    assert all(torch.equal(v, checkpoints.load(stop_ckpt)["lora"][k]) for k, v in same_start.items())

    resumed = tmp_path / "resumed"
    log = _train(tree, ws, model, resumed, stop_ckpt, nproc)
    assert re.search(r"cosyext resume: optimizer \w+ \(\d+ state tensors\) and scheduler \w+ \(step \d+\) restored",
                     log), log[-3000:]
    assert log.count("cosyext resume: RNG states (torch, numpy, python) of rank") == nproc

    # the same TRAIN losses (every rank's log lines; rank 0's float32 TensorBoard scalars: loss, lr, grad_norm)
    # and CV losses
    assert _losses(log, STOP_AFTER + 1) == _losses(full_log, STOP_AFTER + 1) != []
    full_tb, resumed_tb = _tensorboard(full), _tensorboard(resumed)
    assert "TRAIN/loss" in resumed_tb and "TRAIN/lr" in resumed_tb
    for tag, values in resumed_tb.items():
        assert values == {s: full_tb[tag][s] for s in values}, tag
    for epoch in range(STOP_AFTER + 1, EPOCHS):
        cv = [checkpoints.load(d / f"epoch_{epoch}_whole.pt")["cosyext"]["cv_loss"] for d in (full, resumed)]
        assert cv[0] == cv[1] and cv[0]

    # the same final adapter and optimizer state, bit for bit
    last = f"epoch_{EPOCHS - 1}_whole.pt"
    a, b = checkpoints.load(full / last), checkpoints.load(resumed / last)
    assert a["lora"].keys() == b["lora"].keys() and a["lora"]
    assert all(torch.equal(a["lora"][k], b["lora"][k]) for k in a["lora"]), "final adapter weights differ"
    sa, sb = a["resume"]["optimizer"]["state"], b["resume"]["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert len(a["resume"]["rng"]) == nproc

    # cheap: the optimizer holds the LoRA tensors' moments only; report the sizes
    lora_numel = sum(v.numel() for v in a["lora"].values())
    moments = sum(v.numel() for s in sa.values() for k, v in s.items() if k != "step")
    assert moments == 2 * lora_numel
    with_state = (full / last).stat().st_size
    without = _size_without_resume(a, tmp_path / "weights-only.pt")
    print(f"\n{name} {model} x{nproc}: adapter checkpoint {without} B without the training state, {with_state} B "
          f"with it ({with_state / without:.2f}x); base {base.stat().st_size} B; LoRA {lora_numel} parameters")
    assert with_state < 3 * without + 64_000 * nproc

    if (model, nproc) == ("llm", 1):
        # the control: the same resume from the checkpoint stripped of its training state (what upstream's own
        # checkpoints hold) gives other weights, so the comparison above can fail
        stripped = tmp_path / f"{stop_ckpt.stem}-weights-only.pt"
        torch.save({k: v for k, v in checkpoints.load(stop_ckpt).items() if k != resume.STATE_KEY}, stripped)
        again = tmp_path / "resumed-weights-only"
        log = _train(tree, ws, model, again, stripped, nproc)
        assert "carries no optimizer, scheduler or RNG state" in log
        c = checkpoints.load(again / last)
        assert any(not torch.equal(a["lora"][k], c["lora"][k]) for k in a["lora"])
