"""Lint for CosyVoice3 and the 2026 upstream (ace7c47): the family from the config's classes, the
upstream from --upstream (read, never imported) or the config, the num_frames alignment, names the
upstream lacks, what to pass as train.py --onnx_path, and the data-aware instruct / feature /
token-alignment checks. Unit tier: no torch, no upstream; the upstream behaviour each rule cites
is checked against the real ace7c47 tree in test_lint_ace7c47.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from cosyvoice_ext import cli, plugins
from cosyvoice_ext.lint import plugin as lint_rules
from cosyvoice_ext.lint.data_analysis import analyse
from cosyvoice_ext.lint.document import Document
from cosyvoice_ext.lint.engine import Options, lint_document
from cosyvoice_ext.lint.registry import collect
from cosyvoice_ext.lint.simulate import _shuffle
from cosyvoice_ext.lint.target import infer_upstream, config_family, read_upstream
from cosyvoice_ext.errors import UsageError
from cosyvoice_ext.tiny.data import write_parquet_dataset

CASES = Path(__file__).parent / "lint_cases"
BASE = (CASES / "base.yaml").read_text()  # CosyVoice2, compute_fbank without either generation's keyword

# A CosyVoice3 config of our own with the keys the rules read (structure as upstream's cosyvoice3 recipe,
# tiny sizes). {qwen}: tokenizer dir, {nf}: compute_fbank/compute_whisper_fbank num_frames.
CV3 = """\
__seed: !apply:random.seed [7]
sample_rate: 24000
token_frame_rate: 25
token_mel_ratio: 2
chunk_size: 25
qwen_pretrain_path: {qwen}
llm: !new:cosyvoice.llm.llm.CosyVoice3LM
    llm_input_size: 64
    llm_output_size: 64
    speech_token_size: 6561
    llm: !new:cosyvoice.llm.llm.Qwen2Encoder
        pretrain_path: !ref <qwen_pretrain_path>
    sampling: !name:cosyvoice.utils.common.ras_sampling
        top_p: 0.8
        top_k: 25
        win_size: 10
        tau_r: 0.1
flow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithDiT
    input_size: 80
    output_size: 80
    spk_embed_dim: 192
    output_type: 'mel'
    vocab_size: 6561
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: 3
    pre_lookahead_layer: !new:cosyvoice.transformer.upsample_encoder.PreLookaheadLayer
        in_channels: 80
        channels: 32
        pre_lookahead_len: 3
    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 0.000001
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.DiT.dit.DiT
            dim: 64
            depth: 1
            heads: 2
            dim_head: 32
            ff_mult: 2
            mel_dim: 80
            mu_dim: 80
            spk_dim: 80
            out_channels: 80
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
            num_decoding_left_chunks: -1
hift: null
hifigan: null
parquet_opener: !name:cosyvoice.dataset.processor.parquet_opener
get_tokenizer: !name:cosyvoice.tokenizer.tokenizer.get_qwen_tokenizer
    token_path: !ref <qwen_pretrain_path>
    skip_special_tokens: True
    version: cosyvoice3
allowed_special: 'all'
tokenize: !name:cosyvoice.dataset.processor.tokenize
    get_tokenizer: !ref <get_tokenizer>
    allowed_special: !ref <allowed_special>
filter: !name:cosyvoice.dataset.processor.filter
    max_length: 6000
    min_length: 10
    token_max_length: 200
    token_min_length: 1
resample: !name:cosyvoice.dataset.processor.resample
    resample_rate: !ref <sample_rate>
feat_extractor: !name:matcha.utils.audio.mel_spectrogram
    n_fft: 1920
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 480
    win_size: 1920
    fmin: 0
    fmax: null
    center: False
compute_fbank: !name:cosyvoice.dataset.processor.compute_fbank
    feat_extractor: !ref <feat_extractor>
    num_frames: {nf}
compute_whisper_fbank: !name:cosyvoice.dataset.processor.compute_whisper_fbank
    num_frames: {nf}
parse_embedding: !name:cosyvoice.dataset.processor.parse_embedding
    normalize: True
shuffle: !name:cosyvoice.dataset.processor.shuffle
    shuffle_size: 8
sort: !name:cosyvoice.dataset.processor.sort
    sort_size: 4
batch: !name:cosyvoice.dataset.processor.batch
    batch_type: 'dynamic'
    max_frames_in_batch: 400
