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


# --- prepare ------------------------------------------------------------------------------------------------


def _voice(root: Path, names=("a", "b", "c"), spk: str = "alice") -> Path:
    """A folder of 1 s tones with transcripts, as `cosyext prepare` reads them."""
    import numpy as np

    from cosyvoice_ext.tiny.data import wav_bytes

    (root / spk).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        t = np.arange(24000) / 24000
        (root / spk / f"{name}.wav").write_bytes(wav_bytes(0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t), 24000))
        (root / spk / f"{name}.txt").write_text("ba do\n")
    return root


def _prepare(*argv: str) -> int:
    return main(["prepare", *argv, "--no-features", "--no-progress", "--cv-ratio", "0"])


def _foreign(dest: Path) -> None:
    """Shards and a data.list another tool made, under the names prepare uses."""
    parquet = dest / "train" / "parquet"
    parquet.mkdir(parents=True)
    for i in range(3):
        (parquet / f"parquet_{i:09d}.parquet").write_bytes(f"someone else's shard {i}".encode())
    (dest / "train" / "data.list").write_text("".join(f"{parquet}/parquet_{i:09d}.parquet\n" for i in range(3)))


def test_prepare_refuses_a_dest_holding_data_it_did_not_make(tmp_path, capsys):
    """The issue's case: shard 0 and data.list were overwritten, shards 1 and 2 deleted."""
    src = _voice(tmp_path / "voice")
    dest = tmp_path / "data"
    _foreign(dest)
    before = snapshot(dest)
    for extra in ([], ["--resume"]):  # --resume continues a prepare run; there is none here
        assert _prepare(str(src), str(dest), *extra) == 2
        err = capsys.readouterr().err
        assert f"{dest} already holds data 'cosyext prepare' did not make" in err, err
        assert "train/data.list" in err and "train/parquet/parquet_000000000.parquet" in err
        assert "next: " in err and "--force" in err
        assert ("DEST holds none: no .cosyext-prepare/" in err) == bool(extra)
        assert snapshot(dest) == before


def test_prepare_refuses_upstreams_own_parquet_layout(tmp_path, capsys):
    src = _voice(tmp_path / "voice")
    dest = tmp_path / "parquet"  # what upstream's tools/make_parquet_list.py writes
    dest.mkdir()
    (dest / "parquet_000000000.tar").write_bytes(b"upstream shard")
    (dest / "data.list").write_text(f"{dest}/parquet_000000000.tar\n")
    before = snapshot(dest)
    assert _prepare(str(src), str(dest)) == 2
    assert "already holds data 'cosyext prepare' did not make" in capsys.readouterr().err
    assert snapshot(dest) == before


def test_prepare_force_replaces_only_what_prepare_writes(tmp_path, capsys):
    src = _voice(tmp_path / "voice")
    dest = tmp_path / "data"
    _foreign(dest)
    (dest / "notes.txt").write_text("mine")
    (dest / "data.list").write_text("upstream layout list\n")
    (dest / "train" / "parquet" / "mine.tar").write_bytes(b"mine")
    (dest / "train" / "keep.json").write_text("{}")
    assert _prepare(str(src), str(dest), "--resume", "--force") == 2
    assert "--resume or --force, not both" in capsys.readouterr().err
    assert _prepare(str(src), str(dest), "--force") == 0
    parquet = dest / "train" / "parquet"
    assert sorted(p.name for p in parquet.iterdir()) == ["mine.tar", "parquet_000000000.parquet",
                                                         "spk2parquet_000000000.json", "utt2parquet_000000000.json"]
    assert (dest / "train" / "data.list").read_text() == f"{parquet / 'parquet_000000000.parquet'}\n"
    assert (dest / "notes.txt").read_text() == "mine" and (dest / "data.list").read_text() == "upstream layout list\n"
    assert (dest / "train" / "keep.json").read_text() == "{}"
    # an earlier run for another family: --force starts over instead of refusing to mix them
    assert main(["prepare", str(src), str(dest), "--no-features", "--no-progress", "--family", "cosyvoice3",
                 "--force"]) == 0
    capsys.readouterr()


def test_prepare_dest_that_is_a_file_or_read_only(tmp_path, monkeypatch, capsys):
    src = _voice(tmp_path / "voice")
    (tmp_path / "file").write_text("x")
    assert _prepare(str(src), str(tmp_path / "file")) == 2
    assert f"DEST {tmp_path / 'file'} is a file, not a directory" in capsys.readouterr().err
    assert _prepare(str(src), str(tmp_path / "file" / "sub")) == 2
    assert f"{tmp_path / 'file'} is a file, not a directory" in capsys.readouterr().err
    (tmp_path / "ro").mkdir()
    read_only(monkeypatch, tmp_path / "ro")
    assert _prepare(str(src), str(tmp_path / "ro" / "data")) == 2
    assert f"cannot write in {tmp_path / 'ro'} (permission denied or a read-only file system)" in \
        capsys.readouterr().err
    assert snapshot(tmp_path / "ro") == {}


