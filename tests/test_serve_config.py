"""speaker_config.json as `cosyext serve` reads it and `cosyext export --serve` writes it (pure Python, fast)."""

from __future__ import annotations

import json
import os

import pytest

from cosyvoice_ext.errors import UsageError
from cosyvoice_ext.lora.export import serve as export_serve
from cosyvoice_ext.serve import config as cfg


def _files(root, *names):
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            p.mkdir(exist_ok=True)
        else:
            p.write_bytes(b"x")


def _write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def test_the_issue_format_paths_relative_to_the_config_file(tmp_path, monkeypatch):
    srv = tmp_path / "srv"
    _files(srv, "base/", "other/", "exp/a/llm.pt", "exp/a/flow.pt", "v/a.pt", "v/b.pt", "serve/c/")
    path = _write(srv / "conf" / ".." / "speaker_config.json", {
        "default_speaker": "a", "pretrained_dir": "base",
        "speakers": {
            "a": {"type": "lora", "llm_lora_model_path": "exp/a/llm.pt", "flow_lora_model_path": "exp/a/flow.pt",
                  "spk_embedding_path": "v/a.pt", "description": "A", "active": True},
            "b": {"type": "lora", "llm_lora_model_path": None, "spk_embedding_path": "v/b.pt", "active": False,
                  "pretrained_dir": "other"},
            "c": {"type": "merged", "model_dir": "serve/c", "description": "C"},
            "typo": {"type": "lora", "llm_lora_modelpath": "exp/a/llm.pt", "spk_embedding_path": "v/a.pt"},
            "kind": {"type": "full"},
            "noemb": {"type": "lora", "llm_lora_model_path": "exp/a/llm.pt"},
            "gone": {"type": "merged", "model_dir": "serve/gone"},
        }})
    monkeypatch.chdir(tmp_path)  # relative to the file, not to the working directory
    conf = cfg.load(path)
    real = srv.resolve()
    assert conf.default_speaker == "a" and not conf.migrated
    a, b, c = conf.voices["a"], conf.voices["b"], conf.voices["c"]
    assert (a.model_dir, a.llm, a.flow, a.embedding) == (real / "base", real / "exp/a/llm.pt", real / "exp/a/flow.pt",
                                                         real / "v/a.pt")
    assert a.active and a.description == "A" and a.adapters() == {"llm": a.llm, "flow": a.flow}
    assert b.model_dir == real / "other" and b.adapters() == {} and not b.active  # the entry's own base wins
    assert c.type == "merged" and c.model_dir == real / "serve/c" and c.spk_id == "c"
    assert conf.problems == {
        "typo": "unknown key 'llm_lora_modelpath'; did you mean 'llm_lora_model_path'?",
        "kind": "type 'full' is not one of lora, merged",
        "noemb": "spk_embedding_path is missing: a lora voice speaks prompt-free with that embedding",
        "gone": f"model_dir serve/gone does not exist ({real / 'serve/gone'})",
    }
    del_top = json.loads(path.read_text())
    del_top.pop("pretrained_dir")
    _write(path, del_top)
    assert "no base model for this lora voice" in cfg.load(path).problems["a"]
    assert cfg.load(path, pretrained=srv / "other").voices["a"].model_dir == real / "other"  # --pretrained


def test_root_confines_every_path_links_resolved(tmp_path):
    srv, out = tmp_path / "srv", tmp_path / "out"
    _files(srv, "base/", "v/a.pt")
    _files(out, "llm.pt", "a.pt")
    (srv / "v" / "link.pt").symlink_to(out / "a.pt")
    path = _write(srv / "speaker_config.json", {"pretrained_dir": "base", "speakers": {
        "ok": {"spk_embedding_path": "v/a.pt"},
        "dotdot": {"llm_lora_model_path": "../out/llm.pt", "spk_embedding_path": "v/a.pt"},
        "abs": {"llm_lora_model_path": str(out / "llm.pt"), "spk_embedding_path": "v/a.pt"},
        "link": {"spk_embedding_path": "v/link.pt"}}})
    conf = cfg.load(path, root=srv)
    assert list(conf.voices) == ["ok"]
    for name in ("dotdot", "abs", "link"):
        assert f"outside --root {srv.resolve()}" in conf.problems[name], conf.problems[name]
    assert conf.problems["link"].startswith(f"spk_embedding_path v/link.pt resolves to {(out / 'a.pt').resolve()}")
    with pytest.raises(cfg.OutsideRoot, match="the config file resolves to"):
        cfg.load(path, root=out)
    (srv / "base" / "llm.pt").symlink_to(out / "llm.pt")  # a model dir linking out of the root
    with pytest.raises(cfg.OutsideRoot, match="base/llm.pt resolves to"):
        cfg.confine_tree(srv / "base", srv, "model dir")