padding: !name:cosyvoice.dataset.processor.padding
    use_spk_embedding: False
data_pipeline: [
    !ref <parquet_opener>,
    !ref <tokenize>,
    !ref <filter>,
    !ref <resample>,
    !ref <compute_fbank>,
    !ref <parse_embedding>,
    !ref <compute_whisper_fbank>,
    !ref <shuffle>,
    !ref <sort>,
    !ref <batch>,
    !ref <padding>,
]
train_conf:
    optim: adam
    optim_conf:
        lr: 0.0001
    scheduler: constantlr
    scheduler_conf: {{}}
    max_epoch: 2
    grad_clip: 5
    accum_grad: 1
    log_interval: 1
    save_per_step: -1
"""


def cv2_2026(nf: int | None) -> str:
    """base.yaml written for the 2026 upstream (as its CosyVoice2 recipe): compute_fbank num_frames, whisper stage."""
    if nf is None:
        return BASE
    return BASE.replace("    feat_extractor: !ref <feat_extractor>\n",
                        f"    feat_extractor: !ref <feat_extractor>\n    num_frames: {nf}\n"
                        "compute_whisper_fbank: !name:cosyvoice.dataset.processor.compute_whisper_fbank\n"
                        f"    num_frames: {nf}\n", 1) \
        .replace("    !ref <parse_embedding>,\n", "    !ref <parse_embedding>,\n    !ref <compute_whisper_fbank>,\n")


def cv2_2025() -> str:
    """base.yaml as the 2025 recipe writes compute_fbank (trim to token_mel_ratio)."""
    return BASE.replace("    feat_extractor: !ref <feat_extractor>\n",
                        "    feat_extractor: !ref <feat_extractor>\n    token_mel_ratio: !ref <token_mel_ratio>\n", 1)


_STUB = "raise SystemExit('cosyext lint imported ' + __file__)  # it must only read upstream\n"
_ANY = "    def __init__(self, **kwargs):\n        pass\n"


def fake_tree(root: Path, *, onnx: bool, patched: bool = True) -> Path:
    """A stand-in upstream tree: just the names and signatures lint reads (each module exits if imported).
    onnx=True: the 2026 generation (--onnx_path, num_frames, CosyVoice3, half-buffer shuffle)."""
    fbank_kw = "num_frames=-1" if onnx else "token_mel_ratio=0"
    keep = "buf = buf[half:]" if onnx else "buf = []"
    files = {
        "bin/train.py": "parser.add_argument('--onnx_path')\n" if onnx else "parser.add_argument('--model')\n",
        "dataset/processor.py": (
            "def parquet_opener(data, mode='train'): pass\n"
            "def tokenize(data, get_tokenizer, allowed_special, mode='train'): pass\n"
            "def filter(data, max_length=10240, min_length=10, token_max_length=200, token_min_length=1,\n"
            "           min_output_input_ratio=0.0005, max_output_input_ratio=1, mode='train'): pass\n"
            "def resample(data, resample_rate=22050, min_sample_rate=16000, mode='train'): pass\n"
            f"def compute_fbank(data, feat_extractor, {fbank_kw}, mode='train'): pass\n"
            "def parse_embedding(data, normalize, mode='train'): pass\n"
            f"def shuffle(data, shuffle_size=10000, mode='train'):\n    buf, half = [], 1\n    {keep}\n"
            "def sort(data, sort_size=500, mode='train'): pass\n"
            "def batch(data, batch_type='static', batch_size=16, max_frames_in_batch=12000, mode='train'): pass\n"
            "def padding(data, use_spk_embedding, mode='train', gan=False, dpo=False): pass\n"
            + ("def compute_whisper_fbank(data, num_frames=-1, mode='train'): pass\n" if onnx else "")),
        "llm/llm.py": "class Qwen2Encoder:\n" + _ANY + "class Qwen2LM:\n" + _ANY
                      + ("class CosyVoice3LM(Qwen2LM):\n" + _ANY if onnx else ""),
        "flow/flow.py": "class CausalMaskedDiffWithXvec:\n" + _ANY
                        + ("class CausalMaskedDiffWithDiT:\n" + _ANY if onnx else ""),
        "flow/flow_matching.py": "class CausalConditionalCFM:\n" + _ANY,
        "flow/decoder.py": "class CausalConditionalDecoder:\n" + _ANY,
        "transformer/upsample_encoder.py": "class UpsampleConformerEncoder:\n" + _ANY + "class PreLookaheadLayer:\n"
                                           + ("    def __init__(self, in_channels, channels, pre_lookahead_len=1): pass\n"
                                              if onnx else "    def __init__(self, channels, pre_lookahead_len=1): pass\n"),
        "tokenizer/tokenizer.py": "def get_qwen_tokenizer(token_path, skip_special_tokens"
                                  + (", version='cosyvoice2'" if onnx else "") + "): pass\n",
        "utils/common.py": "def ras_sampling(**kwargs): pass\n",
    }
    if onnx:
        files["flow/DiT/dit.py"] = "class DiT:\n" + _ANY
        files["utils/onnx.py"] = ("import os\nonnx_path = os.environ.get('onnx_path')\n"
                                  + ("if onnx_path:\n" if patched else "if onnx_path is not None:\n")
                                  + "    online_feature = True\n")
    for rel, text in files.items():
        path = root / "cosyvoice" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_STUB + text)
    return root


def word_tokenizer(dest: Path) -> Path:
    """A tokenizer.json (one token per word of the tiny data's language) for lint's text-token counts:
    no transformers, no model weights, milliseconds."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from cosyvoice_ext.tiny.qwen import LEXICON

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *LEXICON])}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.save(str(dest / "tokenizer.json"))
    return dest


