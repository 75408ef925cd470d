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
from tests.test_lora_helpers import (  # cv3*: fixtures, registered by importing them here
    cv3, cv3_outputs, cv3_root, cv3_tree, load_configs, max_abs_diff, outputs, randomize_lora, tiny_workspace,
    train_args,
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


# --- CosyVoice3 (upstream ace7c47) and `export --serve` ------------------------------------------------


@pytest.mark.parametrize("name", ["llm", "flow"])
def test_cosyvoice3_export_equals_the_lora_model_and_loads_strictly(cv3, tmp_path, name):
    model = lora_model(cv3, name, seed=23)
    run = tmp_path / "run"
    run.mkdir()
    write_epoch(run, model, 0, 1.0)
    out = export_mod.export(model=name, config=cv3.config, out=tmp_path / f"{name}.pt", run_dir=run,
                            progress=lambda m: None)  # base: the path the adapter recorded
    state = checkpoints.load(out)
    assert list(state) == list(checkpoints.load(cv3.base[name]))  # exactly the stock CosyVoice3 keys, in order
    fresh = load_configs(cv3, name, seed=77)[name]
    fresh.load_state_dict(state, strict=True)
    base = load_configs(cv3, name, seed=78)[name]
    base.load_state_dict(checkpoints.tensors(checkpoints.load(cv3.base[name])), strict=True)
    lora_out = cv3_outputs(model, name)
    diff, moved = max_abs_diff(lora_out, cv3_outputs(fresh, name)), max_abs_diff(lora_out, cv3_outputs(base, name))
    print(f"\ncosyvoice3 {name}: merged vs LoRA max abs diff {diff:.2e} (loss {float(lora_out['loss']):.6f}); "
          f"LoRA vs base {moved:.2e}")
    assert diff <= 1e-5
    assert moved > 1e-3


def test_cosyvoice3_export_command_line(cv3, cv3_tree, tmp_path):
    model = lora_model(cv3, "flow", seed=9)
    run = tmp_path / "run"
    run.mkdir()
    write_epoch(run, model, 0, 0.7)
    write_epoch(run, model, 1, 0.6)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    proc = run_cosyext("export", "--model", "flow", "--run", str(run), "--config", str(cv3.config),
                       "--upstream", str(cv3_tree), "-o", str(tmp_path / "out") + "/", env=env)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out" / "flow.pt"
    assert "[1/1] merging" in proc.stderr and "epoch_1_whole.pt" in proc.stderr and f"wrote {out}" in proc.stderr
    fresh = load_configs(cv3, "flow", seed=5)["flow"]
    fresh.load_state_dict(checkpoints.load(out), strict=True)
    assert max_abs_diff(cv3_outputs(model, "flow"), cv3_outputs(fresh, "flow")) <= 1e-5


def _pretrained_dir(dest, fam: str, ws) -> "os.PathLike":
    """A model dir laid out as the released ones (files upstream's inference class opens; ONNX as placeholders)."""
    import shutil

    from cosyvoice_ext import family

    f = family.get(fam)
    dest.mkdir(parents=True)
    shutil.copy(ws.config, dest / f.config_name)
    shutil.copytree(ws.qwen, dest / "CosyVoice-BlankEN")
    for name in ("llm", "flow"):
        shutil.copy(ws.base[name], dest / f"{name}.pt")
    torch.save({"w": torch.zeros(3)}, dest / "hift.pt")
    (dest / "campplus.onnx").write_bytes(b"onnx placeholder")
    (dest / f.speech_tokenizer).write_bytes(b"onnx placeholder")
    torch.save({"stock_voice": {"embedding": torch.ones(1, 192)}}, dest / "spk2info.pt")
    return dest


def _speaker_list(dest, spk: str, embeddings) -> "os.PathLike":
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard = dest / "shard_0.parquet"
    pq.write_table(pa.table({"spk": [spk] * len(embeddings), "spk_embedding": embeddings}), shard)
    data_list = dest / "data.list"
    data_list.write_text(f"{shard}\n", encoding="utf-8")
    return data_list


def test_cosyvoice3_export_serve_writes_a_cosyvoice3_model_dir(cv3, cv3_tree, tmp_path, capsys):
    import json

    from hyperpyyaml import load_hyperpyyaml

    from cosyvoice_ext.cli import main
    from tests.helpers import tree_digest

    pre = _pretrained_dir(tmp_path / "Fun-CosyVoice3-0.5B", "cosyvoice3", cv3)
    before = tree_digest(pre)
    emb = [[0.5] * 192, [1.5] * 192]
    data_list = _speaker_list(tmp_path, "spk1", emb)
    run = tmp_path / "run"
    out = tmp_path / "serve" / "my_voice"
    models = {}
    for name in ("llm", "flow"):
        models[name] = lora_model(cv3, name, seed=31)
        (run / name).mkdir(parents=True)
        write_epoch(run / name, models[name], 0, 0.5)
        assert main(["export", "--model", name, "--run", str(run / name), "--config", str(cv3.config),
                     "--upstream", str(cv3_tree), "--serve", str(pre), "--speaker-data", str(data_list),
                     "--speaker-name", "my_voice", "--description", "tiny cv3 voice", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"serve with: CosyVoice3('{out}')" in printed
    assert tree_digest(pre) == before, "the pretrained directory must never be modified"
    for linked in ("cosyvoice3.yaml", "speech_tokenizer_v3.onnx", "campplus.onnx", "hift.pt", "CosyVoice-BlankEN"):
        assert (out / linked).is_symlink() and (out / linked).resolve() == (pre / linked).resolve(), linked
    # what CosyVoice3(model_dir) does: build from the dir's cosyvoice3.yaml with its Qwen dir, load llm/flow strictly
    with open(out / "cosyvoice3.yaml", encoding="utf-8") as f:
        configs = load_hyperpyyaml(f, overrides={"qwen_pretrain_path": str(out / "CosyVoice-BlankEN")})
    for name in ("llm", "flow"):
        assert not (out / f"{name}.pt").is_symlink()
        configs[name].load_state_dict(torch.load(out / f"{name}.pt", weights_only=True), strict=True)
        assert max_abs_diff(cv3_outputs(models[name], name), cv3_outputs(configs[name], name)) <= 1e-5
    spk2info = torch.load(out / "spk2info.pt", weights_only=True)
    assert set(spk2info) == {"stock_voice", "my_voice"}
    assert torch.allclose(spk2info["my_voice"]["embedding"], torch.ones(1, 192))  # mean of 0.5 and 1.5
    doc = json.loads((out / "speaker_config.json").read_text(encoding="utf-8"))  # the keyed form cosyext serve reads
    assert doc["default_speaker"] == "my_voice" and list(doc["speakers"]) == ["my_voice"]
    assert doc["speakers"]["my_voice"] == {"type": "merged", "model_dir": ".", "spk_id": "my_voice",
                                           "description": "tiny cv3 voice", "active": True, "family": "cosyvoice3",
                                           "merged": ["flow", "llm"]}


def test_export_serve_refuses_a_pretrained_dir_of_the_other_family(cv3, cv3_tree, tmp_path, capsys):
    from cosyvoice_ext.cli import main

    pre = _pretrained_dir(tmp_path / "CosyVoice2-0.5B", "cosyvoice2", cv3)  # a CosyVoice2 dir, CosyVoice3 config
    model = lora_model(cv3, "llm", seed=3)
    run = tmp_path / "run"
    run.mkdir()
    write_epoch(run, model, 0, 0.5)
    out = tmp_path / "serve" / "x"
    assert main(["export", "--model", "llm", "--run", str(run), "--config", str(cv3.config), "--upstream",
                 str(cv3_tree), "--serve", str(pre), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "builds CosyVoice3LM (cosyvoice3) but --serve" in err
    assert "is a CosyVoice2 model dir (cosyvoice2.yaml)" in err
    assert "next: pass the pretrained dir of the family" in err
    assert not out.exists()  # checked before anything is merged or written


def test_check_pretrained_knows_both_families(tmp_path):
    from cosyvoice_ext import family
    from cosyvoice_ext.lora.export import serve

    for fam in ("cosyvoice2", "cosyvoice3"):
        d = tmp_path / fam
        d.mkdir()
        f = family.get(fam)
        for name in serve.required(f):
            (d / name).write_bytes(b"x")
        assert serve.check_pretrained(d) is f
        assert serve.check_pretrained(d, expected=f) is f
    with pytest.raises(UsageError, match="is a CosyVoice3 model dir .* the config trains CosyVoice2 models"):
        serve.check_pretrained(tmp_path / "cosyvoice3", expected=family.COSYVOICE2)
    (tmp_path / "cosyvoice3" / "speech_tokenizer_v3.onnx").unlink()
    (tmp_path / "cosyvoice3" / "speech_tokenizer_v2.onnx").write_bytes(b"x")  # the v2 one does not stand in
    with pytest.raises(UsageError, match=r"not a complete CosyVoice3 pretrained directory \(missing "
                                         r"speech_tokenizer_v3.onnx\)") as err:
        serve.check_pretrained(tmp_path / "cosyvoice3")
    assert "Fun-CosyVoice3-0.5B" in err.value.hint
    (tmp_path / "none").mkdir()
    with pytest.raises(UsageError, match="not a CosyVoice2 or CosyVoice3 pretrained directory "
                                         r"\(no cosyvoice2.yaml or cosyvoice3.yaml; also missing llm.pt"):
        serve.check_pretrained(tmp_path / "none")


# --- issue 10: nothing lost, nothing silent (the unit-tier cases are in test_data_safety.py) ---------------


def test_export_over_the_base_is_refused_and_later_exports_still_work(ws, tmp_path, capsys):
    """`-o pretrained/llm.pt` used to overwrite the base; every later export then failed its sha256 check."""
    from cosyvoice_ext.cli import main
    from tests.helpers import tree_digest

    pre = _pretrained_dir(tmp_path / "CosyVoice2-0.5B", "cosyvoice2", ws)
    before = tree_digest(pre)
    run = tmp_path / "run"
    run.mkdir()
    write_epoch(run, lora_model(ws, "llm", seed=5), 0, 0.5)
    common = ["export", "--model", "llm", "--run", str(run), "--config", str(ws.config), "--base", str(pre / "llm.pt")]
    assert main([*common, "-o", str(pre / "llm.pt")]) == 2
    assert "which is --base" in capsys.readouterr().err
    assert main([*common, "--serve", str(pre), "-o", str(pre / "voice")]) == 2  # used to make pre/voice/voice -> itself
    assert "inside --serve" in capsys.readouterr().err
    assert tree_digest(pre) == before and not (pre / "voice").exists()
    link = tmp_path / "link.pt"
    link.symlink_to(pre / "llm.pt")  # a link at -o is replaced by the rename, never written through
    assert main([*common, "-o", str(link)]) == 0
    assert not link.is_symlink() and tree_digest(pre) == before
    assert main([*common, "-o", str(tmp_path / "ok.pt")]) == 0  # the base is intact: its sha256 still matches
    fresh = load_configs(ws, "llm", seed=2)["llm"]
    fresh.load_state_dict(checkpoints.load(tmp_path / "ok.pt"), strict=True)


def test_export_refuses_nan_or_inf_weights_naming_the_tensor(ws, tmp_path):
    model = lora_model(ws, "flow", seed=6)
    key = next(n for n, _ in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        dict(model.named_parameters())[key][0, 0] = float("nan")
    run = tmp_path / "run"
    run.mkdir()
    write_epoch(run, model, 0, 0.5)
    with pytest.raises(CheckpointError, match=rf"adapter {run / 'epoch_0_whole.pt'}: tensor \S*lora_B\S* holds 1 NaN "
                                              r"value\(s\) of \d+; refusing to export non-finite weights"):
        export_mod.export(model="flow", config=ws.config, out=tmp_path / "x.pt", run_dir=run, base=ws.base["flow"],
                          progress=lambda m: None)
    state = checkpoints.load(ws.base["flow"])
    name = next(k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    state[name] = state[name].clone().fill_(float("inf"))
    torch.save(state, tmp_path / "inf.pt")  # a full (merged) checkpoint
    with pytest.raises(CheckpointError, match=rf"checkpoint {tmp_path / 'inf.pt'}: tensor {name} holds \d+ Inf value"):
        export_mod.export(model="flow", config=ws.config, out=tmp_path / "y.pt", checkpoint=tmp_path / "inf.pt",
                          progress=lambda m: None)
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()
