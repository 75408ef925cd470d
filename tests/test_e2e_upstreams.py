"""End to end on every supported setup: CosyVoice2 at 44316c34 (2025), CosyVoice2 and CosyVoice3 at
ace7c47 (2026). The stock train.py under real torchrun on CPU, LoRA for the LLM and the flow, 1 and 2
ranks, exact resume, export with a strict load, and at ace7c47 both ways train.py gets its features
(precomputed in the data, or online from ONNX models).

Every upstream import happens in a child process (torchrun, `cosyext export`, tests/upstream_probe.py),
so the commits never meet in one interpreter. test_lora_e2e.py adds the 2025 pin's specials
(DeepSpeed, multi-node rendezvous, export --serve, checkpoint averaging).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from cosyvoice_ext import checkpoints
from tests.conftest import MAIN, PIN
from tests.helpers import run_cosyext

pytestmark = [pytest.mark.slow, pytest.mark.upstream]

LORA = """\
cosyext:
  llm: {r: 8, alpha: 16, dropout: 0.0}
  flow: {r: 8, alpha: 16, dropout: 0.0}
"""
LOSS_LINE = re.compile(r" INFO TRAIN Batch (\d+)/(\d+) loss (\d+\.\d+)")
PROBE = Path(__file__).with_name("upstream_probe.py")
SETUPS = {"cosyvoice2@2025": (PIN, "cosyvoice2"), "cosyvoice2@2026": (MAIN, "cosyvoice2"),
          "cosyvoice3@2026": (MAIN, "cosyvoice3")}

# A throwaway third-party plugin loaded at interpreter start in every rank: it keeps the model
# prepare_model saw and dumps each rank's LoRA tensors after each epoch's checkpoint.
SPY_PLUGIN = '''
import os, torch
from cosyvoice_ext.hookspecs import hookimpl
from cosyvoice_ext.plugins import get_manager

class Spy:
    model = None

    @hookimpl(trylast=True)
    def cosyext_prepare_model(self, model, name, configs, args):
        Spy.model = model

    @hookimpl
    def cosyext_after_save(self, model_name, info_dict):
        if model_name.startswith("epoch_"):
            lora = {k: v.detach().cpu() for k, v in Spy.model.state_dict().items() if "lora_" in k}
            rank = os.environ.get("RANK", "0")
            torch.save(lora, os.path.join(info_dict["model_dir"], f"spy_rank{rank}_epoch{info_dict['epoch']}.pt"))

get_manager().register(Spy(), name="spy")
'''


@dataclass
class Setup:
    name: str
    family: str
    tree: Path
    ws: object
    runs: dict = field(default_factory=dict)


@pytest.fixture(scope="module", params=list(SETUPS))
def setup(request, upstream_at, tmp_path_factory) -> Setup:
    from cosyvoice_ext.tiny.workspace import make_workspace

    rev, family = SETUPS[request.param]
    tree = upstream_at(rev)
    # two train shards: upstream partitions data by shard, so 2 ranks need at least 2
    ws = make_workspace(tmp_path_factory.mktemp(f"ws-{family}-{rev}"), n_train=12, n_cv=4, upstream=tree,
                        family=family, extra=LORA, lr=0.01, max_frames_in_batch=400, shards=2)
    return Setup(request.param, family, tree, ws)


def train(s: Setup, model: str, model_dir: Path, *, pythonpath_first: Path | None = None, **kw):
    from cosyvoice_ext.tiny.workspace import train_command, train_env

    ws = s.ws
    env = train_env(s.tree)
    if pythonpath_first is not None:
        env["PYTHONPATH"] = f"{pythonpath_first}:{env['PYTHONPATH']}"
    res = subprocess.run(train_command(ws, s.tree, model, model_dir, **kw), env=env, capture_output=True, text=True,
                         timeout=900)
    res.log = res.stdout + res.stderr
    return res


def base_of(s: Setup, model: str) -> Path:
    return s.ws.llm_ckpt if model == "llm" else s.ws.flow_ckpt


def first_run(s: Setup, model: str, tmp_path_factory) -> tuple[Path, str]:
    """Two epochs of LoRA from the base checkpoint, once per (family, model), shared by the tests."""
    if model not in s.runs:
        exp = tmp_path_factory.mktemp(f"run-{s.name}-{model}") / "exp"
        res = train(s, model, exp, checkpoint=base_of(s, model))
        assert res.returncode == 0, res.log[-4000:]
        s.runs[model] = (exp, res.log)
    return s.runs[model]


def probe(s: Setup, *args: str) -> dict:
    from cosyvoice_ext.tiny.workspace import train_env

    res = subprocess.run([sys.executable, str(PROBE), *args], env=train_env(s.tree), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model", ["llm", "flow"])
def test_lora_trains_and_exports_a_stock_checkpoint_that_loads_strictly(setup, model, tmp_path, tmp_path_factory):
    s = setup
    exp, log = first_run(s, model, tmp_path_factory)
    assert re.search(r"cosyext lora: base checkpoint .*: (\d+)/\1 model keys loaded \(100\.0%\)", log)
    assert re.search(r"LoRA r=8 on \d+ modules \(target_modules [^)]+\); trainable [\d,]+ / total [\d,]+ parameters", log)
    assert {int(m.group(1)) for m in LOSS_LINE.finditer(log)} == {0, 1}, "INFO loss lines in both epochs"
    first, last = (checkpoints.load(exp / f) for f in ("init.pt", "epoch_1_whole.pt"))
    assert checkpoints.is_adapter(last) and last["step"] > 0 and last["epoch"] == 1
    assert any(not torch.equal(first["lora"][k], last["lora"][k]) for k in last["lora"])
    assert (exp / "epoch_1_whole.pt").stat().st_size < base_of(s, model).stat().st_size / 2

    out = tmp_path / f"{model}.pt"
    res = run_cosyext("export", "--model", model, "--run", str(exp), "--config", str(s.ws.config),
                      "--qwen-pretrain-path", str(s.ws.qwen_dir), "--upstream", str(s.tree), "-o", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    merged, base = checkpoints.load(out), checkpoints.load(base_of(s, model))
    assert list(merged) == [k for k in base if k not in ("epoch", "step")]  # exactly the stock keys, in order
    checked = probe(s, "export-check", str(s.ws.config), model, str(out), str(base_of(s, model)), str(s.ws.qwen_dir),
                    str(s.ws.cv_list))
    expected_class = {("cosyvoice2", "llm"): "Qwen2LM", ("cosyvoice2", "flow"): "CausalMaskedDiffWithXvec",
                      ("cosyvoice3", "llm"): "CosyVoice3LM", ("cosyvoice3", "flow"): "CausalMaskedDiffWithDiT"}
    assert checked["class"] == expected_class[(s.family, model)]  # loaded with strict=True
    before, after = checked["base_loss"], checked["exported_loss"]
    print(f"\n{s.name} {model}: CV loss base {before:.4f} -> exported LoRA {after:.4f}")
    assert after < before


@pytest.mark.parametrize("model", ["llm", "flow"])
def test_resume_from_an_adapter_continues_exactly(setup, model, tmp_path, tmp_path_factory):
    s = setup
    exp, _ = first_run(s, model, tmp_path_factory)
    stopped = checkpoints.load(exp / "epoch_0_whole.pt")
    res = train(s, model, tmp_path / "again", checkpoint=exp / "epoch_0_whole.pt")
    assert res.returncode == 0, res.log[-4000:]
    assert f"start step {stopped['step']} start epoch 0" in res.log
    assert re.search(r"resumed \d+ LoRA and 0 modules_to_save tensors", res.log)
    assert {int(m.group(1)) for m in LOSS_LINE.finditer(res.log)} == {1}  # only epoch 1 is left
    start = checkpoints.load(tmp_path / "again" / "init.pt")  # saved by train.py after our prepare_model
    assert (start["step"], start["epoch"]) == (stopped["step"], 0)
    assert start["lora"].keys() == stopped["lora"].keys()
    assert all(torch.equal(start["lora"][k], stopped["lora"][k]) for k in stopped["lora"])


@pytest.mark.parametrize("model", ["llm", "flow"])
def test_two_ranks_hold_identical_lora_weights(setup, model, tmp_path):
    s = setup
    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "sitecustomize.py").write_text(textwrap.dedent(SPY_PLUGIN))
    exp = tmp_path / "exp"
    res = train(s, model, exp, nproc=2, checkpoint=base_of(s, model), pythonpath_first=spy)
    assert res.returncode == 0, res.log[-4000:]
    assert {m.group(0)[-1] for m in re.finditer(r" INFO TRAIN Batch .* rank [01]", res.log)} == {"0", "1"}
    for epoch in (0, 1):
        r0, r1 = (torch.load(exp / f"spy_rank{r}_epoch{epoch}.pt", weights_only=True) for r in (0, 1))
        assert r0.keys() == r1.keys() and r0
        assert all(torch.equal(r0[k], r1[k]) for k in r0), f"ranks differ after epoch {epoch}"


@pytest.mark.parametrize("family, model", [("cosyvoice2", "flow"), ("cosyvoice3", "llm"), ("cosyvoice3", "flow")])
def test_online_feature_extraction_trains_too(upstream_at, family, model, tmp_path):
    """`--onnx_path DIR` at ace7c47: tokens and speaker embeddings computed by the ONNX models while
    training, from data that carries neither (every other run here is `--onnx_path ''`: precomputed)."""
    from cosyvoice_ext.tiny.workspace import make_workspace

    tree = upstream_at(MAIN)
    ws = make_workspace(tmp_path / "ws", n_train=8, n_cv=2, upstream=tree, family=family, extra=LORA, lr=0.01,
                        max_frames_in_batch=400, max_epoch=1, online_features=True)
    assert ws.onnx_dir is not None
    s = Setup(f"{family}@2026-online", family, tree, ws)
    res = train(s, model, ws.root / "exp", checkpoint=ws.llm_ckpt if model == "llm" else ws.flow_ckpt)
    assert res.returncode == 0, res.log[-4000:]
    # the data holds no speech tokens: upstream's filter drops every such sample unless they are extracted online
    assert LOSS_LINE.search(res.log)
    assert checkpoints.is_adapter(checkpoints.load(ws.root / "exp" / "epoch_0_whole.pt"))
