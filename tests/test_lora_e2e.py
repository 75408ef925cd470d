"""LoRA end to end at the 2025 pin: the stock train.py under real torchrun (CPU, gloo) on the patched tree.

The `cosyext:` section in the config is the only difference from a full fine-tune command line.
Resume and 2 ranks for every supported setup (this one included) are in test_e2e_upstreams.py.
"""

from __future__ import annotations

import random
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch

from cosyvoice_ext import checkpoints
from cosyvoice_ext.lora import export as export_mod

pytestmark = [pytest.mark.slow, pytest.mark.upstream]

LORA = """\
cosyext:
  llm:
    r: 8
    alpha: 16
    dropout: 0.0
  flow:
    r: 8
    alpha: 16
    dropout: 0.0
"""
#: merged vs unmerged audio (same seed), as tests/test_synth.py states it
MERGE_TOLERANCE = 1e-5
LOSS_LINE = re.compile(r" INFO TRAIN Batch (\d+)/(\d+) loss (\d+\.\d+)")

@pytest.fixture(scope="module")
def ws(tmp_path_factory, upstream_tree):
    from cosyvoice_ext.tiny.workspace import make_workspace

    # small batches: several optimizer steps per epoch, so two epochs of LoRA visibly learn
    return make_workspace(tmp_path_factory.mktemp("lora_ws"), n_train=12, n_cv=4, upstream=upstream_tree,
                          extra=LORA, lr=0.01, max_frames_in_batch=400)


@pytest.fixture(scope="module")
def runs(ws, upstream_tree, tmp_path_factory):
    """Two-epoch LoRA runs from the base checkpoint, trained once per model and shared by the tests."""
    done: dict[str, tuple[Path, str]] = {}

    def get(name: str) -> tuple[Path, str]:
        if name not in done:
            exp = tmp_path_factory.mktemp(f"run_{name}") / "exp"
            res = train(ws, upstream_tree, name, exp, checkpoint=ws.llm_ckpt if name == "llm" else ws.flow_ckpt)
            assert res.returncode == 0, res.log[-4000:]
            done[name] = (exp, res.log)
        return done[name]
    return get


def train(ws, upstream: Path, model: str, model_dir: Path, *, pythonpath_first: Path | None = None, **kw):
    from cosyvoice_ext.tiny.workspace import train_command, train_env

    env = train_env(upstream)
    if pythonpath_first is not None:
        env["PYTHONPATH"] = f"{pythonpath_first}:{env['PYTHONPATH']}"
    res = subprocess.run(train_command(ws, upstream, model, model_dir, **kw), env=env, capture_output=True,
                         text=True, timeout=900)
    res.log = res.stdout + res.stderr
    return res


def cv_loss(ws, upstream: Path, name: str, state: dict) -> float:
    """Mean CV loss of the stock model holding `state`, through upstream's own data pipeline."""
    from cosyvoice_ext.tiny.config import load_tiny_config
    from cosyvoice_ext.tiny.workspace import upstream_on_path

    with upstream_on_path(upstream):
        from cosyvoice.dataset.dataset import Dataset

        configs = load_tiny_config(ws.config, name, qwen_dir=ws.qwen_dir, seed=0)
        model = configs[name]
        model.load_state_dict(state, strict=True)
        model.eval()
        data = Dataset(str(ws.cv_list), data_pipeline=configs["data_pipeline"], mode="train", gan=False, dpo=False,
                       shuffle=False, partition=False)
        total, n = 0.0, 0
        random.seed(0)
        torch.manual_seed(0)
        with torch.no_grad():
            for batch in data:
                utts = len(batch["utts"])
                total += float(model(batch, torch.device("cpu"))["loss"]) * utts
                n += utts
    return total / n


