"""Issue 10, "nothing silent": every broken input is exit 2 with a message naming the file and what is
wrong with it, never a traceback, and nothing is written. Unit tier: each case fails before a model is
built, so no upstream tree is needed."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cosyvoice_ext.cli import main
from cosyvoice_ext.errors import UsageError
from cosyvoice_ext.lora.export import serve
from tests.test_data_safety import CKPT, RUN, snapshot, world  # noqa: F401  (world: a fixture)

EXPORT = ["export", "--model", "llm", "--config", "conf.yaml"]


def _export(argv: list[str], capsys) -> str:
    """Run `cosyext export`; it must exit 2 (no traceback escapes main) and return stderr."""
    assert main([*EXPORT, *argv]) == 2
    return capsys.readouterr().err


def _parquet(path, spk, embeddings):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"spk": spk, "spk_embedding": embeddings}), path)
    return path


# --- export: checkpoints ------------------------------------------------------------------------------


def test_truncated_checkpoints_and_bases_say_so(world, monkeypatch, capsys):
    monkeypatch.chdir(world)
    data = (world / "run" / "epoch_0_whole.pt").read_bytes()
    (world / "cut.pt").write_bytes(data[: len(data) // 2])
    err = _export(["--checkpoint", "cut.pt", "-o", "out.pt"], capsys)
    assert f"checkpoint cut.pt is truncated ({len(data) // 2} bytes; its end is missing)" in err
    assert "next: an interrupted save or copy" in err
    base = (world / "pre" / "llm.pt").read_bytes()
    (world / "cutbase.pt").write_bytes(base[:-7])
    err = _export([*CKPT, "--base", "cutbase.pt", "-o", "out.pt"], capsys)
    assert f"checkpoint cutbase.pt is truncated ({len(base) - 7} bytes" in err  # before the model is built
    assert not (world / "out.pt").exists()


def test_a_config_that_is_missing_or_not_utf8(world, monkeypatch, capsys):
    monkeypatch.chdir(world)
    err = _export([*RUN, "--config", "nope.yaml", "-o", "out.pt"], capsys)
    assert "cannot read config nope.yaml: No such file or directory" in err
    (world / "latin1.yaml").write_bytes("llm: caf\xe9\n".encode("latin-1"))
    err = _export([*RUN, "--config", "latin1.yaml", "-o", "out.pt"], capsys)
    assert "config latin1.yaml is not UTF-8 text (byte 8: invalid continuation byte)" in err


@pytest.mark.parametrize("text, message", [
    ("checkpoint: [unclosed\n", "best.yaml is not readable YAML"),
    (b"checkpoint: epoch_0_whole.pt # \xff\n", "best.yaml is not readable YAML"),
    ("- a list\n", "best.yaml does not name a checkpoint (early stopping writes 'checkpoint: epoch_N_whole.pt'; "
                   "found ['a list'])"),
    ("epoch: 3\nvalue: 1.0\n", "best.yaml does not name a checkpoint"),
    ("checkpoint: epoch_0_whole.pt\nepoch: three\n", "best.yaml: epoch must be an integer, got 'three'"),
    ("checkpoint: epoch_0_whole.pt\nepoch: 0\nvalue: low\n", "best.yaml: value must be a number, got 'low'"),
    ("checkpoint: epoch_9_whole.pt\n", "best.yaml points at run/epoch_9_whole.pt, which does not exist"),
])
def test_a_corrupt_best_yaml_is_named(world, monkeypatch, capsys, text, message):
    monkeypatch.chdir(world)
    best = world / "run" / "best.yaml"
    best.write_bytes(text if isinstance(text, bytes) else text.encode())
    err = _export([*RUN, "-o", "out.pt"], capsys)
    assert message in err, err
    assert "next: " in err


# --- export --serve: what the serving directory reads ------------------------------------------------------


def _serve(world, capsys, speaker_data: str, out: str = "voice") -> str:
    return _export([*RUN, "--serve", "pre", "--speaker-data", speaker_data, "-o", out], capsys)


def test_corrupt_speaker_data_is_named(world, monkeypatch, capsys):
    monkeypatch.chdir(world)
    d = world / "data"
    cases = {
        "missing.list": ("cannot read --speaker-data missing.list: No such file or directory", None),
        "latin1.list": ("--speaker-data latin1.list is not a UTF-8 list of parquet files (byte 3)", b"caf\xe9\n"),
        "empty.list": ("--speaker-data empty.list lists no parquet files", b"\n\n"),
        "gone.list": ("/nowhere/shard.parquet (listed in gone.list) does not exist", b"/nowhere/shard.parquet\n"),
    }
    (d / "junk.parquet").write_bytes(b"PAR1 not really")
    cases["junk.list"] = (f"{d / 'junk.parquet'} (listed in junk.list) is not a parquet shard with spk and "
                          "spk_embedding columns", f"{d / 'junk.parquet'}\n".encode())
    _parquet(d / "str.parquet", ["a", "a"], ["[0.1, 0.2]", "[0.3, 0.4]"])  # embeddings stored as strings
    cases["str.list"] = ("column spk_embedding of", f"{d / 'str.parquet'}\n".encode())
    _parquet(d / "nospk.parquet", [1, 2], [[0.1], [0.2]])
    cases["nospk.list"] = ("column spk of", f"{d / 'nospk.parquet'}\n".encode())
    _parquet(d / "ragged.parquet", ["a", "a"], [[0.1, 0.2], [0.3]])
    cases["ragged.list"] = ("the spk_embedding values of speaker 'a' in ragged.list have lengths 1, 2",
                            f"{d / 'ragged.parquet'}\n".encode())
    _parquet(d / "nan.parquet", ["a"], [[0.1, math.nan]])
    cases["nan.list"] = ("the spk_embedding values of speaker 'a' in nan.list hold NaN or Inf",
                         f"{d / 'nan.parquet'}\n".encode())
    _parquet(d / "null.parquet", ["a", None], [[0.1], [0.2]])
    cases["null.list"] = ("has a row without spk or with a missing spk_embedding value",
                          f"{d / 'null.parquet'}\n".encode())
    for name, (message, content) in cases.items():
        if content is not None:
            (world / name).write_bytes(content)
        before = snapshot(world)
        err = _serve(world, capsys, name)
        assert message in err, (name, err)
        assert "next: pass the train data.list 'cosyext prepare' wrote" in err
        assert snapshot(world) == before, name
    assert "holds string, not lists of numbers" in _serve(world, capsys, "str.list")


def test_corrupt_spk2info_or_speaker_config_stops_before_anything_is_written(world, monkeypatch, capsys):
    monkeypatch.chdir(world)
    _parquet(world / "data" / "ok.parquet", ["a", "a"], [[0.5, 1.0], [1.5, 1.0]])
    (world / "ok.list").write_text(f"{world / 'data' / 'ok.parquet'}\n")
    (world / "voice").mkdir()
    (world / "voice" / "speaker_config.json").write_text('{"speakers": [')
    before = snapshot(world)
    err = _serve(world, capsys, "ok.list")
    assert "voice/speaker_config.json is not readable JSON" in err
    assert "next: move it aside (mv voice/speaker_config.json voice/speaker_config.json.bak)" in err
    (world / "voice" / "speaker_config.json").write_text('{"speakers": "me"}')
    assert "is not a speaker config" in _serve(world, capsys, "ok.list")
    (world / "voice" / "speaker_config.json").unlink()
    data = (world / "pre" / "llm.pt").read_bytes()
    (world / "pre" / "spk2info.pt").write_bytes(data[:40])
    err = _serve(world, capsys, "ok.list")
    assert "checkpoint pre/spk2info.pt is truncated" in err or f"{world / 'pre' / 'spk2info.pt'} is truncated" in err
    torch.save({"voice": torch.ones(3)}, world / "pre" / "spk2info.pt")
    assert "is not a speaker table" in _serve(world, capsys, "ok.list")
    (world / "voice" / "speaker_config.json").write_text('{"speakers": [')
    after = snapshot(world)
    for key in [k for k in after if k.startswith("pre/spk2info")]:
        after.pop(key), before.pop(key, None)
    assert after == before


def test_speaker_config_keeps_the_keyed_form(tmp_path):
    doc = {"speakers": {"old": {"type": "lora", "active": True}}, "default_speaker": "old"}
    (tmp_path / serve.SPEAKER_CONFIG).write_text(json.dumps(doc))
    serve.write_speaker_config(tmp_path, "new", "d", {"llm": "llm.pt"}, family="cosyvoice2")
    got = json.loads((tmp_path / serve.SPEAKER_CONFIG).read_text())
    assert got["default_speaker"] == "old" and got["speakers"]["old"] == {"type": "lora", "active": True}
    assert got["speakers"]["new"]["family"] == "cosyvoice2"
    serve.write_speaker_config(tmp_path / "", "new", "again", {}, family=None)
    assert json.loads((tmp_path / serve.SPEAKER_CONFIG).read_text())["speakers"]["new"]["description"] == "again"
    with pytest.raises(UsageError, match="not a speaker config"):
        (tmp_path / serve.SPEAKER_CONFIG).write_text('[1, 2]')
        serve.read_speaker_config(tmp_path)


# --- prepare ------------------------------------------------------------------------------------------------


def _report(dest) -> dict[str, tuple[str, str]]:
    """prepare_report.tsv as {path: (utt, reason)}, checking every line has exactly three fields."""
    lines = (dest / "prepare_report.tsv").read_text(encoding="utf-8").split("\n")
    assert lines[0] == "utt\tpath\treason" and lines[-1] == ""
    rows = [line.split("\t") for line in lines[1:-1]]
    assert all(len(r) == 3 for r in rows), rows
    return {path: (utt, reason) for utt, path, reason in rows}


def _run_prepare(src, dest, *extra) -> int:
    return main(["prepare", str(src), str(dest), "--no-features", "--no-progress", "--cv-ratio", "0", *extra])


def test_prepare_reports_dangling_and_looping_wav_links(tmp_path, capsys):
    from tests.test_data_safety import _voice

    src = _voice(tmp_path / "voice")
    a = src / "alice"
    (a / "gone.wav").symlink_to(tmp_path / "moved" / "gone.wav")
    (a / "gone.txt").write_text("ba")
    (a / "loop1.wav").symlink_to(a / "loop2.wav")
    (a / "loop2.wav").symlink_to(a / "loop1.wav")
    (a / "loop1.txt").write_text("ba")
    (a / "c.txt").unlink()
    (a / "c.txt").symlink_to(tmp_path / "moved" / "c.txt")  # a transcript that is a dangling link
    assert _run_prepare(src, tmp_path / "out") == 0
    report = _report(tmp_path / "out")
    assert report[str(a / "gone.wav")] == ("alice_gone", f"dangling symlink: points to {tmp_path / 'moved' / 'gone.wav'}, "
                                                         "which does not exist")
    assert report[str(a / "loop1.wav")][1].startswith("symlink loop: ")
    assert report[str(a / "loop2.wav")][1].startswith("symlink loop: ")
    assert report[str(a / "c.wav")] == ("alice_c", f"transcript c.txt is a dangling symlink: points to "
                                                   f"{tmp_path / 'moved' / 'c.txt'}, which does not exist")
    err = capsys.readouterr().err
    assert f"skipped {a / 'gone.wav'}: dangling symlink" in err


def test_prepare_follows_symlinked_speaker_folders_once(tmp_path, capsys):
    from tests.test_data_safety import _voice

    src = _voice(tmp_path / "voice")
    _voice(tmp_path / "elsewhere", names=("x", "y"), spk="bob_real")
    (src / "bob").symlink_to(tmp_path / "elsewhere" / "bob_real", target_is_directory=True)
    (src / "alice" / "again").symlink_to(src / "alice", target_is_directory=True)  # a loop
    (src / "carol").symlink_to(src / "alice", target_is_directory=True)  # the same folder twice
    (src / "dave").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    assert _run_prepare(src, tmp_path / "out") == 0
    import pyarrow.parquet as pq

    rows = pq.read_table((tmp_path / "out" / "train" / "data.list").read_text().split()[0]).to_pylist()
    assert sorted((r["utt"], r["spk"]) for r in rows) == [
        ("alice_a", "alice"), ("alice_b", "alice"), ("alice_c", "alice"), ("bob_x", "bob"), ("bob_y", "bob")]
    report = _report(tmp_path / "out")
    assert report[str(src / "alice" / "again")][1] == f"symlinked folder: {src / 'alice'} is already scanned " \
                                                      f"as {src / 'alice'} (a loop); not followed"
    assert report[str(src / "carol")][1] == f"symlinked folder: {src / 'alice'} is already scanned as " \
                                            f"{src / 'alice'}; not followed"
    assert report[str(src / "dave")][1] == f"dangling symlink: points to {tmp_path / 'nowhere'}, which does not exist"


def test_prepare_report_escapes_tabs_and_newlines_in_names(tmp_path, capsys):
    from tests.test_data_safety import _voice

    src = _voice(tmp_path / "voice")
    for name in ("tab\there.wav", "new\nline.wav", "back\\slash.wav", "bad\udcffname.wav"):
        (src / "alice" / name).write_bytes((src / "alice" / "a.wav").read_bytes())  # no transcripts
    assert _run_prepare(src, tmp_path / "out") == 0
    report = _report(tmp_path / "out")
    assert ("alice_tab_here", "missing transcript (no .txt or .lab with the same name)") == \
        report[f"{src / 'alice'}/tab\\there.wav"]
    assert report[f"{src / 'alice'}/new\\nline.wav"][0] == "alice_new_line"
    assert report[f"{src / 'alice'}/back\\\\slash.wav"][1].startswith("missing transcript")
    assert report[f"{src / 'alice'}/bad\\xffname.wav"][1] == "the file name is not UTF-8 (upstream's data lists are)"
    err = capsys.readouterr().err
    assert "tab\\there.wav" in err and "new\\nline.wav" in err


@pytest.mark.parametrize("name", ["text", "wav.scp", "utt2spk"])
def test_prepare_names_a_kaldi_file_that_is_not_utf8(tmp_path, capsys, name):
    from tests.test_data_safety import _voice

    src = _voice(tmp_path / "voice")
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    files = {"wav.scp": f"u1 {src / 'alice' / 'a.wav'}\n", "text": "u1 ba\n", "utt2spk": "u1 s\n"}
    for fname, content in files.items():
        (kaldi / fname).write_text(content)
    (kaldi / name).write_bytes(files[name].encode() + "u2 caf\xe9\n".encode("latin-1"))
    assert _run_prepare(kaldi, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"{kaldi / name} is not UTF-8 text (line 2, byte" in err, err
    assert "next: iconv -f LATIN1 -t UTF-8" in err
    assert not (tmp_path / "out").exists()


# --- plot: corrupt events files ------------------------------------------------------------------------------


def _events(tmp_path):
    from tests.test_plot import write_run

    tb = tmp_path / "tb"
    write_run(tb, epochs=2, steps_per_epoch=3)
    return tb, next(tb.glob("events.out.tfevents.*"))


def test_a_truncated_events_file_is_plotted_up_to_the_cut_and_says_so(tmp_path, capsys):
    tb, events = _events(tmp_path)
    argv = ["plot", str(tb), "--format", "csv", "--metric", "acc", "-o", "-"]
    assert main(argv) == 0
    whole = capsys.readouterr().out.splitlines()
    data = events.read_bytes()
    events.write_bytes(data[:-7])  # a kill in the middle of the last record: the last CV/acc value
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert cap.out.splitlines() == whole[:-1]  # every value before the cut
    assert f"warning: events file {events} ends in a cut-off record at byte" in cap.err
    assert "training still writing, or killed mid-write" in cap.err


@pytest.mark.parametrize("damage", ["flip", "garbage"])
def test_a_corrupt_events_file_is_an_error_naming_it(tmp_path, capsys, damage):
    tb, events = _events(tmp_path)
    data = bytearray(events.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data[:] = bytes(range(256)) * 8
    events.write_bytes(bytes(data))
    assert main(["plot", str(tb), "-o", str(tmp_path / "loss.png")]) == 2
    err = capsys.readouterr().err
    assert f"events file {events} is corrupt at byte " in err and "fails its CRC check" in err, err
    assert f"next: mv {events} {tb}/corrupt-{events.name}" in err
    assert not (tmp_path / "loss.png").exists()
