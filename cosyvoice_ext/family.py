"""Model families: CosyVoice2 and CosyVoice3, told apart by the classes a config builds or the files a
pretrained directory holds. One place for what differs between them (file names, the instruct text),
so lint, prepare, LoRA, export and the tiny generators agree.

Pure Python (no torch): lint reads configs it never executes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError


#: speaker-embedding model: in pretrained dirs, and in train.py's `--onnx_path DIR` for online features
CAMPPLUS = "campplus.onnx"


@dataclass(frozen=True)
class Family:
    """What a model family's files and classes are called upstream."""

    name: str
    #: the yaml upstream's inference class reads from a model directory
    config_name: str
    #: the inference class in cosyvoice/cli/cosyvoice.py
    inference_class: str
    #: speech tokenizer used by data preparation / inference (pretrained dir)
    speech_tokenizer: str
    #: the batch tokenizer train.py's online feature extraction loads from --onnx_path (ace7c47)
    speech_tokenizer_batch: str
    #: classes of the trainable models, by config key
    classes: dict[str, tuple[str, ...]]
    #: the `instruct` text every training sample carries ("" = the family has no instruct field)
    default_instruct: str = ""

    @property
    def onnx_path_files(self) -> tuple[str, ...]:
        """What a train.py `--onnx_path DIR` (online features, ace7c47) must hold for this family's models."""
        return (CAMPPLUS, self.speech_tokenizer_batch)


COSYVOICE2 = Family(
    name="cosyvoice2",
    config_name="cosyvoice2.yaml",
    inference_class="CosyVoice2",
    speech_tokenizer="speech_tokenizer_v2.onnx",
    speech_tokenizer_batch="speech_tokenizer_v2.batch.onnx",
    classes={"llm": ("cosyvoice.llm.llm.Qwen2LM",), "flow": ("cosyvoice.flow.flow.CausalMaskedDiffWithXvec",)},
)
COSYVOICE3 = Family(
    name="cosyvoice3",
    config_name="cosyvoice3.yaml",
    inference_class="CosyVoice3",
    speech_tokenizer="speech_tokenizer_v3.onnx",
    speech_tokenizer_batch="speech_tokenizer_v3.batch.onnx",
    classes={"llm": ("cosyvoice.llm.llm.CosyVoice3LM",), "flow": ("cosyvoice.flow.flow.CausalMaskedDiffWithDiT",)},
    default_instruct="You are a helpful assistant.<|endofprompt|>",
)
FAMILIES: dict[str, Family] = {f.name: f for f in (COSYVOICE2, COSYVOICE3)}


def get(name: str) -> Family:
    """The family called `name` ('cosyvoice2' or 'cosyvoice3'); a clear error otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UsageError(f"unknown model family {name!r}", hint=f"use one of: {', '.join(FAMILIES)}") from None


def of_class(qualname: str | None) -> Family | None:
    """The family a dotted class name (as in a config's ``!new:`` tag) belongs to, else None."""
    if not qualname:
        return None
    for fam in FAMILIES.values():
        if any(qualname == c for cs in fam.classes.values() for c in cs):
            return fam
    return None


def of_model(model: Any) -> Family | None:
    """The family of a built model object, by its class (subclasses of Qwen2LM count as what they are)."""
    cls = type(model)
    return of_class(f"{cls.__module__}.{cls.__qualname__}")


def of_config_classes(classes: dict[str, str | None]) -> Family | None:
    """The family of a config from its model classes by key (``{'llm': 'cosyvoice.llm.llm.CosyVoice3LM', ...}``).

    The first key that names a known class decides; None when none does.
    """
    for key in ("llm", "flow"):
        fam = of_class(classes.get(key))
        if fam is not None:
            return fam
    return None


def of_pretrained(pretrained: Path) -> Family | None:
    """The family of a pretrained model directory, by the yaml it carries (cosyvoice3.yaml wins)."""
    for fam in (COSYVOICE3, COSYVOICE2):
        if (Path(pretrained) / fam.config_name).is_file():
            return fam
    return None