@pytest.mark.parametrize("name, average", [("llm", 1), ("flow", 2)])
def test_lora_two_epochs_export_and_the_adapter_learned(ws, upstream_tree, runs, tmp_path, name, average):
    base = ws.llm_ckpt if name == "llm" else ws.flow_ckpt
    exp, log = runs(name)
    assert re.search(r"cosyext lora: base checkpoint .*: (\d+)/\1 model keys loaded \(100\.0%\)", log)
    assert re.search(r"LoRA r=8 on \d+ modules \(target_modules [^)]+\); trainable [\d,]+ / total [\d,]+ parameters", log)
    assert {int(m.group(1)) for m in LOSS_LINE.finditer(log)} == {0, 1}

    first, last = (checkpoints.load(exp / f) for f in ("init.pt", "epoch_1_whole.pt"))
    assert checkpoints.is_adapter(last) and last["step"] > 0 and last["epoch"] == 1
    assert last["cosyext"]["base_checkpoint"]["sha256"] == checkpoints.file_digest(base)
    assert any(not torch.equal(first["lora"][k], last["lora"][k]) for k in last["lora"])
    print(f"\n{name}: adapter {(exp / 'epoch_1_whole.pt').stat().st_size} bytes, base {base.stat().st_size} bytes")

    out = export_mod.export(model=name, config=ws.config, out=tmp_path / f"{name}.pt", run_dir=exp, base=base,
                            qwen_pretrain_path=str(ws.qwen_dir), average_n=average, val_best=True, progress=print)
    merged = checkpoints.load(out)
    before = cv_loss(ws, upstream_tree, name, checkpoints.tensors(checkpoints.load(base)))
    after = cv_loss(ws, upstream_tree, name, merged)
    print(f"{name}: CV loss base {before:.4f} -> exported LoRA {after:.4f}")
    assert after < before


def test_deepspeed_engine_trains_lora_and_export_reads_its_run(ws, upstream_tree, tmp_path):
    """LoRA is injected before deepspeed.initialize; export merges DeepSpeed's model-states files."""
    import dataclasses
    import json

    from cosyvoice_ext.tiny.config import write_tiny_config

    # upstream's DeepSpeed path passes scheduler_conf to the scheduler: constantlr cannot take warmup_steps
    config = write_tiny_config(tmp_path / "ds.yaml", ws.qwen_dir, extra=LORA, lr=0.01, max_frames_in_batch=400,
                               scheduler="warmuplr")
    ws = dataclasses.replace(ws, config=config)

    ds_config = tmp_path / "ds.json"
    ds_config.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 5,
        "steps_per_print": 1, "fp16": {"enabled": False}, "bf16": {"enabled": False},
        "zero_optimization": {"stage": 0},
        "optimizer": {"type": "Adam", "params": {"lr": 0.01, "torch_adam": True}},
    }))
    exp = tmp_path / "exp"
    res = train(ws, upstream_tree, "llm", exp, checkpoint=ws.llm_ckpt,
                extra_args=["--train_engine", "deepspeed", "--deepspeed_config", str(ds_config)])
    assert res.returncode == 0, res.log[-4000:]
    assert re.search(r"LoRA r=8 on \d+ modules \(target_modules [^)]+\); trainable", res.log)
    states = checkpoints.load(exp / "epoch_1_whole" / export_mod.DEEPSPEED_STATES)
    assert any(".lora_B." in k for k in states["module"])

    out = export_mod.export(model="llm", config=ws.config, out=tmp_path / "llm.pt", run_dir=exp,
                            qwen_pretrain_path=str(ws.qwen_dir), average_n=2, val_best=True, progress=print)
    merged, base = checkpoints.load(out), checkpoints.load(ws.llm_ckpt)
    assert list(merged) == [k for k in base if k not in ("epoch", "step")]
    key = "llm.model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[key], base[key])  # the adapter was trained and folded in
    assert torch.equal(merged["llm_decoder.weight"], base["llm_decoder.weight"])  # frozen stays frozen


