"""Data-aware lint: header-level lengths, the replay of upstream's pipeline (checked against the
REAL upstream Dataset with the same seeds), and the CX6xx findings through the CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from cosyvoice_ext import cli, plugins
from cosyvoice_ext.lint import plugin as lint_rules
from cosyvoice_ext.lint import lengths
from cosyvoice_ext.lint.data_analysis import analyse
from cosyvoice_ext.lint.document import Document
from cosyvoice_ext.lint.engine import Options
from cosyvoice_ext.lint.lengths import LengthError, wav_frames
from cosyvoice_ext.lint.simulate import mel_frames
from cosyvoice_ext.tiny.config import load_tiny_config, write_tiny_config
from cosyvoice_ext.tiny.data import write_parquet_dataset


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COSYEXT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> Path:
    """The tiny Qwen2 (weights too: the upstream comparisons load the whole config, LLM included)."""
    from cosyvoice_ext.tiny.qwen import make_tiny_qwen

    return make_tiny_qwen(tmp_path_factory.mktemp("qwen") / "qwen")


@pytest.fixture(scope="module")
def qwen_tok(tmp_path_factory) -> Path:
    """A Qwen2 tokenizer directory without weights (lint only tokenizes), in a fraction of a second
    instead of building the tiny Qwen model (torch import, ~10 s): keeps the unit tier fast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from cosyvoice_ext.tiny.qwen import LEXICON

    dest = tmp_path_factory.mktemp("qwen") / "qwen"
    dest.mkdir()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(LEXICON[(i + k * step) % len(LEXICON)] for k in range(8))
              for step in (1, 5, 7) for i in range(len(LEXICON))]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps({  # what AutoTokenizer needs offline, as in Qwen's
        "tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": None, "bos_token": None}))
    return dest


@pytest.fixture(scope="module")
def upstream(request):
    """Upstream's `cosyvoice` and `matcha` importable: the patched tree from conftest, or (developer
    shortcut) an already assembled tree named by COSYEXT_TEST_UPSTREAM."""
    root = os.environ.get("COSYEXT_TEST_UPSTREAM")
    root = Path(root) if root else request.getfixturevalue("upstream_tree")
    for p in (root / "third_party" / "Matcha-TTS", root):
        if p.is_dir() and str(p) not in sys.path:
            sys.path.insert(0, str(p))
    return root


def _wav(frames: int, rate: int, channels: int = 1, extra_chunk: bool = False) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x01\x00" * frames * channels)
    data = buf.getvalue()
    if extra_chunk:  # a LIST chunk between fmt and data, as many editors write
        data = data[:36] + b"LIST\x05\x00\x00\x00hello\x00" + data[36:]
        data = data[:4] + (len(data) - 8).to_bytes(4, "little") + data[8:]
    return data


def test_wav_header_lengths():
    assert wav_frames(_wav(12345, 24000)) == (12345, 24000)
    assert wav_frames(_wav(777, 16000, channels=2, extra_chunk=True)) == (777, 16000)
    truncated = _wav(1000, 24000)[:-100]  # data chunk claims more than is there
    assert wav_frames(truncated) == (950, 24000)
    with pytest.raises(LengthError, match="not a WAV"):
        wav_frames(b"fLaC\x00\x00\x00\x22" + b"\x00" * 40)


def _analyse(cfg: Path, data: Path, **kw):
    doc = Document.from_text(cfg.read_text(), cfg)
    a = analyse(doc, Options(data=data, model="llm", **kw), keep_batches=True)
    assert a.error is None, a.error
    return a


def _upstream_batches(cfg: Path, data: Path, epochs: int) -> list[list[list[str]]]:
    """Iterate the real upstream Dataset exactly as train.py builds it (config loaded by
    HyperPyYAML, so its !apply:random.seed line seeds the global random state)."""
    from cosyvoice.dataset.dataset import Dataset

    conf = load_tiny_config(cfg, "llm")
    ds = Dataset(str(data), data_pipeline=conf["data_pipeline"], mode="train", shuffle=True, partition=True)
    out = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        out.append([sorted(b["utts"]) for b in ds])
    return out


