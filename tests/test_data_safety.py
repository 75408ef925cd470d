"""Issue 10, "nothing lost": export, prepare and plot never write over (or into) what they read.

Unit tier: tiny files stand in for checkpoints and configs, because every refusal happens before a
model is built (the upstream-tier twins in test_export.py run the same cases through a real merge).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from cosyvoice_ext import checkpoints, family
from cosyvoice_ext.cli import main
from cosyvoice_ext.lora import adapter
from cosyvoice_ext.lora.config import LoraSettings


def snapshot(root: Path) -> dict[str, object]:
    """Every entry below root: file bytes, link targets, directories; 'nothing written' means equal snapshots."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_bytes()
    return out


def read_only(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Make ``directory`` read-only. Root ignores permission bits, so there ``os.access`` (what the commands
    ask before writing) answers as for any other user: by the bits."""
    directory.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    if os.geteuid() != 0:
        return
    real_access, frozen = os.access, directory.resolve()

    def access(path, mode, *args, **kwargs):
        p = Path(path).resolve()
        if mode & os.W_OK and (p == frozen or frozen in p.parents) and not os.stat(p).st_mode & stat.S_IWUSR:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


# --- export ---------------------------------------------------------------------------------------------------


def _adapter(base: Path, model: str = "llm") -> dict:
    cls = {"llm": "cosyvoice.llm.llm.Qwen2LM", "flow": "cosyvoice.flow.flow.CausalMaskedDiffWithXvec"}[model]
    return adapter.build(settings=LoraSettings(model=model), lora={"x.lora_A.default.weight": torch.zeros(2, 2)},
                         modules_to_save={}, targets=["x"], base_path=str(base),
                         base_sha256=checkpoints.file_digest(base), info_dict={"epoch": 0, "step": 3},
                         model_class=cls, family="cosyvoice2")


@pytest.fixture
def world(tmp_path) -> Path:
    """A CosyVoice2 pretrained dir, a config, a run with one adapter epoch (recording pre/llm.pt), a data.list."""
    pre = tmp_path / "pre"
    pre.mkdir()
    for name in family.COSYVOICE2.config_name, "campplus.onnx", family.COSYVOICE2.speech_tokenizer:
        (pre / name).write_text("stand-in\n")
    for name in "llm.pt", "flow.pt", "hift.pt":
        torch.save({"w": torch.ones(2)}, pre / name)
    (tmp_path / "conf.yaml").write_text("llm: !new:cosyvoice.llm.llm.Qwen2LM {}\n")
    run = tmp_path / "run"
    run.mkdir()
    torch.save(_adapter(pre / "llm.pt"), run / "epoch_0_whole.pt")
    (run / "epoch_0_whole.yaml").write_text("epoch: 0\nloss_dict: {loss: 1.0}\n")
    (tmp_path / "qwen").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data.list").write_text("/nowhere/shard.parquet\n")
    (tmp_path / "prelink").symlink_to(pre, target_is_directory=True)
    os.link(pre / "llm.pt", tmp_path / "hard.pt")
    return tmp_path


CKPT = ["--checkpoint", "run/epoch_0_whole.pt"]
RUN = ["--run", "run"]
BASE = ["--base", "pre/llm.pt"]


@pytest.mark.parametrize("args, output, why", [
    (CKPT + BASE, "pre/llm.pt", "which is --base pre/llm.pt"),  # the case: the base overwritten
    (CKPT + BASE, "pre/../pre/llm.pt", "which is --base pre/llm.pt"),
    (CKPT + BASE, "prelink/llm.pt", "which is --base pre/llm.pt"),  # through a symlinked folder
    (CKPT + BASE, "hard.pt", "a hard link to --base pre/llm.pt"),
    (CKPT + BASE, "conf.yaml", "which is --config conf.yaml"),
    (CKPT + BASE, "run/epoch_0_whole.pt", "which is --checkpoint run/epoch_0_whole.pt"),
    (RUN, "run/", "inside --run run"),
    (RUN, "run", "inside --run run"),  # an existing directory: run/llm.pt
    (RUN, "run/epoch_0_whole.yaml", "inside --run run"),
    (RUN, "run/../run/merged.pt", "inside --run run"),
    (CKPT, "pre/llm.pt", "which is the base checkpoint the adapter records"),  # no --base: the recorded one
    (CKPT, "pre/new.pt", "inside the pretrained directory of the base checkpoint"),
    (CKPT + ["--qwen-pretrain-path", "qwen"], "qwen/llm.pt", "inside --qwen-pretrain-path qwen"),
    (RUN + ["--serve", "pre"], "pre/voice", "inside --serve"),  # the self-loop case
    (RUN + ["--serve", "pre"], "pre", "itself"),
    (RUN + ["--serve", "pre"], "prelink/", "itself"),
    (RUN + ["--serve", "pre"], "prelink/voice", "inside --serve"),
    (RUN + ["--serve", "prelink"], "pre/v2", "inside --serve"),
    (RUN + ["--serve", "pre"], "run", "which is --run run itself"),
])
def test_export_never_writes_over_or_into_its_inputs(world, monkeypatch, capsys, args, output, why):
    monkeypatch.chdir(world)
    before = snapshot(world)
    argv = ["export", "--model", "llm", "--config", "conf.yaml", *args, "-o", output]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"-o {output} would write " in err and why in err, err
    assert "export never writes over or into what it reads" in err and "next: write the export somewhere else" in err
    assert snapshot(world) == before, "nothing written"


def _stop_at_the_model(monkeypatch) -> None:
    """Everything before building the model ran: stop there (the merge needs a real upstream tree)."""
    from cosyvoice_ext.errors import EnvironmentProblem

    def stop(upstream):
        raise EnvironmentProblem("reached the model")

    monkeypatch.setattr("cosyvoice_ext.lora.export.add_upstream_to_path", stop)


@pytest.mark.parametrize("output", ["out/llm.pt", "out/", "link.pt"])
def test_export_outputs_elsewhere_pass_the_guard(world, monkeypatch, capsys, output):
    """The guard lets these through, and nothing is written before the merge. A link at -o is replaced by
    the rename, never written through (test_export.py checks the real write)."""
    monkeypatch.chdir(world)
    (world / "link.pt").symlink_to(world / "pre" / "llm.pt")
    before = snapshot(world)
    _stop_at_the_model(monkeypatch)
    assert main(["export", "--model", "llm", "--config", "conf.yaml", *CKPT, *BASE, "-o", output]) == 2
    err = capsys.readouterr().err
    assert "reached the model" in err, err
    assert snapshot(world) == before


def test_export_serve_into_a_file_or_a_read_only_place(world, monkeypatch, capsys):
    monkeypatch.chdir(world)
    before = snapshot(world)
    assert main(["export", "--model", "llm", "--config", "conf.yaml", *RUN, "--serve", "pre",
                 "--speaker-data", "data/data.list", "-o", "data/data.list"]) == 2
    assert "-o data/data.list is a file; with --serve, -o is the model directory" in capsys.readouterr().err
    assert main(["export", "--model", "llm", "--config", "conf.yaml", *RUN, "-o", "conf.yaml/llm.pt"]) == 2
    assert f"{world / 'conf.yaml'} is a file, not a directory" in capsys.readouterr().err
    (world / "ro").mkdir()
    read_only(monkeypatch, world / "ro")
    before = snapshot(world)
    assert main(["export", "--model", "llm", "--config", "conf.yaml", *RUN, "-o", "ro/sub/llm.pt"]) == 2
    err = capsys.readouterr().err
    assert f"-o ro/sub/llm.pt: cannot write in {world / 'ro'} (permission denied or a read-only file system)" in err
    assert snapshot(world) == before


def test_a_flow_adapter_given_as_llm_names_the_mismatch(world, monkeypatch, capsys):
    monkeypatch.chdir(world)
    torch.save(_adapter(world / "pre" / "flow.pt", model="flow"), world / "flow_adapter.pt")
    for base in ([], BASE):
        assert main(["export", "--model", "llm", "--config", "conf.yaml", "--checkpoint", "flow_adapter.pt", *base,
                     "-o", "out.pt"]) == 2
        err = capsys.readouterr().err
        assert "adapter flow_adapter.pt is a flow adapter: it records model 'flow' (trained on " \
               "CausalMaskedDiffWithXvec), but --model llm was given" in err, err
        assert "next: export it with --model flow" in err
    assert not (world / "out.pt").exists()