def rewrite_shards(data_list: Path, dest: Path, fn, keep_schema: bool = True) -> Path:
    """A copy of a parquet data set with every row changed by fn(row) -> row (new columns: keep_schema=False)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for line in data_list.read_text().split():
        t = pq.read_table(line)
        p = dest / Path(line).name
        pq.write_table(pa.Table.from_pylist([fn(r) for r in t.to_pylist()], schema=t.schema if keep_schema else None), p)
        out.append(f"{p}\n")
    (dest / "data.list").write_text("".join(out))
    return dest / "data.list"


def trim_audio(row: dict, k: int) -> dict:
    """Drop the last k samples of a row's WAV (off the 40 ms token grid); tokens unchanged."""
    import io
    import wave

    r = wave.open(io.BytesIO(row["audio_data"]))
    frames = r.readframes(r.getnframes())
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(r.getframerate())
        w.writeframes(frames[: len(frames) - 2 * k])
    return {**row, "audio_data": buf.getvalue()}


@pytest.fixture(scope="module")
def registry():
    pm = plugins.new_manager(autoload=False)
    pm.register(lint_rules, name="lint_rules")
    return collect(pm)


@pytest.fixture
def cli_pm():
    pm = plugins.new_manager(autoload=False)
    pm.register(lint_rules, name="lint_rules")
    plugins.reset_manager(pm)
    yield
    plugins.reset_manager(None)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COSYEXT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return word_tokenizer(tmp_path_factory.mktemp("tok"))


def _lint(registry, text: str, **opts):
    return lint_document(Document.from_text(text, "conf.yaml"), registry, Options(**opts))


def _codes(res, code: str) -> list:
    return [f for f in res.findings if f.code == code]


# --- family and upstream ------------------------------------------------------------------------

def test_family_and_upstream_in_concise_and_json_output(tmp_path, capsys, cli_pm):
    cfg = tmp_path / "cv3.yaml"
    cfg.write_text(CV3.format(qwen="''", nf=960))
    cli.main(["lint", str(cfg)])
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (f"{cfg}: cosyvoice3 (llm CosyVoice3LM, flow CausalMaskedDiffWithDiT); upstream: train.py with "
                     "--onnx_path (2026 upstream), inferred from the config: CosyVoice3 classes")
    cli.main(["lint", str(cfg), str(CASES / "base.yaml"), "--format", "json"])
    targets = json.loads(capsys.readouterr().out)["targets"]
    assert targets[str(cfg)]["family"] == "cosyvoice3"
    assert targets[str(cfg)]["classes"]["flow"] == "cosyvoice.flow.flow.CausalMaskedDiffWithDiT"
    assert targets[str(cfg)]["upstream"]["onnx_path_flag"] is True
    base = targets[str(CASES / "base.yaml")]
    assert base["family"] == "cosyvoice2" and base["upstream"]["onnx_path_flag"] is None