def test_prepare_refuses_an_input_that_is_one_of_its_outputs(tmp_path, capsys):
    """A Kaldi wav.scp naming a file under DEST that prepare writes (or deletes as a stale shard)."""
    src = _voice(tmp_path / "voice")
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    dest = tmp_path / "data"
    stale = dest / "train" / "parquet" / "parquet_000000007.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes((src / "alice" / "a.wav").read_bytes())  # audio, under a shard's name
    (kaldi / "wav.scp").write_text(f"u1 {src / 'alice' / 'b.wav'}\nu2 {stale}\n")
    (kaldi / "text").write_text("u1 ba\nu2 do\n")
    (kaldi / "utt2spk").write_text("u1 s\nu2 s\n")
    before = snapshot(dest)
    assert _prepare(str(kaldi), str(dest), "--force") == 2
    err = capsys.readouterr().err
    assert f"input {stale} (utterance u2) is a file 'cosyext prepare' writes in DEST" in err, err
    assert snapshot(dest) == before


def test_prepare_nested_in_its_source_reads_no_output(tmp_path, capsys):
    """SRC and DEST may nest (upstream's recipe writes data/train/parquet inside the Kaldi dir data/train): the
    outputs are never read as inputs, so a resumed run reuses everything and adds nothing."""
    src = _voice(tmp_path / "voice")
    dest = src / "prepared"
    assert _prepare(str(src), str(dest)) == 0
    assert "train: 3 utterances" in capsys.readouterr().out
    assert _prepare(str(src), str(dest), "--resume") == 0
    out = capsys.readouterr().out
    assert "train: 3 utterances" in out and "0 computed, 3 reused" in out and "0 written, 1 reused" in out


# --- plot ---------------------------------------------------------------------------------------------------


def test_plot_never_writes_over_an_input_events_file(tmp_path, monkeypatch, capsys):
    from tests.test_plot import write_run

    tb = tmp_path / "exp" / "tb"
    write_run(tb, epochs=1)
    events = next(tb.glob("events.out.tfevents.*"))
    (tmp_path / "link.csv").symlink_to(events)
    (tmp_path / "tblink").symlink_to(tb, target_is_directory=True)
    os.link(events, tmp_path / "hard.csv")
    before = snapshot(tmp_path)
    cases = {
        str(events): "is the input events file",
        f"{tmp_path}/exp/tb/../tb/{events.name}": "is the input events file",
        f"{tmp_path}/tblink/{events.name}": "is the input events file",
        str(tmp_path / "link.csv"): "is a link to the input events file",
        str(tmp_path / "hard.csv"): "is a hard link to the input events file",
        str(tb / "events.out.tfevents.new.png"): "would be read as an events file of",
    }
    for output, why in cases.items():
        assert main(["plot", str(tmp_path / "exp"), "--format", "csv", "-o", output]) == 2, output
        err = capsys.readouterr().err
        assert f"-o {output} " in err and why in err, err
        assert "next: " in err
        assert snapshot(tmp_path) == before, output
    assert main(["plot", str(tmp_path / "exp"), "-o", str(tb)]) == 2
    assert f"-o {tb} is a directory" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "exp"), "-o", str(tb / "loss.png")]) == 0  # a new file beside them is fine
    assert (tb / "loss.png").stat().st_size > 0 and events.read_bytes() == before[str(events.relative_to(tmp_path))]


def test_plot_output_in_a_file_or_a_read_only_place(tmp_path, monkeypatch, capsys):
    from tests.test_plot import write_run

    write_run(tmp_path / "tb", epochs=1)
    (tmp_path / "file").write_text("x")
    assert main(["plot", str(tmp_path / "tb"), "-o", str(tmp_path / "file" / "loss.png")]) == 2
    assert f"{tmp_path / 'file'} is a file, not a directory" in capsys.readouterr().err
    (tmp_path / "ro").mkdir()
    read_only(monkeypatch, tmp_path / "ro")
    assert main(["plot", str(tmp_path / "tb"), "-o", str(tmp_path / "ro" / "loss.png")]) == 2
    assert f"cannot write in {tmp_path / 'ro'}" in capsys.readouterr().err
    assert not list((tmp_path / "ro").iterdir())
