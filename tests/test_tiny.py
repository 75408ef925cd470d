"""The tiny model/data generators against the REAL upstream classes (Qwen2LM, CausalMaskedDiffWithXvec,
CosyVoice3LM, CausalMaskedDiffWithDiT, the upstream parquet Dataset pipeline, get_qwen_tokenizer, the
online feature extractors), plus byte-level determinism.

The CosyVoice2 tests at the 2025 pin import upstream in this process. The trees with CosyVoice3 run in
child processes (`_worker`): one process can hold only one `cosyvoice` package, and upstream decides
online feature extraction once, at import, from os.environ['onnx_path'].
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from cosyvoice_ext.tiny.data import SPEECH_TOKEN_VOCAB, write_parquet_dataset, write_train_cv
from cosyvoice_ext.tiny.qwen import LEXICON, make_tiny_qwen
from cosyvoice_ext.tiny.workspace import train_command, train_env, upstream_import_paths

PIN = "44316c34"  # CosyVoice2 only, classic training API
MAIN = "ace7c47"  # CosyVoice2 + CosyVoice3, online features
PIPELINE = ["parquet_opener", "tokenize", "filter", "resample", "compute_fbank", "parse_embedding",
            "shuffle", "sort", "batch", "padding"]
PIPELINE_MAIN = ["parquet_opener", "tokenize", "filter", "resample", "compute_fbank", "parse_embedding",
                 "compute_whisper_fbank", "shuffle", "sort", "batch", "padding"]


@pytest.fixture(scope="module")
def upstream_root(upstream_at) -> Path:
    """Patched upstream at the 2025 pin, on sys.path so `cosyvoice` and `matcha` import in this process."""
    root = Path(upstream_at(PIN))
    paths = upstream_import_paths(root)
    sys.path[:0] = paths
    yield root
    for p in paths:
        if p in sys.path:
            sys.path.remove(p)


@pytest.fixture(scope="module")
def ws(upstream_root, tmp_path_factory):
    from cosyvoice_ext.tiny.workspace import make_workspace

    return make_workspace(tmp_path_factory.mktemp("tinyws"), n_train=8, n_cv=2, upstream=upstream_root)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def _digests(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.iterdir()) if p.is_file() and p.name not in skip}


def _read_parquet(data_list: Path) -> list[list[dict]]:
    import pyarrow.parquet as pq

    return [pq.read_table(line).to_pylist() for line in data_list.read_text().split()]


# --- Qwen2 directory -------------------------------------------------------------------------

def test_qwen_dir_is_deterministic_per_seed(tmp_path):
    a = _digests(make_tiny_qwen(tmp_path / "a", seed=0))
    b = _digests(make_tiny_qwen(tmp_path / "b", seed=0))
    c = _digests(make_tiny_qwen(tmp_path / "c", seed=1))
    assert a == b
    assert a["model.safetensors"] != c["model.safetensors"]
    assert a["tokenizer.json"] == c["tokenizer.json"]


def test_tokenizer_training_is_stable_across_processes():
    """BPE training must not depend on per-process hash seeds, or "same seed, same bytes" breaks in CI."""
    code = ("import hashlib; from cosyvoice_ext.tiny.qwen import _train_tokenizer; "
            "print(hashlib.sha256(_train_tokenizer(400).to_str().encode()).hexdigest())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
            for _ in range(2)}
    from cosyvoice_ext.tiny.qwen import _train_tokenizer

    assert runs == {hashlib.sha256(_train_tokenizer(400).to_str().encode()).hexdigest()}


@pytest.mark.upstream
def test_qwen_dir_loads_with_upstream_tokenizer_and_encoder(upstream_root, ws):
    import torch
    from cosyvoice.llm.llm import Qwen2Encoder
    from cosyvoice.tokenizer.tokenizer import get_qwen_tokenizer

    tok = get_qwen_tokenizer(str(ws.qwen_dir), True)
    enc = Qwen2Encoder(str(ws.qwen_dir))
    assert len(tok.tokenizer) <= enc.model.config.vocab_size, "special tokens upstream adds must fit the embedding"
    assert enc.model.config.hidden_size == 64 and enc.model.config.num_hidden_layers == 2
    assert all(len(tok.encode(w)) == 1 for w in LEXICON), "each lexicon word must be one text token"
    ids = tok.encode("ba do ki <|endofprompt|> hello, world")
    assert max(ids) < enc.model.config.vocab_size
    assert tok.decode(tok.encode("ba do ki")) == "ba do ki"
    hidden, mask = enc(torch.randn(2, 7, 64), torch.tensor([7, 4]))
    assert hidden.shape == (2, 7, 64) and mask.shape == (2, 1, 7)


# --- parquet data ----------------------------------------------------------------------------

def test_parquet_rows_have_upstream_columns_and_consistent_lengths(tmp_path):
    data_list = write_parquet_dataset(tmp_path / "d", 6, shards=2, seed=3, min_sec=1.0, max_sec=2.0, speakers=2)
    paths = data_list.read_text().split()
    assert len(paths) == 2 and all(Path(p).is_absolute() and Path(p).is_file() for p in paths)
    rows = [r for shard in _read_parquet(data_list) for r in shard]
    assert len(rows) == 6 and len({r["utt"] for r in rows}) == 6
    assert {r["spk"] for r in rows} == {"spk00", "spk01"}
    for r in rows:
        assert set(r) == {"utt", "wav", "audio_data", "text", "spk", "utt_embedding", "spk_embedding", "speech_token"}
        with wave.open(io.BytesIO(r["audio_data"])) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
            seconds = w.getnframes() / 24000
        assert 1.0 <= seconds <= 2.0
        assert len(r["speech_token"]) == round(seconds * 25)
        assert all(0 <= t < SPEECH_TOKEN_VOCAB for t in r["speech_token"])
        assert len(r["utt_embedding"]) == len(r["spk_embedding"]) == 192
        assert set(r["text"].split()) <= set(LEXICON)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = write_parquet_dataset(tmp_path / "a", 5, shards=2, seed=11)
    b = write_parquet_dataset(tmp_path / "b", 5, shards=2, seed=11)
    c = write_parquet_dataset(tmp_path / "c", 5, shards=2, seed=12)
    da, db, dc = (_digests(d.parent, skip=("data.list",)) for d in (a, b, c))
    assert len(da) == 2 and da == db
    assert da != dc


def test_uneven_shard_sizes_are_honoured(tmp_path):
    data_list = write_parquet_dataset(tmp_path / "u", 6, shard_sizes=[5, 1])
    assert [len(s) for s in _read_parquet(data_list)] == [5, 1]
    with pytest.raises(ValueError, match="sum to n_utts"):
        write_parquet_dataset(tmp_path / "bad", 6, shard_sizes=[5, 2])


def test_text_fn_and_train_cv_split(tmp_path):
    data_list = write_parquet_dataset(tmp_path / "t", 3, text_fn=lambda i: "hello world " * (i + 1))
    assert [r["text"] for r in _read_parquet(data_list)[0]] == ["hello world " * (i + 1) for i in range(3)]
    train, cv = write_train_cv(tmp_path / "tc", 4, 2)
    train_utts = {r["utt"] for s in _read_parquet(train) for r in s}
    cv_rows = [r for s in _read_parquet(cv) for r in s]
    assert len(train_utts) == 4 and len(cv_rows) == 2
    assert not train_utts & {r["utt"] for r in cv_rows}


# --- config + upstream models ----------------------------------------------------------------

def _configs(ws, model):
    from cosyvoice_ext.tiny.config import load_tiny_config

    return load_tiny_config(ws.config, model, qwen_dir=ws.qwen_dir)


@pytest.mark.upstream
def test_config_has_cosyvoice2_structure(ws):
    configs = _configs(ws, "llm")
    assert [getattr(f, "func", f).__name__ for f in configs["data_pipeline"]] == PIPELINE
    assert configs["flow"] is None and configs["hift"] is None and configs["hifigan"] is None
    fe = configs["feat_extractor"].keywords
    assert fe["sampling_rate"] / fe["hop_size"] == configs["token_frame_rate"] * configs["token_mel_ratio"]
    assert configs["train_conf"]["save_per_step"] == -1 and configs["train_conf"]["optim"] == "adam"
    assert configs["qwen_pretrain_path"] == str(ws.qwen_dir)


@pytest.mark.upstream
def test_extra_section_is_appended(ws, tmp_path):
    from cosyvoice_ext.tiny.config import load_tiny_config, write_tiny_config

    cfg = write_tiny_config(tmp_path / "x.yaml", ws.qwen_dir, max_epoch=3, accum_grad=2,
                            extra="cosyext:\n    lora:\n        r: 4\n")
    configs = load_tiny_config(cfg, "llm")
    assert configs["cosyext"] == {"lora": {"r": 4}}
    assert (configs["train_conf"]["max_epoch"], configs["train_conf"]["accum_grad"]) == (3, 2)


@pytest.mark.upstream
def test_upstream_dataset_yields_every_utterance(ws, tmp_path):
    from cosyvoice.dataset.dataset import Dataset

    data_list = write_parquet_dataset(tmp_path / "d", 7, shard_sizes=[5, 2], seed=5)
    configs = _configs(ws, "llm")
    dataset = Dataset(str(data_list), data_pipeline=configs["data_pipeline"], mode="train", shuffle=True, partition=True)
    batches = list(dataset)
    utts = [u for b in batches for u in b["utts"]]
    assert sorted(utts) == sorted(r["utt"] for s in _read_parquet(data_list) for r in s)
    for b in batches:
        assert b["speech_feat"].shape[1] == 2 * b["speech_token"].shape[1]
        assert (b["speech_feat_len"] == 2 * b["speech_token_len"]).all()
        assert b["speech_feat"].shape[2] == 80


def _first_batch(ws, configs):
    from cosyvoice.dataset.dataset import Dataset

    dataset = Dataset(str(ws.train_list), data_pipeline=configs["data_pipeline"], mode="train", shuffle=False,
                      partition=False)
    return next(iter(dataset))


@pytest.mark.upstream
@pytest.mark.parametrize("model", ["llm", "flow"])
def test_upstream_model_trains_on_tiny_batch(ws, model):
    import torch

    torch.manual_seed(0)
    configs = _configs(ws, model)
    net = configs[model]
    batch = _first_batch(ws, configs)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    losses = []
    for _ in range(1 if model == "flow" else 8):
        loss = net(batch, torch.device("cpu"))["loss"]
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
        opt.step()
        losses.append(loss.item())
    if model == "llm":
        assert losses[-1] < losses[0] - 0.1, f"the tiny LLM does not learn: {losses}"


@pytest.mark.upstream
def test_base_checkpoints_are_deterministic_and_load_strict(ws, tmp_path):
    import torch

    from cosyvoice_ext.tiny.config import make_base_checkpoint

    for model, ckpt in (("llm", ws.llm_ckpt), ("flow", ws.flow_ckpt)):
        again = torch.load(make_base_checkpoint(ws.config, model, tmp_path / f"{model}.pt", seed=0), weights_only=True)
        base = torch.load(ckpt, weights_only=True)
        assert base.keys() == again.keys()
        assert all(torch.equal(base[k], again[k]) for k in base), f"{model}: same seed, different tensors"
        other = torch.load(make_base_checkpoint(ws.config, model, tmp_path / f"{model}1.pt", seed=1), weights_only=True)
        assert any(not torch.equal(base[k], other[k]) for k in base), f"{model}: seed has no effect"
        _configs(ws, model)[model].load_state_dict(base, strict=True)


# --- torchrun command line -------------------------------------------------------------------

def test_train_command_and_env(tmp_path):
    from cosyvoice_ext.tiny.workspace import Workspace

    ws = Workspace(*(tmp_path / n for n in ("r", "q", "c.yaml", "t.list", "cv.list", "l.pt", "f.pt")))
    up = tmp_path / "CosyVoice"
    cmd = train_command(ws, up, "flow", tmp_path / "exp", nproc=2, checkpoint=ws.flow_ckpt, extra_args=["--x"])
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=2" in cmd
    assert cmd[cmd.index("--model") + 1] == "flow" and cmd[cmd.index("--checkpoint") + 1] == str(ws.flow_ckpt)
    assert cmd[cmd.index("--qwen_pretrain_path") + 1] == str(ws.qwen_dir)
    assert str(up / "cosyvoice/bin/train.py") in cmd and cmd[-1] == "--x"
    assert [cmd[cmd.index(f) + 1] for f in ("--ddp.dist_backend", "--num_workers", "--prefetch", "--timeout")] == \
        ["gloo", "0", "100", "5"]
    assert "--checkpoint" not in train_command(ws, up, "llm", tmp_path / "exp")
    with pytest.raises(ValueError):
        train_command(ws, up, "hift", tmp_path / "exp")
    env = train_env(up)
    assert env["PYTHONPATH"].split(":")[:2] == [str(up.resolve()), str(up.resolve() / "third_party/Matcha-TTS")]
    assert env["HF_HUB_OFFLINE"] == "1" and env["OMP_NUM_THREADS"] == "1"


def test_recordings_folder_is_wav_and_txt_pairs(tmp_path):
    import wave

    from cosyvoice_ext.tiny.data import write_recordings

    root = write_recordings(tmp_path / "rec", 3, seed=1)
    wavs = sorted((root / "voice").glob("*.wav"))
    assert len(wavs) == 3
    for w in wavs:
        assert w.with_suffix(".txt").read_text().strip()
        with wave.open(str(w)) as f:
            assert f.getframerate() == 24000 and f.getnchannels() == 1 and f.getnframes() >= 24000


# --- upstream API detection and the config per tree ----------------------------------------

@pytest.mark.upstream
def test_api_is_read_from_each_trees_source(upstream_at):
    from cosyvoice_ext.tiny.api import CLASSIC, WITH_COSYVOICE3, detect_api

    assert detect_api(upstream_at(PIN)) == CLASSIC
    assert detect_api(upstream_at(MAIN)) == WITH_COSYVOICE3


def test_api_of_a_directory_that_is_no_upstream_tree(tmp_path):
    from cosyvoice_ext.errors import UsageError
    from cosyvoice_ext.tiny.api import detect_api

    with pytest.raises(UsageError, match="not an upstream CosyVoice tree") as err:
        detect_api(tmp_path)
    assert err.value.hint


def _pipeline_names(text: str) -> list[str]:
    body = text[text.index("data_pipeline: [") + len("data_pipeline: ["):].split("]", 1)[0]
    return [line.strip().removeprefix("!ref <").removesuffix(">,") for line in body.splitlines() if line.strip()]


@pytest.mark.upstream
def test_cosyvoice2_config_follows_the_tree(upstream_at, tmp_path):
    """The pin keeps the classic text byte for byte; the newer tree gets num_frames and whisper fbank."""
    from cosyvoice_ext.tiny.config import render_tiny_config, write_tiny_config

    pin = write_tiny_config(tmp_path / "pin.yaml", tmp_path / "q", upstream=upstream_at(PIN)).read_text()
    assert pin == render_tiny_config(tmp_path / "q")
    assert "token_mel_ratio: !ref <token_mel_ratio>" in pin and "num_frames" not in pin
    assert _pipeline_names(pin) == PIPELINE
    main = write_tiny_config(tmp_path / "main.yaml", tmp_path / "q", upstream=upstream_at(MAIN)).read_text()
    fbank = main[main.index("compute_fbank:"):main.index("parse_embedding:")]
    assert "num_frames: 960" in fbank and "token_mel_ratio" not in fbank and "compute_whisper_fbank:" in fbank
    assert _pipeline_names(main) == PIPELINE_MAIN
    assert "version:" not in main and "cosyvoice.llm.llm.Qwen2LM" in main
    assert "hift: null\nhifigan: null\n" in main


@pytest.mark.upstream
def test_cosyvoice3_config_needs_a_tree_that_has_it(upstream_at, tmp_path):
    from cosyvoice_ext.errors import UsageError
    from cosyvoice_ext.tiny.config import write_tiny_config

    with pytest.raises(UsageError, match="no CosyVoice3") as err:
        write_tiny_config(tmp_path / "c.yaml", tmp_path / "q", family="cosyvoice3", upstream=upstream_at(PIN))
    assert "family='cosyvoice2'" in err.value.hint
    with pytest.raises(ValueError, match="multiple of 16"):
        write_tiny_config(tmp_path / "c.yaml", tmp_path / "q", family="cosyvoice3", dit_dim=72)
    text = write_tiny_config(tmp_path / "c.yaml", tmp_path / "q", family="cosyvoice3", upstream=upstream_at(MAIN),
                             dit_dim=96, dit_heads=3).read_text()
    assert "llm: !new:cosyvoice.llm.llm.CosyVoice3LM" in text and "!new:cosyvoice.flow.DiT.dit.DiT" in text
    assert "dim: 96\n" in text and "heads: 3\n" in text and "version: cosyvoice3" in text
    assert _pipeline_names(text) == PIPELINE_MAIN


def test_llm_sizes_follow_the_qwen_hidden_size(tmp_path):
    from cosyvoice_ext.tiny.config import render_tiny_config

    qwen = tmp_path / "q"
    qwen.mkdir()
    (qwen / "config.json").write_text(json.dumps({"hidden_size": 896}))
    text = render_tiny_config(qwen, family="cosyvoice3")
    assert "llm_input_size: 896\nllm_output_size: 896\n" in text


# --- CosyVoice3 data and the online-feature ONNX models -----------------------------------

def test_cosyvoice3_rows_carry_instruct_and_whole_tokens(tmp_path):
    import pyarrow.parquet as pq

    from cosyvoice_ext.family import COSYVOICE3
    from cosyvoice_ext.prepare.shards import schema

    data_list = write_parquet_dataset(tmp_path / "d", 5, seed=2, family="cosyvoice3", min_sec=0.5, max_sec=3.0)
    table = pq.read_table(data_list.read_text().split()[0])
    assert table.schema == schema(instruct=True)
    for r in table.to_pylist():
        assert r["instruct"] == COSYVOICE3.default_instruct
        with wave.open(io.BytesIO(r["audio_data"])) as w:
            samples = w.getnframes()
        # upstream pads speech to whole tokens of 960 samples and needs exactly that many tokens
        assert len(r["speech_token"]) == math.ceil(samples / 960) == samples / 960

    online = write_parquet_dataset(tmp_path / "o", 3, family="cosyvoice3", online_features=True)
    cols = pq.read_table(online.read_text().split()[0]).column_names
    assert cols == ["utt", "wav", "audio_data", "text", "spk", "instruct"]
    cv2 = pq.read_table(write_parquet_dataset(tmp_path / "c", 2).read_text().split()[0])
    assert cv2.schema == schema(instruct=False)


def _whisper_batch(n_frames: list[int], seed: int):
    """Padded [B, 128, T] log-mel-like features and their int32 lengths."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feats = np.zeros((len(n_frames), 128, max(n_frames)), dtype=np.float32)
    for i, n in enumerate(n_frames):
        feats[i, :, :n] = rng.normal(0.3, 0.4, size=(128, n))
    return feats, np.array(n_frames, dtype=np.int32)


