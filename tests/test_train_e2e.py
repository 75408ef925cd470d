"""The stock upstream train.py under real torchrun on CPU, with and without our patch series.

Real upstream code (PyPI-assembled, hash-verified), tiny model and data generated here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from cosyvoice_ext.upstream import pin

pytestmark = [pytest.mark.slow, pytest.mark.upstream]

LOSS_LINE = re.compile(r" INFO TRAIN Batch (\d+)/(\d+) loss (\d+\.\d+)")
CV_LINE = re.compile(r" INFO Epoch (\d+) Step \d+ CV info")


@pytest.fixture(scope="module")
def ws(tmp_path_factory, upstream_tree):
    from cosyvoice_ext.tiny.workspace import make_workspace

    return make_workspace(tmp_path_factory.mktemp("ws"), n_train=12, n_cv=4, upstream=upstream_tree)


def train(ws, upstream: Path, model: str, model_dir: Path, *, env_extra: dict | None = None, **kw):
    from cosyvoice_ext.tiny.workspace import train_command, train_env

    env = train_env(upstream)
    env.update(env_extra or {})
    cmd = train_command(ws, upstream, model, model_dir, **kw)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    res.log = res.stdout + res.stderr
    return res


def load_back(ws, upstream: Path, model: str, ckpt: Path) -> None:
    """A saved checkpoint loads with strict=True into a fresh stock model built from the config."""
    import sys

    from cosyvoice_ext.tiny.config import load_tiny_config

    sys.path[:0] = [str(upstream), str(upstream / pin.MATCHA_PATH)]
    try:
        configs = load_tiny_config(ws.config, model, qwen_dir=ws.qwen_dir)
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert isinstance(state.pop("epoch"), int) and isinstance(state.pop("step"), int)
        configs[model].load_state_dict(state, strict=True)
    finally:
        del sys.path[:2]


@pytest.mark.parametrize("model", ["llm", "flow"])
def test_two_epochs_one_rank_with_info_loss_lines(ws, upstream_tree, tmp_path, model):
    res = train(ws, upstream_tree, model, tmp_path / "exp", checkpoint=getattr(ws, f"{model}_ckpt"))
    assert res.returncode == 0, res.log[-4000:]
    epochs = {int(m.group(1)) for m in LOSS_LINE.finditer(res.log)}
    assert epochs == {0, 1}, "per-step losses must be logged at INFO in both epochs"
    assert {int(m.group(1)) for m in CV_LINE.finditer(res.log)} == {0, 1}
    for name in ("init", "epoch_0_whole", "epoch_1_whole"):
        ckpt = tmp_path / "exp" / f"{name}.pt"
        assert ckpt.stat().st_size > 0
        load_back(ws, upstream_tree, model, ckpt)
    assert not list((tmp_path / "exp").glob("*.tmp"))
    first = torch.load(tmp_path / "exp/init.pt", weights_only=True)
    last = torch.load(tmp_path / "exp/epoch_1_whole.pt", weights_only=True)
    assert last["step"] > 0
    assert any(not torch.equal(first[k], last[k]) for k in first if isinstance(first[k], torch.Tensor)), \
        "training did not change any weight"


def test_two_ranks_uneven_data_finish_without_deadlock_or_empty_checkpoint(ws, upstream_tree, tmp_path):
    from cosyvoice_ext.tiny.config import write_tiny_config
    from cosyvoice_ext.tiny.data import write_parquet_dataset

    # upstream partitions by shard: rank A gets 8 utterances, rank B 2; small batches make it uneven
    uneven = write_parquet_dataset(tmp_path / "uneven", 10, shard_sizes=[8, 2], seed=3)
    config = write_tiny_config(tmp_path / "conf.yaml", ws.qwen_dir, max_frames_in_batch=400)
    ws2 = dataclasses.replace(ws, train_list=uneven, config=config)
    res = train(ws2, upstream_tree, "llm", tmp_path / "exp", nproc=2, checkpoint=ws.llm_ckpt)
    assert res.returncode == 0, res.log[-4000:]
    assert "Detected uneven workload distribution" in res.log
    assert {m.group(0).split()[-1] for m in re.finditer(r"rank [01]\b", res.log)} >= {"0", "1"}
    ckpts = sorted((tmp_path / "exp").glob("*.pt"))
    assert [c.name for c in ckpts] == ["epoch_0_whole.pt", "epoch_1_whole.pt", "init.pt"]
    for ckpt in ckpts:
        assert ckpt.stat().st_size > 0
        load_back(ws, upstream_tree, "llm", ckpt)


def test_unpatched_upstream_fails_the_same_command(ws, pristine_tree, tmp_path):
    """Proof the series matters: the stock tree cannot run this CPU training at all."""
    res = train(ws, pristine_tree, "llm", tmp_path / "exp", checkpoint=ws.llm_ckpt)
    assert res.returncode != 0, "unpatched upstream unexpectedly trained"
    assert "train.py FAILED" in res.log
    # on CPU it dies at torch.cuda.set_device; on a GPU at prefetch_factor or ProcessGroup.options
    assert re.search(r"NVIDIA driver|No CUDA GPUs|prefetch_factor|options\._timeout", res.log), res.log[-3000:]
    assert not LOSS_LINE.search(res.log)


def _shadow(tmp_path, upstream: Path, body: str) -> str:
    """PYTHONPATH that puts a fake `cosyvoice_ext` package (its __init__ is `body`) ahead of the real one."""
    from cosyvoice_ext.tiny.workspace import train_env

    shadow = tmp_path / "shadow" / "cosyvoice_ext"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(body)
    return f"{shadow.parent}{os.pathsep}{train_env(upstream)['PYTHONPATH']}"


NOT_INSTALLED = "raise ModuleNotFoundError(\"No module named 'cosyvoice_ext'\", name='cosyvoice_ext')\n"


def test_patched_upstream_trains_without_cosyvoice_ext(ws, upstream_tree, tmp_path):
    """The hook points are a no-op when cosyvoice_ext is not installed at all."""
    pythonpath = _shadow(tmp_path, upstream_tree, NOT_INSTALLED)
    res = train(ws, upstream_tree, "llm", tmp_path / "exp", checkpoint=ws.llm_ckpt,
                env_extra={"PYTHONPATH": pythonpath})
    assert res.returncode == 0, res.log[-4000:]
    assert LOSS_LINE.search(res.log)
    assert (tmp_path / "exp/epoch_1_whole.pt").stat().st_size > 0


def test_a_broken_cosyvoice_ext_stops_training_instead_of_a_silent_full_fine_tune(ws, upstream_tree, tmp_path):
    pythonpath = _shadow(tmp_path, upstream_tree, "import pluggy_that_is_not_installed\n")  # a dependency is missing
    res = train(ws, upstream_tree, "llm", tmp_path / "exp", checkpoint=ws.llm_ckpt,
                env_extra={"PYTHONPATH": pythonpath})
    assert res.returncode != 0
    assert "cosyvoice-ext is installed but cannot be imported" in res.log and "pluggy_that_is_not_installed" in res.log
    assert not LOSS_LINE.search(res.log) and not list((tmp_path / "exp").glob("*.pt"))


def test_a_cosyext_section_without_cosyvoice_ext_refuses_to_train(ws, upstream_tree, tmp_path):
    from cosyvoice_ext.tiny.config import write_tiny_config
    config = write_tiny_config(tmp_path / "lora.yaml", ws.qwen_dir, extra="cosyext:\n  llm: {r: 4}\n")
    pythonpath = _shadow(tmp_path, upstream_tree, NOT_INSTALLED)
    res = train(dataclasses.replace(ws, config=config), upstream_tree, "llm", tmp_path / "exp",
                checkpoint=ws.llm_ckpt, env_extra={"PYTHONPATH": pythonpath})
    assert res.returncode != 0
    assert "the config has a cosyext: section, but cosyvoice-ext is not installed" in res.log
    assert not LOSS_LINE.search(res.log)


DS_CONFIG = """{
  "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "steps_per_print": 1,
  "gradient_clipping": 5, "fp16": {"enabled": false}, "bf16": {"enabled": false},
  "zero_optimization": {"stage": 0},
  "optimizer": {"type": "AdamW", "params": {"lr": 0.001, "torch_adam": true}}
}"""


def test_deepspeed_engine_on_cpu(ws, upstream_tree, tmp_path):
    """The DeepSpeed path of the stock train.py also runs on CPU (patch 0008 fixes its logging)."""
    from cosyvoice_ext.tiny.config import write_tiny_config

    ds = tmp_path / "ds.json"
    ds.write_text(DS_CONFIG)
    config = write_tiny_config(tmp_path / "conf.yaml", ws.qwen_dir, scheduler="warmuplr")
    res = train(dataclasses.replace(ws, config=config), upstream_tree, "llm", tmp_path / "exp",
                checkpoint=ws.llm_ckpt, extra_args=["--train_engine", "deepspeed", "--deepspeed_config", str(ds)])
    assert res.returncode == 0, res.log[-4000:]
    assert {int(m.group(1)) for m in LOSS_LINE.finditer(res.log)} == {0, 1}
    assert (tmp_path / "exp/epoch_1_whole/mp_rank_00_model_states.pt").stat().st_size > 0