SCENARIOS = {
    # sort buffer smaller than the shuffle buffer: the seed changes batch membership
    "three-shards-sort<shuffle": dict(data=dict(n_utts=48, shards=3, seed=1, min_sec=1.0, max_sec=6.0),
                                      conf=dict(max_frames_in_batch=600, shuffle_size=20, sort_size=10)),
    # the filter drops short audio and long transcripts
    "filter-drops": dict(data=dict(n_utts=40, shards=2, seed=2, min_sec=0.5, max_sec=5.0),
                         conf=dict(max_frames_in_batch=900, min_length=150, token_max_length=12,
                                   shuffle_size=15, sort_size=15)),
    # 16 kHz audio resampled to 24 kHz before the mel frames are counted
    "resample-16k": dict(data=dict(n_utts=30, shards=4, seed=3, min_sec=1.0, max_sec=4.0, sample_rate=16000),
                         conf=dict(max_frames_in_batch=500, shuffle_size=7, sort_size=5, seed=7)),
}


@pytest.mark.upstream
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_replay_equals_upstream_dataset(name, tmp_path, qwen, upstream):
    sc = SCENARIOS[name]
    data = write_parquet_dataset(tmp_path / "data", **sc["data"])
    cfg = write_tiny_config(tmp_path / "conf.yaml", qwen, max_epoch=3, **sc["conf"])
    ours = _analyse(cfg, data)
    theirs = _upstream_batches(cfg, data, epochs=3)
    assert len(ours.epochs) == 3
    for epoch in range(3):
        assert ours.epochs[epoch].batches == len(theirs[epoch])
        assert [sorted(b) for b in ours.batch_utts[epoch]] == theirs[epoch], f"epoch {epoch} composition differs"
    kept = sum(len(b) for b in theirs[0])
    assert ours.kept == kept and ours.total - sum(ours.dropped.values()) == kept
    if name == "filter-drops":
        assert set(ours.dropped) == {"min_length", "token_max_length"} and kept < ours.total
    if name == "three-shards-sort<shuffle":  # the seed matters here, so the match is not luck
        other = _analyse(Path(str(cfg)), data, epochs=1)
        cfg.write_text(cfg.read_text().replace("random.seed [1986]", "random.seed [5]"))
        reseeded = _analyse(cfg, data, epochs=1)
        assert reseeded.batch_utts[0] != other.batch_utts[0]


@pytest.mark.upstream
def test_mel_frame_count_matches_matcha(upstream):
    import torch
    from matcha.utils.audio import mel_spectrogram

    for n in (721, 959, 1000, 24000, 24479, 50000):  # reflect padding needs n > 720
        y = torch.zeros(1, n)
        spec = mel_spectrogram(y, 1920, 80, 24000, 480, 1920, 0, 8000, center=False)
        assert spec.shape[-1] == mel_frames(n, 1920, 480, False), n


@pytest.mark.upstream
def test_empty_first_batch_trap_is_real(tmp_path, qwen, upstream):
    data = write_parquet_dataset(tmp_path / "data", 12, seed=4, min_sec=2.0, max_sec=4.0)
    cfg = write_tiny_config(tmp_path / "conf.yaml", qwen, max_epoch=1, max_frames_in_batch=90)
    ours = _analyse(cfg, data)
    assert ours.epochs[0].empty_first and ours.batch_utts[0][0] == []
    with pytest.raises(RuntimeError, match="empty"):  # padding: pad_sequence of nothing
        _upstream_batches(cfg, data, epochs=1)


# --- through the CLI ---------------------------------------------------------------------------

@pytest.fixture
def cli_pm():
    pm = plugins.new_manager(autoload=False)
    pm.register(lint_rules, name="lint_rules")
    plugins.reset_manager(pm)
    yield
    plugins.reset_manager(None)


def _lint_json(capsys, *argv) -> tuple[int, dict]:
    rc = cli.main(["lint", *map(str, argv), "--format", "json"])
    return rc, json.loads(capsys.readouterr().out)