def test_the_list_form_is_migrated(tmp_path):
    d = tmp_path / "serve" / "v1"
    d.mkdir(parents=True)
    old = {"speakers": [
        {"name": "v1", "spk_id": "v1", "model_dir": str(d.resolve()), "description": "first", "family": "cosyvoice2",
         "llm": str(d / "llm.pt"), "flow": str(d / "flow.pt")},
        {"name": "far", "spk_id": "spk_far", "model_dir": "/elsewhere/far", "description": ""}]}
    doc, migrated = cfg.normalise(old, d, "x.json")
    assert migrated
    assert doc == {"default_speaker": "v1", "speakers": {
        "v1": {"type": "merged", "model_dir": ".", "spk_id": "v1", "description": "first", "active": True,
               "family": "cosyvoice2"},
        "far": {"type": "merged", "model_dir": "/elsewhere/far", "spk_id": "spk_far", "description": "",
                "active": True}}}
    _write(d / "speaker_config.json", old)
    conf = cfg.load(d / "speaker_config.json")
    assert conf.migrated and conf.voices["v1"].model_dir == d.resolve() and "far" in conf.problems


def test_export_writes_the_keyed_form_and_migrates_the_list_form(tmp_path):
    d = tmp_path / "voice"
    d.mkdir()
    (d / "flow.pt").symlink_to(tmp_path / "pretrained_flow.pt")  # linked from the pretrained dir: not merged here
    _write(d / export_serve.SPEAKER_CONFIG, {"speakers": [{"name": "old", "spk_id": "old", "model_dir": str(d),
                                                           "description": "before"}]})
    export_serve.write_speaker_config(d, "new", "fresh", {"llm": "llm.pt", "flow": "flow.pt"}, family="cosyvoice3")
    doc = json.loads((d / export_serve.SPEAKER_CONFIG).read_text())
    assert doc == {"default_speaker": "old", "speakers": {
        "old": {"type": "merged", "model_dir": ".", "spk_id": "old", "description": "before", "active": True},
        "new": {"type": "merged", "model_dir": ".", "spk_id": "new", "description": "fresh", "active": True,
                "family": "cosyvoice3", "merged": ["llm"]}}}
    doc["speakers"]["new"]["active"] = False
    _write(d / export_serve.SPEAKER_CONFIG, doc)
    export_serve.write_speaker_config(d, "new", "again", {"llm": "llm.pt"})
    again = json.loads((d / export_serve.SPEAKER_CONFIG).read_text())["speakers"]["new"]
    assert again["description"] == "again" and again["active"] is False  # the user's switch survives a re-export
    conf = cfg.load(d / export_serve.SPEAKER_CONFIG)
    assert set(conf.voices) == {"old", "new"} and conf.voices["new"].model_dir == d.resolve()
    for bad in ('{"speakers": "me"}', "[1, 2]", '{"speakers": [{"no_name": 1}]}'):
        (d / export_serve.SPEAKER_CONFIG).write_text(bad)
        with pytest.raises(UsageError, match="is not a speaker config"):
            export_serve.read_speaker_config(d)
    os.unlink(d / export_serve.SPEAKER_CONFIG)
    assert export_serve.read_speaker_config(d) == {"speakers": {}}


def test_config_file_errors_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        cfg.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UsageError, match="is not valid JSON"):
        cfg.load(tmp_path / "bad.json")
    (tmp_path / "d.json").write_text('{"default_speaker": 3, "speakers": {}}')
    with pytest.raises(UsageError, match="default_speaker must be a voice name"):
        cfg.load(tmp_path / "d.json")


def test_speaker_embeddings_every_form_and_weights_only(tmp_path):
    import argparse

    import numpy as np
    import torch

    from cosyvoice_ext.errors import CheckpointError
    from cosyvoice_ext.serve.models import read_embedding

    emb = torch.randn(1, 192)
    forms = {"bare.pt": emb[0], "row.pt": emb, "entry.pt": {"embedding": emb},
             "table.pt": {"other": {"embedding": torch.zeros(1, 192)}, "me": {"embedding": emb}},
             "single.pt": {"only": {"embedding": emb}}, "list.pt": emb[0].tolist()}
    for name, obj in forms.items():
        torch.save(obj, tmp_path / name)
        got = read_embedding(tmp_path / name, "me", 192)
        assert got.shape == (1, 192) and got.dtype == torch.float32 and torch.equal(got, emb), name
    np.save(tmp_path / "e.npy", emb.numpy())
    assert torch.equal(read_embedding(tmp_path / "e.npy", "me", 192), emb)
    bad = {"short.pt": (torch.ones(10), "holds 10 values; the model's speaker embeddings have 192"),
           "nan.pt": (torch.full((192,), float("nan")), "NaN or Inf"),
           "two.pt": ({"a": {"embedding": emb}, "b": {"embedding": emb}}, "holds dict, not a 192-value embedding"),
           "code.pt": (argparse.Namespace(x=1), "refusing to load spk_embedding_path")}
    for name, (obj, words) in bad.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError, match=words):
            read_embedding(tmp_path / name, "me", 192)
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "row.pt").read_bytes()[:50])
    with pytest.raises(CheckpointError, match="is not a readable embedding"):
        read_embedding(tmp_path / "trunc.pt", "me", 192)
