"""Tiny ONNX models for upstream's ONLINE feature extraction (`cosyvoice/utils/onnx.py`, trees with
CosyVoice3): what `train.py --onnx_path DIR` loads from DIR.

`EmbeddingExtractor` runs `campplus.onnx` on one utterance ([1, T, 80] mean-normalised kaldi fbank
-> 192 floats); `SpeechTokenExtractor`, built inside the LLM and flow constructors, runs
`speech_tokenizer_v2.batch.onnx` (CosyVoice2 classes) or `speech_tokenizer_v3.batch.onnx`
(CosyVoice3 classes) on a padded batch: [B, 128, T] float32 whisper log-mel + [B] int32 lengths ->
[B, T/4] tokens. Upstream feeds inputs by position; the names are the real models' all the same.

Stand-ins, a few kB each: the speaker model is `tiny.standin`'s; the tokenizer quantises 8 fixed,
zero-mean projections of the 4-frame-pooled log-mel to three levels each (3**8 = 6561 codes, the
real vocabulary, as in its FSQ), so the ids depend on the spectrum and cover the whole range, and
zeroes the frames past each row's length, like the real model's mask. They mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..family import Family
from ..family import get as get_family
from ..prepare.features import CAMPPLUS
from .standin import MEL_FRAMES_PER_TOKEN, _save, make_campplus

WHISPER_MELS = 128
CODE_DIGITS = 8  # 3**8 = 6561 speech tokens
_SCALE = 6.0  # projections of log-mel differences are ~0.1-0.3: spread them over the three levels
_FAMILY_SEED = {"cosyvoice2": 2, "cosyvoice3": 3}  # v2 and v3 tokenise the same audio differently


def _projection(seed: int) -> np.ndarray:
    """[128, 8] unit columns with zero mean over the mel bins: a level shift of the spectrum (loudness)
    changes no token, its shape does."""
    w = np.random.default_rng(seed).normal(size=(WHISPER_MELS, CODE_DIGITS))
    w -= w.mean(axis=0, keepdims=True)
    return (w / np.linalg.norm(w, axis=0, keepdims=True)).astype(np.float32)


def make_batch_speech_tokenizer(path: Path, seed: int = 0) -> Path:
    """feats [B, 128, T] float32 + feats_length [B] int32 -> indices [B, T // 4] int64 in [0, 6561)."""
    from onnx import TensorProto, helper, numpy_helper

    consts = {
        "w": _projection(seed),
        "scale": np.array(_SCALE, dtype=np.float32),
        "lo": np.array(-1.0, dtype=np.float32),
        "hi": np.array(1.0, dtype=np.float32),
        "one": np.array(1.0, dtype=np.float32),
        "powers": (3.0 ** np.arange(CODE_DIGITS)).astype(np.float32).reshape(CODE_DIGITS, 1),
        "frames_per_token": np.array(MEL_FRAMES_PER_TOKEN, dtype=np.int64),
        "axis2": np.array([2], dtype=np.int64),
        "axis1": np.array([1], dtype=np.int64),
        "i0": np.array(0, dtype=np.int64),
        "i1": np.array(1, dtype=np.int64),
    }
    nodes = [
        helper.make_node("AveragePool", ["feats"], ["pooled"], kernel_shape=[MEL_FRAMES_PER_TOKEN],
                         strides=[MEL_FRAMES_PER_TOKEN]),
        helper.make_node("Transpose", ["pooled"], ["frames"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["frames", "w"], ["proj"]),
        helper.make_node("Mul", ["proj", "scale"], ["scaled"]),
        helper.make_node("Round", ["scaled"], ["rounded"]),
        helper.make_node("Clip", ["rounded", "lo", "hi"], ["ternary"]),
        helper.make_node("Add", ["ternary", "one"], ["digits"]),
        helper.make_node("MatMul", ["digits", "powers"], ["code3"]),
        helper.make_node("Squeeze", ["code3", "axis2"], ["code_f"]),
        helper.make_node("Cast", ["code_f"], ["code"], to=TensorProto.INT64),
        # mask: token t of row b is kept while t < feats_length[b] // 4
        helper.make_node("Cast", ["feats_length"], ["length64"], to=TensorProto.INT64),
        helper.make_node("Div", ["length64", "frames_per_token"], ["token_len"]),
        helper.make_node("Unsqueeze", ["token_len", "axis1"], ["token_len_col"]),
        helper.make_node("Shape", ["code"], ["code_shape"]),
        helper.make_node("Gather", ["code_shape", "i1"], ["n_tokens"], axis=0),
        helper.make_node("Range", ["i0", "n_tokens", "i1"], ["positions"]),
        helper.make_node("Less", ["positions", "token_len_col"], ["valid"]),
        helper.make_node("Cast", ["valid"], ["valid64"], to=TensorProto.INT64),
        helper.make_node("Mul", ["code", "valid64"], ["indices"]),
    ]
    graph = helper.make_graph(
        nodes, "speech_tokenizer_batch_standin",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["B", WHISPER_MELS, "T"]),
         helper.make_tensor_value_info("feats_length", TensorProto.INT32, ["B"])],
        [helper.make_tensor_value_info("indices", TensorProto.INT64, ["B", "T_token"])],
        initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    return _save(graph, Path(path))


def write_online_feature_dir(dest: Path, family: str | Family, seed: int = 0) -> Path:
    """`dest` with `campplus.onnx` and `family`'s batch speech tokenizer: a directory for
    `train.py --onnx_path`. Same arguments, same bytes. Needs the `onnx` package."""
    fam = family if isinstance(family, Family) else get_family(family)
    dest = Path(dest)
    make_campplus(dest / CAMPPLUS, seed=seed)
    make_batch_speech_tokenizer(dest / fam.speech_tokenizer_batch, seed=seed * 10 + _FAMILY_SEED[fam.name])
    return dest
