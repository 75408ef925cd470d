"""What an upstream CosyVoice tree's training code expects of a config and a command line.

Upstream changed its training API between the mid-2025 CosyVoice2-only trees and the 2026 trees that
carry CosyVoice3: `compute_fbank` pads speech to the token grid (`num_frames`) instead of trimming
features to the tokens (`token_mel_ratio`), a `compute_whisper_fbank` step feeds online speech
tokens, `get_qwen_tokenizer` takes a `version`, and train.py grew an `--onnx_path` flag.

`detect_api` reads those facts from the tree's source text, never importing it: a config or an
argv can be made for any tree from a process that has another tree (or none) imported, and a
tree at an unknown commit is judged by what it actually contains rather than by its commit id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

PROCESSOR = Path("cosyvoice/dataset/processor.py")
TOKENIZER = Path("cosyvoice/tokenizer/tokenizer.py")
LLM = Path("cosyvoice/llm/llm.py")
TRAIN = Path("cosyvoice/bin/train.py")


@dataclass(frozen=True)
class UpstreamAPI:
    """The parts of upstream's training API that a tiny config and a train.py argv depend on."""

    #: compute_fbank(num_frames=...) pads audio to whole tokens (else token_mel_ratio trims features)
    fbank_num_frames: bool = False
    #: processor.compute_whisper_fbank exists (online speech tokens read its `whisper_feat`)
    whisper_fbank: bool = False
    #: get_qwen_tokenizer(..., version=...) chooses the CosyVoice2 or CosyVoice3 special tokens
    tokenizer_version: bool = False
    #: cosyvoice.llm.llm.CosyVoice3LM exists (and with it the DiT flow)
    cosyvoice3: bool = False
    #: train.py defines --onnx_path (it then always sets os.environ['onnx_path'] from it)
    onnx_path_flag: bool = False


#: CosyVoice2-only trees (upstream until mid-2025): what the tiny config assumes without a tree
CLASSIC = UpstreamAPI()
#: trees that carry CosyVoice3 (upstream 2026): every change above
WITH_COSYVOICE3 = UpstreamAPI(fbank_num_frames=True, whisper_fbank=True, tokenizer_version=True, cosyvoice3=True,
                              onnx_path_flag=True)


def _source(tree: Path, rel: Path) -> str:
    path = tree / rel
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist: {tree} is not an upstream CosyVoice tree",
                         hint="pass the directory that holds cosyvoice/ (what `cosyext vendor DEST` wrote)") from None


def _params(source: str, func: str) -> str:
    """The parameter list of `def func(...)` in `source` ('' when there is no such function)."""
    m = re.search(rf"^def {re.escape(func)}\((.*?)\)\s*(->[^:]*)?:", source, re.M | re.S)
    return m.group(1) if m else ""


def train_py_has_onnx_path(tree: Path) -> bool:
    """Whether the tree's train.py defines --onnx_path (False when there is no train.py to read)."""
    path = Path(tree) / TRAIN
    return path.is_file() and "'--onnx_path'" in path.read_text(encoding="utf-8")


def detect_api(tree: Path) -> UpstreamAPI:
    """Read the API of the upstream tree at `tree` (a git checkout or the wheel layout) from its source."""
    tree = Path(tree)
    processor = _source(tree, PROCESSOR)
    tokenizer = _source(tree, TOKENIZER)
    return UpstreamAPI(
        fbank_num_frames=re.search(r"\bnum_frames\b", _params(processor, "compute_fbank")) is not None,
        whisper_fbank=bool(_params(processor, "compute_whisper_fbank")),
        tokenizer_version=re.search(r"\bversion\b", _params(tokenizer, "get_qwen_tokenizer")) is not None,
        cosyvoice3=re.search(r"^class CosyVoice3LM\(", _source(tree, LLM), re.M) is not None,
        onnx_path_flag=train_py_has_onnx_path(tree),
    )