@pytest.mark.parametrize("text, flag", [
    (CV3.format(qwen="''", nf=960), True),  # CosyVoice3 classes
    ("llm: !new:cosyvoice.llm.llm.Qwen2LM {}\ncompute_fbank: !name:cosyvoice.dataset.processor.compute_fbank\n"
     "    num_frames: 960\n", True),  # ace7c47's CosyVoice2 recipe
    ("llm: !new:cosyvoice.llm.llm.Qwen2LM {}\ncompute_fbank: !name:cosyvoice.dataset.processor.compute_fbank\n"
     "    token_mel_ratio: 2\n", False),  # the 2025 recipe
    ("llm: !new:cosyvoice.llm.llm.Qwen2LM {}\n", None),
    ("llm: !new:my.own.Model {}\n", None),
])
def test_upstream_inferred_from_the_config(text, flag):
    doc = Document.from_text(text)
    assert infer_upstream(doc, config_family(doc)).onnx_flag is flag


def test_upstream_tree_is_read_as_text_never_imported(tmp_path):
    new = read_upstream(fake_tree(tmp_path / "new", onnx=True))
    assert new.onnx_flag is True and new.empty_means_precomputed is True and new.shuffle_keeps_half is True
    stock = read_upstream(fake_tree(tmp_path / "stock", onnx=True, patched=False))
    assert stock.empty_means_precomputed is False
    old = read_upstream(fake_tree(tmp_path / "old", onnx=False))
    assert old.onnx_flag is False and old.shuffle_keeps_half is False
    with pytest.raises(UsageError, match="not an upstream CosyVoice tree"):
        read_upstream(tmp_path)


