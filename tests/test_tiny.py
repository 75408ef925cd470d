"""The tiny model/data generators against the REAL upstream classes (Qwen2LM, CausalMaskedDiffWithXvec,
the upstream parquet Dataset pipeline, get_qwen_tokenizer), plus byte-level determinism."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from cosyvoice_ext.tiny.data import SPEECH_TOKEN_VOCAB, write_parquet_dataset, write_train_cv
from cosyvoice_ext.tiny.qwen import LEXICON, make_tiny_qwen
from cosyvoice_ext.tiny.workspace import train_command, train_env, upstream_import_paths

WHEEL_TREE = Path("/tmp/up/wheel")
PIPELINE = ["parquet_opener", "tokenize", "filter", "resample", "compute_fbank", "parse_embedding",
            "shuffle", "sort", "batch", "padding"]


@pytest.fixture(scope="module")
def upstream_root(request) -> Path:
    """Patched upstream from conftest's `upstream_tree` when it can be built, else the local wheel tree;
    put on sys.path so `cosyvoice` and `matcha` import in this process."""
    try:
        root = Path(request.getfixturevalue("upstream_tree"))
    except (Exception, pytest.skip.Exception):
        if not (WHEEL_TREE / "cosyvoice").is_dir():
            pytest.skip("no upstream tree: neither the upstream_tree fixture nor /tmp/up/wheel is available")
        root = WHEEL_TREE
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