def test_online_feature_models_have_upstreams_io(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from cosyvoice_ext.tiny.onnx_models import write_online_feature_dir

    v3 = write_online_feature_dir(tmp_path / "v3", "cosyvoice3")
    v2 = write_online_feature_dir(tmp_path / "v2", "cosyvoice2")
    assert sorted(p.name for p in v3.iterdir()) == ["campplus.onnx", "speech_tokenizer_v3.batch.onnx"]
    assert sorted(p.name for p in v2.iterdir()) == ["campplus.onnx", "speech_tokenizer_v2.batch.onnx"]
    again = write_online_feature_dir(tmp_path / "again", "cosyvoice3")
    assert _digests(again) == _digests(v3)

    tok = ort.InferenceSession(str(v3 / "speech_tokenizer_v3.batch.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in tok.get_inputs()] == [
        ("feats", "tensor(float)", ["B", 128, "T"]), ("feats_length", "tensor(int32)", ["B"])]
    assert [(o.name, o.type) for o in tok.get_outputs()] == [("indices", "tensor(int64)")]
    feats, lengths = _whisper_batch([200, 120, 64], seed=0)
    tokens = tok.run(None, {"feats": feats, "feats_length": lengths})[0]
    assert tokens.shape == (3, 50)
    assert tokens.min() >= 0 and tokens.max() < SPEECH_TOKEN_VOCAB
    assert (tokens[1, 30:] == 0).all() and (tokens[2, 16:] == 0).all(), "frames past a row's length are masked"
    assert len(set(tokens[0].tolist())) > 10, "tokens follow the spectrum"
    other = tok.run(None, {"feats": _whisper_batch([200], seed=1)[0], "feats_length": lengths[:1]})[0]
    assert (other[0] != tokens[0]).any()
    tok2 = ort.InferenceSession(str(v2 / "speech_tokenizer_v2.batch.onnx"), providers=["CPUExecutionProvider"])
    assert (tok2.run(None, {"feats": feats, "feats_length": lengths})[0] != tokens).any()

    spk = ort.InferenceSession(str(v3 / "campplus.onnx"), providers=["CPUExecutionProvider"])
    fbank = np.random.default_rng(2).normal(size=(1, 150, 80)).astype(np.float32)
    emb = spk.run(None, {spk.get_inputs()[0].name: fbank})[0]
    assert emb.size == 192 and np.isfinite(emb).all()


# --- train.py argv per tree --------------------------------------------------------------

@pytest.mark.upstream
def test_onnx_path_goes_only_to_a_train_py_that_has_it(upstream_at, tmp_path):
    from cosyvoice_ext.tiny.workspace import Workspace

    ws = Workspace(*(tmp_path / n for n in ("r", "q", "c.yaml", "t.list", "cv.list", "l.pt", "f.pt")))
    online = Workspace(*(tmp_path / n for n in ("r", "q", "c.yaml", "t.list", "cv.list", "l.pt", "f.pt")),
                       family="cosyvoice3", onnx_dir=tmp_path / "onnx")

    def onnx_arg(cmd):
        return cmd[cmd.index("--onnx_path") + 1] if "--onnx_path" in cmd else None

    pin, main = upstream_at(PIN), upstream_at(MAIN)
    assert onnx_arg(train_command(ws, pin, "llm", tmp_path / "e")) is None
    assert onnx_arg(train_command(ws, main, "llm", tmp_path / "e")) == ""
    assert onnx_arg(train_command(online, main, "flow", tmp_path / "e")) == str(tmp_path / "onnx")
    assert onnx_arg(train_command(online, main, "flow", tmp_path / "e", onnx_path="")) == ""
    assert onnx_arg(train_command(ws, main, "llm", tmp_path / "e", onnx_path=tmp_path / "x")) == str(tmp_path / "x")
    with pytest.raises(ValueError, match="no --onnx_path"):
        train_command(online, pin, "llm", tmp_path / "e")


# --- CosyVoice3 and CosyVoice2 on the newer tree: real forward + backward (child processes) ----

def _worker(spec: dict) -> dict:
    """In a fresh interpreter: a tiny workspace per family, checkpoints loaded strictly, one batch from
    upstream's own Dataset pipeline through each model, forward and backward.

    Like train.py, sets os.environ['onnx_path'] before upstream is imported ('' = precomputed features).
    """
    os.environ["onnx_path"] = spec["onnx_path"]
    import torch

    from cosyvoice_ext.tiny.config import load_tiny_config
    from cosyvoice_ext.tiny.workspace import make_workspace

    torch.set_num_threads(1)
    out: dict = {}
    for fam in spec["families"]:
        ws = make_workspace(Path(spec["root"]) / fam, n_train=6, n_cv=2, upstream=Path(spec["upstream"]), family=fam,
                            online_features=bool(spec["onnx_path"]))
        if ws.onnx_dir is not None:  # train.py would get --onnx_path ws.onnx_dir; the import above saw it already
            assert str(ws.onnx_dir) == spec["onnx_path"], (ws.onnx_dir, spec["onnx_path"])
        from cosyvoice.tokenizer.tokenizer import get_qwen_tokenizer
        from cosyvoice.utils import onnx as upstream_onnx

        res: dict = {"online_feature": upstream_onnx.online_feature}
        tok = get_qwen_tokenizer(str(ws.qwen_dir), True, **({"version": fam} if fam == "cosyvoice3" else {}))
        specials = tok.special_tokens["additional_special_tokens"] + [tok.special_tokens["eos_token"]]
        res["max_special_id"] = max(tok.tokenizer.convert_tokens_to_ids(specials))
        res["vocab_size"] = json.loads((ws.qwen_dir / "config.json").read_text())["vocab_size"]
        for model, ckpt in (("llm", ws.llm_ckpt), ("flow", ws.flow_ckpt)):
            from cosyvoice.dataset.dataset import Dataset

            torch.manual_seed(0)
            configs = load_tiny_config(ws.config, model)
            net = configs[model]
            net.load_state_dict(torch.load(ckpt, weights_only=True), strict=True)
            batch = next(iter(Dataset(str(ws.train_list), data_pipeline=configs["data_pipeline"], mode="train",
                                      shuffle=False, partition=False)))
            net.train()
            loss = net(batch, torch.device("cpu"))["loss"]
            loss.backward()
            r = {"class": type(net).__name__, "loss": loss.item(), "keys": sorted(batch),
                 "grad_params": sum(1 for p in net.parameters() if p.grad is not None and p.grad.abs().sum() > 0),
                 "feat_len": batch["speech_feat_len"].tolist()}
            if "speech_token" in batch:
                r["token_len"] = batch["speech_token_len"].tolist()
            else:  # what the model just extracted online, through upstream's SpeechTokenExtractor
                tokens, lens = net.speech_token_extractor.inference(batch["whisper_feat"], batch["whisper_feat_len"],
                                                                    torch.device("cpu"))
                r["token_len"] = lens.tolist()
                r["token_range"] = [int(tokens.min()), int(tokens.max())]
                r["distinct_token_rows"] = len({tuple(t[:n].tolist()) for t, n in zip(tokens, lens)})
                emb = batch["utt_embedding"]
                r["embedding"] = [list(emb.shape), len({tuple(e.tolist()) for e in emb})]
            res[model] = r
        out[fam] = res
    return out


def _start_worker(spec: dict) -> subprocess.Popen:
    env = train_env(Path(spec["upstream"]))
    env.pop("onnx_path", None)
    return subprocess.Popen([sys.executable, __file__, json.dumps(spec)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])


def _result(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=600)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"worker failed (rc {proc.returncode}):\n{stderr[-6000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def main_tree_runs(upstream_at, tmp_path_factory):
    """Both child processes start at once (two cores): precomputed features for both families, and
    online features for CosyVoice3 through the tiny ONNX models."""
    tree = str(upstream_at(MAIN, patched=True))
    root = tmp_path_factory.mktemp("main_tree")
    pre = _start_worker({"upstream": tree, "root": str(root / "pre"), "onnx_path": "",
                         "families": ["cosyvoice3", "cosyvoice2"]})
    onl = _start_worker({"upstream": tree, "root": str(root / "online"), "families": ["cosyvoice3"],
                         "onnx_path": str(root / "online" / "cosyvoice3" / "onnx")})
    return {"precomputed": _result(pre), "online": _result(onl)}


@pytest.mark.upstream
@pytest.mark.parametrize("family,llm,flow", [
    ("cosyvoice3", "CosyVoice3LM", "CausalMaskedDiffWithDiT"),
    ("cosyvoice2", "Qwen2LM", "CausalMaskedDiffWithXvec"),
])
def test_newer_tree_trains_on_precomputed_features(main_tree_runs, family, llm, flow):
    res = main_tree_runs["precomputed"][family]
    assert res["online_feature"] is False, "--onnx_path '' must mean precomputed features (patched tree)"
    assert res["max_special_id"] < res["vocab_size"], "every special token the tokenizer adds needs an embedding row"
    for model, cls in (("llm", llm), ("flow", flow)):
        r = res[model]
        assert r["class"] == cls
        assert math.isfinite(r["loss"]) and r["grad_params"] > 0
        assert "whisper_feat" in r["keys"] and "speech_token" in r["keys"]
        assert ("instruct_token" in r["keys"]) == (family == "cosyvoice3")
        assert r["feat_len"] == [2 * n for n in r["token_len"]], "mel frames and tokens line up exactly"


@pytest.mark.upstream
def test_newer_tree_trains_on_online_features(main_tree_runs):
    res = main_tree_runs["online"]["cosyvoice3"]
    assert res["online_feature"] is True
    for model, cls in (("llm", "CosyVoice3LM"), ("flow", "CausalMaskedDiffWithDiT")):
        r = res[model]
        assert r["class"] == cls and math.isfinite(r["loss"]) and r["grad_params"] > 0
        assert "speech_token" not in r["keys"] and "whisper_feat" in r["keys"]
        assert r["feat_len"] == [2 * n for n in r["token_len"]]
        lo, hi = r["token_range"]
        assert 0 <= lo and hi < SPEECH_TOKEN_VOCAB
        assert r["distinct_token_rows"] == len(r["token_len"]), "tokens depend on the audio"
        n_rows = len(r["token_len"])
        assert r["embedding"] == [[n_rows, 192], n_rows], "campplus ran on every utterance"


if __name__ == "__main__":  # the child process of main_tree_runs
    print("RESULT " + json.dumps(_worker(json.loads(sys.argv[1]))), flush=True)
