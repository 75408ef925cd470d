"""Tiny stand-ins for a pretrained dir's `campplus.onnx` and speech tokenizer
(`speech_tokenizer_v2.onnx` for CosyVoice2, `speech_tokenizer_v3.onnx` for CosyVoice3): the same
input/output names, dtypes and shapes as the real files, a few kB instead of hundreds of MB, so
tests and the demo run `cosyext prepare --pretrained` offline. Their outputs depend on the audio
(an L2-pooled fbank projection, since the input is mean-normalised; an argmax over pooled mel
bins at 25 tokens/s) but mean nothing. The v3 stand-in's tokens are offset by V3_TOKEN_OFFSET so
data shows which tokenizer made it.

v2 and v3 take the same inputs (`feats` [1, 128, T] float32 log-mel, `feats_length` [1] int32) and
give `indices` [1, T/4]; upstream passes both by position (tools/extract_speech_token.py,
cosyvoice/cli/frontend.py at ace7c47).

Building them needs the `onnx` package; running them only needs onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import family as fam_mod
from ..prepare.features import CAMPPLUS, EMBED_DIM

OPSET = 17
IR_VERSION = 8
MEL_FRAMES_PER_TOKEN = 4  # whisper log-mel runs at 100 frames/s; CosyVoice2/3 tokens at 25/s
#: added to the v3 stand-in's tokens (argmax over 128 mel bins: 0..127), still inside the 6561-token vocabulary
V3_TOKEN_OFFSET = 4096


def _save(graph, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cosyext-standin")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_campplus(path: Path, seed: int = 0) -> Path:
    """input [B, T, 80] float32 (mean-normalised fbank) -> output [B, 192] float32."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(0.0, 0.1, size=(80, EMBED_DIM)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceL2", ["input"], ["energy"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["energy", "w"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "campplus_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", "T", 80])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["B", EMBED_DIM])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    return _save(graph, Path(path))


def make_speech_tokenizer(path: Path, token_offset: int = 0) -> Path:
    """feats [1, 128, T] float32 + feats_length [1] int32 -> indices [1, T // 4] int64
    (tokens token_offset + 0..127)."""
    from onnx import TensorProto, helper

    last = "indices" if not token_offset else "unshifted"
    nodes = [
        helper.make_node("AveragePool", ["feats"], ["pooled"], kernel_shape=[MEL_FRAMES_PER_TOKEN],
                         strides=[MEL_FRAMES_PER_TOKEN]),
        helper.make_node("ArgMax", ["pooled"], ["argmax"], axis=1, keepdims=0),
        # feats_length is read (as the real model masks with it) but a full-length batch of one needs no mask
        helper.make_node("Cast", ["feats_length"], ["length64"], to=TensorProto.INT64),
        helper.make_node("Mul", ["length64", "zero"], ["no_offset"]),
        helper.make_node("Add", ["argmax", "no_offset"], [last]),
    ]
    initializer = [helper.make_tensor("zero", TensorProto.INT64, [1], [0])]
    if token_offset:  # only then, so the v2 stand-in stays the file it always was
        nodes.append(helper.make_node("Add", [last, "offset"], ["indices"]))
        initializer.append(helper.make_tensor("offset", TensorProto.INT64, [1], [int(token_offset)]))
    graph = helper.make_graph(
        nodes, "speech_tokenizer_standin",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, 128, "T"]),
         helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1])],
        [helper.make_tensor_value_info("indices", TensorProto.INT64, [1, "T_token"])],
        initializer=initializer,
    )
    return _save(graph, Path(path))


def make_pretrained_standin(dest: Path, seed: int = 0, *, family: str | fam_mod.Family = "cosyvoice2",
                            config_text: str | None = None) -> Path:
    """A directory with campplus and the family's speech tokenizer, usable as `cosyext prepare --pretrained DIR`.

    `config_text` (a model config) is written as the family's yaml (`cosyvoice2.yaml` / `cosyvoice3.yaml`),
    which is what makes the directory's family detectable the way a real one is; without it the
    tokenizer file alone tells (see prepare.family_choice).
    """
    fam = family if isinstance(family, fam_mod.Family) else fam_mod.get(family)
    dest = Path(dest)
    make_campplus(dest / CAMPPLUS, seed=seed)
    make_speech_tokenizer(dest / fam.speech_tokenizer,
                          token_offset=V3_TOKEN_OFFSET if fam is fam_mod.COSYVOICE3 else 0)
    if config_text is not None:
        (dest / fam.config_name).write_text(config_text, encoding="utf-8")
    return dest