def test_a_base_checkpoint_of_another_model_stops_training_with_a_clear_message(ws, upstream_tree, tmp_path):
    res = train(ws, upstream_tree, "llm", tmp_path / "exp", checkpoint=ws.flow_ckpt)
    assert res.returncode != 0
    assert re.search(r"ERROR cosyext lora: base checkpoint .*flow\.pt does not match the model", res.log)
    assert "next: pass the pretrained checkpoint of this model" in res.log
    assert not LOSS_LINE.search(res.log)


def test_multi_node_rendezvous_on_loopback(ws, upstream_tree, tmp_path):
    """Two `torchrun --nnodes=2` processes (one per 'node') rendezvous with c10d on 127.0.0.1 and train LoRA."""
    from cosyvoice_ext.tiny.workspace import free_port, train_command, train_env

    port, exp = free_port(), tmp_path / "exp"
    procs = []
    for node in (0, 1):
        cmd = train_command(ws, upstream_tree, "llm", exp, checkpoint=ws.llm_ckpt)
        at = next(i for i, a in enumerate(cmd) if a.startswith("--master_port="))
        cmd[at:at + 1] = ["--nnodes=2", f"--node_rank={node}", "--rdzv_backend=c10d",
                          f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=cosyext-multinode-test"]
        procs.append(subprocess.Popen(cmd, env=train_env(upstream_tree), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    joined = "\n".join(logs)
    assert "world_size 2" in joined
    assert {m.group(0)[-1] for m in re.finditer(r" INFO TRAIN Batch .* rank [01]", joined)} == {"0", "1"}
    state = checkpoints.load(exp / "epoch_1_whole.pt")
    assert checkpoints.is_adapter(state) and state["lora"]


def test_export_serve_builds_a_model_dir_upstream_inference_loads(ws, upstream_tree, runs, tmp_path):
    """--serve: pretrained files linked untouched, merged llm.pt/flow.pt, the speaker in spk2info.pt; then
    upstream's real CosyVoice2 from this tree (44316c34: the prompt is a 16 kHz tensor) loads the exported dir
    through `cosyext synth` and speaks as the registered speaker and zero-shot, and the same llm+flow adapters
    applied in memory to the pretrained dir give the merged dir's audio for the same seed."""
    import json
    import shutil

    import numpy as np
    import pyarrow.parquet as pq
    import soundfile

    from cosyvoice_ext.cli import main
    from cosyvoice_ext.tiny.inference import DEFAULT_SPEAKER, make_inference_dir
    from cosyvoice_ext.tiny.workspace import upstream_on_path
    from tests.helpers import tree_digest
    from tests.synth_probe import cli, run_probe

    # a complete model dir (real HiFT, stand-in ONNX models) whose llm.pt/flow.pt are the runs' base checkpoints
    pre = tmp_path / "CosyVoice2-0.5B"
    started = time.perf_counter()
    with upstream_on_path(upstream_tree):
        make_inference_dir(pre, family="cosyvoice2", upstream=upstream_tree)
    built = time.perf_counter() - started
    assert tree_digest(pre / "CosyVoice-BlankEN") == tree_digest(ws.qwen_dir)
    shutil.copy(ws.llm_ckpt, pre / "llm.pt")
    shutil.copy(ws.flow_ckpt, pre / "flow.pt")
    before = tree_digest(pre)
    out = tmp_path / "serve" / "my_voice"
    (llm_run, _), (flow_run, _) = runs("llm"), runs("flow")
    for name, run in (("llm", llm_run), ("flow", flow_run)):
        assert main(["export", "--model", name, "--run", str(run), "--config", str(ws.config),
                     "--qwen-pretrain-path", str(ws.qwen_dir), "--upstream", str(upstream_tree),
                     "--serve", str(pre), "--speaker-data", str(ws.train_list), "--speaker-name", "my_voice",
                     "--description", "tiny test voice", "-o", str(out)]) == 0
    assert tree_digest(pre) == before, "the pretrained directory must never be modified"
    for linked in ("hift.pt", "campplus.onnx", "speech_tokenizer_v2.onnx", "CosyVoice-BlankEN", "cosyvoice2.yaml"):
        assert (out / linked).is_symlink() and (out / linked).resolve() == (pre / linked).resolve()
    for name in ("llm", "flow"):
        assert not (out / f"{name}.pt").is_symlink()
    spk2info = torch.load(out / "spk2info.pt", weights_only=True)
    assert set(spk2info) == {DEFAULT_SPEAKER, "my_voice"}
    table = pq.read_table(ws.train_list.read_text().split()[0], columns=["spk_embedding"])
    want = np.asarray(table.column("spk_embedding").to_pylist(), dtype=np.float32).mean(axis=0)
    assert spk2info["my_voice"]["embedding"].shape == (1, 192)
    assert np.allclose(spk2info["my_voice"]["embedding"][0].numpy(), want, atol=1e-6)
    speakers = json.loads((out / "speaker_config.json").read_text())["speakers"]
    entries = speakers if isinstance(speakers, dict) else {e["name"]: e for e in speakers}
    assert list(entries) == ["my_voice"] and entries["my_voice"]["description"] == "tiny test voice"

    # the real class: upstream's CosyVoice2 from this tree loads `out` (no emulation)
    started = time.perf_counter()
    wavs, up = tmp_path / "wavs", ["--upstream", upstream_tree]
    wavs.mkdir()
    text = ["--text", "hello world", "--seed", "0"]
    result = run_probe({"tree": str(upstream_tree), "actions": [
        {"do": "prompt", "dest": str(tmp_path / "prompt.wav"), "seconds": 1.0},
        cli("registered", "synth", "--model-dir", out, "--speaker", "my_voice", *text, "-o", wavs / "registered.wav",
            *up),
        cli("zero_shot", "synth", "--model-dir", out, "--prompt-wav", tmp_path / "prompt.wav", "--prompt-text",
            "希望你以后", *text, "-o", wavs / "zero_shot.wav", *up),
        # float wavs: the comparison sees the model's samples, not their 16-bit rounding
        cli("merged", "synth", "--model-dir", out, "--speaker", DEFAULT_SPEAKER, *text, "-o", wavs / "merged.wav",
            "--format", "float", *up),
        cli("unmerged", "synth", "--pretrained", pre, "--llm", llm_run, "--flow", flow_run, "--speaker",
            DEFAULT_SPEAKER, *text, "-o", wavs / "unmerged.wav", "--format", "float", *up),
        cli("base", "synth", "--pretrained", pre, "--speaker", DEFAULT_SPEAKER, *text, "-o", wavs / "base.wav",
            "--format", "float", *up),
    ]}, tmp_path)
    print(f"\ninference dir {built:.1f} s, synthesis probe {time.perf_counter() - started:.1f} s")
    audio = {}
    for step, got in result["steps"].items():
        assert got["rc"] == 0, f"{step}: exit {got['rc']}\n{got['stderr'][-3000:]}"
        audio[step], sr = soundfile.read(str(wavs / f"{step}.wav"), dtype="float32")
        assert sr == 24000 and len(audio[step]) > 0 and np.isfinite(audio[step]).all()
    assert f"CosyVoice2('{out.resolve()}') from upstream" in result["steps"]["registered"]["stderr"]
    assert "registered speaker 'my_voice'" in result["steps"]["registered"]["stderr"]
    assert result["connects"] == [] and result["downloads"] == []
    assert tree_digest(pre) == before, "synthesis must never write into the model dir"
    merged, unmerged, base = audio["merged"], audio["unmerged"], audio["base"]
    assert len(merged) == len(unmerged)
    diff = float(np.abs(merged - unmerged).max())
    n = min(len(base), len(unmerged))
    print(f"\nCosyVoice2 llm+flow LoRA at 44316c34: merged vs unmerged max |diff| {diff:.3g}; base {len(base)} vs "
          f"adapted {len(unmerged)} samples")
    assert diff <= MERGE_TOLERANCE
    assert len(base) != len(unmerged) or float(np.abs(base[:n] - unmerged[:n]).max()) > 10 * MERGE_TOLERANCE