def test_cli_data_mode_findings(tmp_path, qwen_tok, capsys, cli_pm):
    data = write_parquet_dataset(tmp_path / "data", 20, seed=5, min_sec=1.0, max_sec=3.0)
    cfg = write_tiny_config(tmp_path / "conf.yaml", qwen_tok, max_epoch=2, max_frames_in_batch=400, log_interval=50,
                            accum_grad=4, scheduler="warmuplr", warmup_steps=500)
    rc, out = _lint_json(capsys, cfg, "--data", data, "--model", "llm")
    codes = {f["code"]: f for f in out["findings"]}
    summary = out["data"][str(cfg)]
    assert summary["total"] == 20 and summary["kept"] == 20
    b = summary["epochs"][0]["batches"]
    assert summary["epochs"][0]["steps"] == b // 4 and summary["total_steps"] == 2 * (b // 4)
    assert {"CX602", "CX603", "CX607"} <= set(codes)
    lines = cfg.read_text().splitlines()
    assert "warmup_steps" in lines[codes["CX602"]["line"] - 1] and "log_interval" in lines[codes["CX603"]["line"] - 1]
    assert rc == 0  # warnings only

    # the seed's scenario, now with data: every sample dropped
    cfg.write_text(cfg.read_text().replace("token_max_length: 200", "token_max_length: 0"))
    rc, out = _lint_json(capsys, cfg, "--data", data, "--model", "llm")
    errors = {f["code"] for f in out["findings"] if f["severity"] == "error"}
    assert errors == {"CX101", "CX601"} and rc == 1
    assert out["data"][str(cfg)]["dropped"] == {"more text tokens than filter token_max_length": 20}


def test_cli_oversize_and_zero_steps(tmp_path, qwen_tok, capsys, cli_pm):
    data = write_parquet_dataset(tmp_path / "data", 6, seed=6, min_sec=1.0, max_sec=6.0)
    cfg = write_tiny_config(tmp_path / "conf.yaml", qwen_tok, max_epoch=1, max_frames_in_batch=250, accum_grad=50)
    rc, out = _lint_json(capsys, cfg, "--data", data)
    codes = {f["code"]: f for f in out["findings"]}
    assert "CX604" in codes and codes["CX606"]["severity"] == "error" and rc == 1


def test_length_index_cache(tmp_path, qwen_tok, monkeypatch):
    data = write_parquet_dataset(tmp_path / "data", 8, seed=7)
    cfg = write_tiny_config(tmp_path / "conf.yaml", qwen_tok)
    first = _analyse(cfg, data)

    def no_parquet(path):
        raise AssertionError("parquet read although the index is cached")

    monkeypatch.setattr(lengths, "_read_parquet", no_parquet)
    second = _analyse(cfg, data)
    assert second.batch_utts == first.batch_utts
    shard = Path(data.read_text().split()[0])
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))  # "changed" shard
    doc = Document.from_text(cfg.read_text(), cfg)
    with pytest.raises(AssertionError, match="parquet read"):
        analyse(doc, Options(data=data))


def test_static_lint_imports_neither_torch_nor_pyarrow():
    base = Path(__file__).parent / "lint_cases" / "base.yaml"
    code = ("import sys; from cosyvoice_ext.cli import main; rc = main(['lint', %r]); "
            "heavy = [m for m in ('torch', 'pyarrow', 'transformers') if m in sys.modules]; "
            "assert rc == 0 and not heavy, (rc, heavy)") % str(base)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_text_token_counts_match_transformers(qwen_tok):
    """The fast path (tokenizers on tokenizer.json) counts exactly what upstream's AutoTokenizer +
    CosyVoice2 special tokens produce, markup tokens included."""
    import random

    from cosyvoice_ext.lint.text_tokens import SPECIAL_TOKENS, qwen_counter
    from cosyvoice_ext.tiny.qwen import LEXICON

    rng = random.Random(0)
    pieces = [*SPECIAL_TOKENS["additional_special_tokens"], "<|endoftext|>", " ", "\n", "é", "中文", "[breath", "<strong"]
    texts = ["".join(rng.choice([rng.choice(LEXICON) + " ", rng.choice(pieces), rng.choice("abXY.,!? ")])
                     for _ in range(rng.randint(0, 20))) for _ in range(500)]
    fast, slow = qwen_counter(qwen_tok), qwen_counter(qwen_tok, via_transformers=True)
    assert fast(texts) == slow(texts)
    assert fast(["[breath]"]) == [1]