def test_cli_upstream_option(tmp_path, capsys, cli_pm):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(cv2_2026(nf=960))
    assert cli.main(["lint", str(cfg), "--upstream", str(tmp_path / "nowhere")]) == 2
    assert "not an upstream CosyVoice tree" in capsys.readouterr().err
    # every stub module of the fake tree raises SystemExit if imported: reaching rc 1 proves lint only read them
    rc = cli.main(["lint", str(cfg), "--upstream", str(fake_tree(tmp_path / "old", onnx=False)), "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and {f["code"] for f in out["findings"] if f["severity"] == "error"} == {"CX505"}


# --- CX306 / CX505: the 2026 pipeline -------------------------------------------------------------

def test_cx306_flow_without_num_frames_only_matters_at_the_2026_upstream(registry, tmp_path):
    text = CV3.format(qwen="''", nf=960).replace("    num_frames: 960\ncompute_whisper", "compute_whisper") \
        .replace("compute_whisper_fbank: !name:cosyvoice.dataset.processor.compute_whisper_fbank\n    num_frames: 960",
                 "compute_whisper_fbank: !name:cosyvoice.dataset.processor.compute_whisper_fbank")
    found = _codes(_lint(registry, text, model="flow"), "CX306")
    assert len(found) == 1 and "has no num_frames" in found[0].message and found[0].fix == "add num_frames: 960"
    assert not _codes(_lint(registry, text, model="llm"), "CX306")  # the LLM has no mel/token alignment
    cv2 = cv2_2026(nf=None)
    assert _codes(_lint(registry, cv2, model="flow", upstream=fake_tree(tmp_path / "n", onnx=True)), "CX306")
    assert not _codes(_lint(registry, cv2, model="flow", upstream=fake_tree(tmp_path / "o", onnx=False)), "CX306")


def test_cx505_checks_names_and_keywords_against_the_tree(registry, tmp_path):
    old, new = fake_tree(tmp_path / "old", onnx=False), fake_tree(tmp_path / "new", onnx=True)
    cv3 = CV3.format(qwen="''", nf=960)
    msgs = sorted(f.message.split(" (")[0] for f in _codes(_lint(registry, cv3, upstream=old), "CX505"))
    assert any("CosyVoice3LM does not exist" in m for m in msgs)
    assert any("compute_fbank() in the upstream" in m and "'num_frames'" in m for m in msgs)
    assert any("compute_whisper_fbank does not exist" in m for m in msgs)
    assert any("PreLookaheadLayer() in the upstream" in m and "'in_channels'" in m for m in msgs)
    assert not _codes(_lint(registry, cv3, upstream=new), "CX505")
    # the 2025 CosyVoice2 recipe against the 2026 tree: compute_fbank lost token_mel_ratio
    res = _codes(_lint(registry, cv2_2025(), upstream=new), "CX505")
    assert [f.message.split(":")[0] for f in res] == ["compute_fbank() in the upstream at " + str(new)
                                                     + " has no argument 'token_mel_ratio' (it takes feat_extractor, num_frames)"]


# --- CX506: train.py --onnx_path ------------------------------------------------------------------

def test_cx106_has_no_cosyvoice2_estimate_for_the_dit_flow(registry):
    text = CV3.format(qwen="''", nf=960).replace("max_frames_in_batch: 400", "max_frames_in_batch: 20000")
    flow = _codes(_lint(registry, text, model="flow", gpu_memory=1), "CX106")
    assert [f.severity for f in flow] == ["info"] and "no measured memory model for the cosyvoice3 flow" in flow[0].message
    llm = _codes(_lint(registry, text, model="llm", gpu_memory=1), "CX106")  # the same Qwen2 LLM: estimated
    assert [f.severity for f in llm] == ["warning"] and "GiB for llm" in llm[0].message


def test_cx506_says_what_to_pass_per_family(registry):
    cv3 = _codes(_lint(registry, CV3.format(qwen="''", nf=960), model="flow"), "CX506")
    assert len(cv3) == 1 and cv3[0].severity == "info"
    assert "--onnx_path ''" in cv3[0].message and "campplus.onnx + speech_tokenizer_v3.batch.onnx" in cv3[0].message
    cv2 = _codes(_lint(registry, cv2_2026(nf=960), model="llm"), "CX506")
    assert len(cv2) == 1 and "speech_tokenizer_v2.batch.onnx" in cv2[0].message
    assert not _codes(_lint(registry, BASE, model="llm"), "CX506")  # upstream unknown
    assert not _codes(_lint(registry, CV3.format(qwen="''", nf=960), model="hifigan"), "CX506")


def test_cx506_checks_the_onnx_dir(registry, tmp_path):
    text = CV3.format(qwen="''", nf=960)
    res = _codes(_lint(registry, text, model="llm", onnx_path=str(tmp_path / "missing")), "CX506")
    assert [f.severity for f in res] == ["error"] and "no such directory" in res[0].message
    d = tmp_path / "onnx"
    d.mkdir()
    (d / "campplus.onnx").write_bytes(b"x")
    (d / "speech_tokenizer_v2.batch.onnx").write_bytes(b"x")  # the other family's tokenizer
    res = _codes(_lint(registry, text, model="llm", onnx_path=str(d)), "CX506")
    assert [f.severity for f in res] == ["error"] and "lacks speech_tokenizer_v3.batch.onnx" in res[0].message
    (d / "speech_tokenizer_v3.batch.onnx").write_bytes(b"x")
    assert not _codes(_lint(registry, text, model="llm", onnx_path=str(d)), "CX506")
    no_whisper = text.replace("    !ref <compute_whisper_fbank>,\n", "")
    res = _codes(_lint(registry, no_whisper, model="llm", onnx_path=str(d)), "CX506")
    assert len(res) == 1 and "whisper_feat" in res[0].message and res[0].severity == "error"


def test_cx506_upstream_tree_decides(registry, tmp_path):
    text = CV3.format(qwen="''", nf=960)
    stock = fake_tree(tmp_path / "stock", onnx=True, patched=False)
    res = _codes(_lint(registry, text, model="llm", onnx_path="", upstream=stock), "CX506")
    assert [f.severity for f in res] == ["error"] and "unpatched" in res[0].message
    assert "apply-patches" in _codes(_lint(registry, text, model="llm", upstream=stock), "CX506")[0].message
    patched = fake_tree(tmp_path / "patched", onnx=True)
    assert not _codes(_lint(registry, text, model="llm", onnx_path="", upstream=patched), "CX506")
    old = fake_tree(tmp_path / "old", onnx=False)
    res = _codes(_lint(registry, cv2_2026(nf=None), model="llm", onnx_path="", upstream=old), "CX506")
    assert [f.severity for f in res] == ["error"] and "unrecognized arguments" in res[0].message


# --- data-aware ---------------------------------------------------------------------------------

def _data(tmp_path: Path, fn=None, keep_schema: bool = True, **kw) -> Path:
    data = write_parquet_dataset(tmp_path / "data", kw.pop("n", 12), shards=kw.pop("shards", 2), seed=kw.pop("seed", 3),
                                 **kw)
    return rewrite_shards(data, tmp_path / "data2", fn, keep_schema) if fn else data


def _run(registry, tmp_path, text: str, data: Path, **opts):
    cfg = tmp_path / "conf.yaml"
    cfg.write_text(text)
    return lint_document(Document.from_text(text, cfg), registry, Options(data=data, **opts))


def test_cx608_instruct_missing_for_the_cosyvoice3_llm(registry, tmp_path, tok):
    text = CV3.format(qwen=tok, nf=960)
    data = _data(tmp_path)
    res = _codes(_run(registry, tmp_path, text, data, model="llm"), "CX608")
    assert [f.severity for f in res] == ["error"] and res[0].message.startswith("12 of 12 rows have no instruct text; "
                                                                              "2 of 2 shard(s) have no instruct column")
    assert [f.severity for f in _codes(_run(registry, tmp_path, text, data), "CX608")] == ["warning"]
    assert not _codes(_run(registry, tmp_path, text, data, model="flow"), "CX608")  # the flow ignores instruct
    assert not _codes(_run(registry, tmp_path, BASE.replace("qwen_pretrain_path: ''", f"qwen_pretrain_path: {tok}"),
                           data, model="llm"), "CX608")  # CosyVoice2
    rows = iter(range(1000))
    one_null = rewrite_shards(data, tmp_path / "instr", lambda r: {
        **r, "instruct": None if next(rows) == 4 else "You are a helpful assistant.<|endofprompt|>"}, keep_schema=False)
    res = _codes(_run(registry, tmp_path, text, one_null, model="llm"), "CX608")
    assert len(res) == 1 and res[0].message.startswith("1 of 12 rows have no instruct text (e.g. tiny_spk00_00004)")
    full = rewrite_shards(data, tmp_path / "instr2", lambda r: {**r, "instruct": "You are a helpful assistant."},
                          keep_schema=False)
    assert not _codes(_run(registry, tmp_path, text, full, model="llm"), "CX608")


def test_cx506_with_data_without_features(registry, tmp_path, tok):
    text = CV3.format(qwen=tok, nf=960)
    bare = _data(tmp_path, lambda r: {k: v for k, v in r.items() if k not in ("speech_token", "utt_embedding")},
                 keep_schema=False)
    whole = _run(registry, tmp_path, text, bare, model="flow")
    res = _codes(whole, "CX506")
    assert [f.severity for f in res] == ["warning"] and "online extraction is required" in res[0].message
    # ...and the replay shows what that run does (online keeps the rows), not an "everything dropped" error
    assert whole.data["online_features"] is True and whole.data["kept"] == 12 and not _codes(whole, "CX601")
    assert "(speech_token: no column in 2 of 2 shard(s) (12 rows); utt/spk_embedding: no columns in 2 of 2 shard(s) " \
           "(12 rows) (of 12 rows))" in res[0].message
    res = _codes(_run(registry, tmp_path, text, bare, model="flow", onnx_path=""), "CX506")
    assert [f.severity for f in res] == ["error"] and "lacks them" in res[0].message
    d = tmp_path / "onnx"
    d.mkdir()
    for f in ("campplus.onnx", "speech_tokenizer_v3.batch.onnx"):
        (d / f).write_bytes(b"x")
    res = _run(registry, tmp_path, text, bare, model="flow", onnx_path=str(d))
    assert not _codes(res, "CX506") and not _codes(res, "CX601")
    assert res.data["kept"] == 12 and res.data["online_features"] is True  # online: rows without tokens are kept
    # the 2025 upstream has no online extraction at all
    old = BASE.replace("qwen_pretrain_path: ''", f"qwen_pretrain_path: {tok}")
    res = _codes(_run(registry, tmp_path, old, bare, model="llm", upstream=fake_tree(tmp_path / "o", onnx=False)), "CX506")
    assert [f.severity for f in res] == ["error"] and "no online feature extraction" in res[0].message


def test_cx506_feature_columns_without_values_train_with_neither_choice(registry, tmp_path, tok):
    """`cosyext prepare --no-features` data: empty speech_token and all-zero embeddings, columns present.
    Upstream uses a present column as it is, so --onnx_path DIR does not rescue it."""
    text = CV3.format(qwen=tok, nf=960)
    blank = _data(tmp_path, lambda r: {**r, "speech_token": [], "utt_embedding": [0.0] * 192,
                                       "spk_embedding": [0.0] * 192})
    d = tmp_path / "onnx"
    d.mkdir()
    for f in ("campplus.onnx", "speech_tokenizer_v3.batch.onnx"):
        (d / f).write_bytes(b"x")
    for given, severity in ((None, "warning"), ("", "error"), (str(d), "error")):
        res = _codes(_run(registry, tmp_path, text, blank, model="flow", onnx_path=given), "CX506")
        assert [f.severity for f in res] == [severity], given
        assert "speech_token: empty in 12 rows" in res[0].message and "all zeros in 12 rows" in res[0].message
    # complete data with a DIR: nothing would be extracted online
    res = _codes(_run(registry, tmp_path, text, _data(tmp_path / "full"), model="flow", onnx_path=str(d)), "CX506")
    assert [f.severity for f in res] == ["info"] and "nothing is extracted online" in res[0].message


def test_cx609_precomputed_tokens_vs_padded_mels(registry, tmp_path, tok):
    text = CV3.format(qwen=tok, nf=960)
    data = _data(tmp_path, n=8, shards=1)
    res = _run(registry, tmp_path, text, data, model="flow", onnx_path="")
    assert not _codes(res, "CX609") and res.data["token_alignment"]["misaligned"] == 0  # tiny data: ceil(n / 960)
    short = rewrite_shards(data, tmp_path / "short", lambda r: {**r, "speech_token": r["speech_token"][:-1]})
    res = _run(registry, tmp_path, text, short, model="flow", onnx_path="")
    f = _codes(res, "CX609")
    assert [x.severity for x in f] == ["error"] and f[0].message.startswith("8 of 8 rows")
    assert res.data["token_alignment"]["crashing_batches"] == res.data["epochs"][0]["batches"] >= 1
    assert not _codes(_run(registry, tmp_path, text, short, model="llm", onnx_path=""), "CX609")
    d = tmp_path / "onnx"
    d.mkdir()
    # a speech_token column is used even with --onnx_path DIR: still misaligned
    assert [x.severity for x in _codes(_run(registry, tmp_path, text, short, model="flow", onnx_path=str(d)),
                                       "CX609")] == ["error"]
    # without the column the tokens come from the padded audio online: nothing to check
    no_col = rewrite_shards(short, tmp_path / "nocol", lambda r: {k: v for k, v in r.items() if k != "speech_token"},
                            keep_schema=False)
    res = _run(registry, tmp_path, text, no_col, model="flow", onnx_path=str(d))
    assert not _codes(res, "CX609") and "token_alignment" not in res.data


def test_num_frames_padding_in_the_replay(tmp_path, tok):
    """A 2026 compute_fbank pads to whole tokens: mel frames = 2 x ceil(samples / 960), also for
    audio off the 40 ms grid (the tiny data is on it, so trim 300 samples per row)."""
    text = CV3.format(qwen=tok, nf=960)
    data = _data(tmp_path, lambda r: trim_audio(r, 300), n=6, shards=1)
    a = analyse(Document.from_text(text), Options(data=data, model="flow", onnx_path=""))
    assert a.error is None and a.alignment.rows == 6 and a.alignment.misaligned == 0
    no_pad = text.replace("    num_frames: 960\ncompute_whisper", "compute_whisper")
    a = analyse(Document.from_text(no_pad), Options(data=data, model="flow", onnx_path=""))
    assert a.alignment is None  # no num_frames: nothing padded, CX306 reports the config instead


def test_half_buffer_shuffle_of_the_2026_upstream():
    """ace7c47's shuffle yields the first int(size / 2) of a shuffled full buffer and keeps the rest."""
    items = [[i] for i in range(10)]
    ref_rng, rng = random.Random(5), random.Random(5)
    buf, expect = [], []
    for s in items:  # the reference, written out
        buf.append(s)
        if len(buf) >= 4:
            ref_rng.shuffle(buf)
            expect += buf[:2]
            buf = buf[2:]
    ref_rng.shuffle(buf)
    expect += buf
    assert list(_shuffle(iter(items), 4, rng, keep_half=True)) == expect
    assert sorted(map(tuple, expect)) == [(i,) for i in range(10)]
    assert list(_shuffle(iter([[i] for i in range(10)]), 4, random.Random(5))) != expect  # the 2025 shuffle differs


# --- the tiny configs and data the e2e tests train with (cosyvoice_ext.tiny) ----------------------

@pytest.mark.parametrize("family", ["cosyvoice2", "cosyvoice3"])
def test_tiny_2026_configs_and_data_lint_clean(registry, tmp_path, tok, family):
    """What the end-to-end suite trains on ace7c47 must not be flagged: static, and with its data
    (precomputed features with --onnx-path '', or online features with --onnx-path DIR)."""
    from cosyvoice_ext.tiny.api import WITH_COSYVOICE3
    from cosyvoice_ext.tiny.config import render_tiny_config

    text = render_tiny_config(tok, family=family, api=WITH_COSYVOICE3)
    errors = lambda res: [f"{f.code} {f.message}" for f in res.findings if f.severity == "error"]  # noqa: E731
    for model in ("llm", "flow"):
        assert not errors(_lint(registry, text, model=model)), model
    pre = write_parquet_dataset(tmp_path / "pre", 10, shards=2, seed=1, family=family)
    online = write_parquet_dataset(tmp_path / "online", 10, shards=2, seed=1, family=family, online_features=True)
    d = tmp_path / "onnx"
    d.mkdir()
    for f in ("campplus.onnx", "speech_tokenizer_v2.batch.onnx", "speech_tokenizer_v3.batch.onnx"):
        (d / f).write_bytes(b"stand-in")  # lint checks the files are there, it never loads them
    for model in ("llm", "flow"):
        res = _run(registry, tmp_path, text, pre, model=model, onnx_path="")
        assert not errors(res) and res.data["kept"] == 10, (model, errors(res))
        res = _run(registry, tmp_path, text, online, model=model, onnx_path=str(d))
        assert not errors(res) and res.data["kept"] == 10, (model, errors(res))
        assert [f.severity for f in _codes(_run(registry, tmp_path, text, online, model=model), "CX506")] == ["warning"]


def test_cx507_is_what_hyperpyyaml_does_with_train_py_overrides(registry):
    from hyperpyyaml import load_hyperpyyaml

    text = "llm: {a: 1}\nflow: {b: 2}\n"
    overrides = {k: None for k in ("llm", "flow", "hift", "hifigan") if k != "llm"}  # train.py --model llm
    with pytest.raises(KeyError, match="Override 'hift' not found"):
        load_hyperpyyaml(text, overrides=overrides)
    res = _codes(_lint(registry, text, model="llm"), "CX507")
    assert len(res) == 1 and res[0].message.startswith("no top-level hift, hifigan:")
    assert load_hyperpyyaml(text + "hift: null\nhifigan: null\n", overrides=overrides)["flow"] is None
    assert not _codes(_lint(registry, text + "hift: null\nhifigan: null\n", model="llm"), "CX507")


def test_cx609_batches_with_a_row_without_tokens_go_online(tmp_path, tok):
    """Upstream's padding adds speech_token to a batch only if every row has it; otherwise the whole batch
    gets online tokens, so only all-precomputed batches can be misaligned."""
    text = CV3.format(qwen=tok, nf=960).replace("max_frames_in_batch: 400", "max_frames_in_batch: 300")
    data = write_parquet_dataset(tmp_path / "d", 12, shards=2, seed=5)
    shards = data.read_text().split()
    short = rewrite_shards(data, tmp_path / "mixed", lambda r: (
        {**r, "speech_token": r["speech_token"][:-1]} if r["utt"] < "tiny_spk00_00006"
        else {k: v for k, v in r.items() if k != "speech_token"}), keep_schema=False)
    assert len(shards) == 2
    a = analyse(Document.from_text(text), Options(data=short, model="flow", onnx_path=str(tmp_path)),
                keep_batches=True)
    with_tokens = {f"tiny_spk00_{i:05d}" for i in range(6)}
    pure = [b for b in a.batch_utts[0] if b and set(b) <= with_tokens]
    assert a.alignment.batches == len(pure) and a.alignment.rows == sum(map(len, pure)) == a.alignment.misaligned
    assert 0 < len(pure) < len([b for b in a.batch_utts[0] if b])  # both kinds of batches occur