# --- data that yields nothing ------------------------------------------------------------------

def _zero_row_shard(tmp_path: Path) -> Path:
    import pyarrow.parquet as pq

    real = write_parquet_dataset(tmp_path / "data", 2, seed=1)
    shard = Path(real.read_text().split()[0])
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(shard).slice(0, 0), empty)  # the real schema, no rows
    return empty


@pytest.mark.parametrize("case, says", [
    ("empty list", "it lists no shards"),
    ("missing shards", "none of its 2 entries can be opened"),
    ("zero-row shard", "its 1 readable shard(s) hold zero rows"),
])
def test_data_that_yields_no_utterance_is_an_error(case, says, tmp_path, qwen_tok, capsys, cli_pm):
    """Not "0/0 utterances kept": train.py would start and train on nothing, so it is an error."""
    cfg = write_tiny_config(tmp_path / "conf.yaml", qwen_tok)
    lst = tmp_path / "data.list"
    lst.write_text({"empty list": "\n",
                    "missing shards": f"{tmp_path / 'gone-0.parquet'}\n{tmp_path / 'gone-1.parquet'}\n",
                    "zero-row shard": f"{_zero_row_shard(tmp_path)}\n" if case == "zero-row shard" else ""}[case])
    rc, out = _lint_json(capsys, cfg, "--data", lst, "--model", "llm")
    cx600 = [f for f in out["findings"] if f["code"] == "CX600"]
    assert rc == 1 and len(cx600) == 1 and cx600[0]["severity"] == "error", out["findings"]
    assert "yields no utterances" in cx600[0]["message"] and says in cx600[0]["message"]
    assert not any(f["code"] in ("CX607", "CX602", "CX603") for f in out["findings"])  # no "0/0 kept", no noise
    assert out["data"][str(cfg)]["total"] == 0


def test_cv_pass_with_an_empty_first_batch_is_an_error(tmp_path, qwen_tok, capsys, cli_pm):
    """train.py runs its CV pass over --cv_data after each epoch through the same pipeline: CV utterances
    all longer than max_frames_in_batch make its first batch empty and padding crash (seen in the
    differential corpus, mutation mfib-small). The train data alone looks fine."""
    train = write_parquet_dataset(tmp_path / "train", 8, seed=3, min_sec=0.5, max_sec=3.0)
    cv = write_parquet_dataset(tmp_path / "cv", 3, seed=4, min_sec=2.6, max_sec=3.0)
    cfg = write_tiny_config(tmp_path / "conf.yaml", qwen_tok, max_frames_in_batch=120)
    rc, out = _lint_json(capsys, cfg, "--data", train, "--model", "llm")
    assert not [f for f in out["findings"] if f["code"] == "CX605"]
    rc, out = _lint_json(capsys, cfg, "--data", train, "--cv-data", cv, "--model", "llm")
    cx605 = [f for f in out["findings"] if f["code"] == "CX605"]
    assert rc == 1 and cx605 and "CV pass" in cx605[0]["message"], out["findings"]
    assert out["data"][str(cfg)]["cv"]["total"] == 3


def test_speech_token_stored_as_a_string_is_exit_2_with_a_message(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cosyvoice_ext.tiny.data import write_parquet_dataset
    from tests.helpers import run_cosyext

    data_list = write_parquet_dataset(tmp_path / "data", 3)
    shard = data_list.read_text().split()[0]
    table = pq.read_table(shard)
    tokens = pa.array([str(x) for x in table.column("speech_token").to_pylist()])
    pq.write_table(table.set_column(table.schema.get_field_index("speech_token"), "speech_token", tokens), shard)
    config = tmp_path / "c.yaml"
    config.write_text("train_conf: {max_epoch: 1}\n")
    res = run_cosyext("lint", str(config), "--data", str(data_list))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "column speech_token is stored as string" in res.stderr and "Traceback" not in res.stderr
