"""Which model speaks: an exported serving dir (`cosyext export --serve`), or a pretrained dir plus
a training run's adapters applied in memory. Checked before upstream is imported.

The check matters beyond a nicer message: upstream's `CosyVoice2(model_dir)` calls modelscope's
`snapshot_download(model_dir)` whenever the path does not exist, so a typo would become a download
attempt. A directory must exist and hold every file the family's class opens, and its yaml must
build a vocoder (`hift: null`, as in a training-only config, makes upstream fail with "No valid
model type found!").
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import family as families
from ..errors import UsageError

#: files upstream's CosyVoice2/CosyVoice3(model_dir) opens besides the yaml and the speech tokenizer
COMMON = ("llm.pt", "flow.pt", "hift.pt", "campplus.onnx")
QWEN_DIR = "CosyVoice-BlankEN"
_NO_VOCODER = re.compile(r"^hift\s*:\s*(null|~|None)?\s*(#.*)?$", re.M)


@dataclass(frozen=True)
class ModelSource:
    """A model directory, and for a pretrained one the adapters to apply (None: the base weights)."""

    model_dir: Path
    kind: str = "serve"
    #: adapter checkpoint or training run dir per model ("llm", "flow"); only with `pretrained`
    adapters: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def serve_dir(cls, path: str | os.PathLike) -> "ModelSource":
        """A directory `cosyext export --serve` wrote (merged weights, speakers in spk2info.pt)."""
        return cls(Path(path), "serve")

    @classmethod
    def pretrained(cls, path: str | os.PathLike, *, llm: str | os.PathLike | None = None,
                   flow: str | os.PathLike | None = None) -> "ModelSource":
        """A pretrained dir; `llm`/`flow`: a training run dir (its best.yaml, else latest epoch) or one checkpoint."""
        adapters = {name: Path(p) for name, p in (("llm", llm), ("flow", flow)) if p is not None}
        return cls(Path(path), "pretrained", adapters)

    def describe(self) -> str:
        what = "serving dir" if self.kind == "serve" else "pretrained dir"
        extra = "".join(f", {name} adapter {p}" for name, p in self.adapters.items())
        return f"{what} {self.model_dir}{extra}"


def check_model_dir(path: Path, flag: str = "--model-dir") -> families.Family:
    """The family of a complete model dir; UsageError naming what is wrong (never a download)."""
    path = Path(path)
    hint = ("pass the directory 'cosyext export --serve' wrote, or a downloaded pretrained dir (e.g. "
            "pretrained_models/CosyVoice2-0.5B); synth never downloads models")
    if not path.exists():
        raise UsageError(f"{flag} {path} does not exist", hint=hint)
    if not path.is_dir():
        raise UsageError(f"{flag} {path} is not a directory", hint=hint)
    fam = families.of_pretrained(path)
    if fam is None:
        names = " or ".join(f.config_name for f in families.FAMILIES.values())
        raise UsageError(f"{flag} {path} is not a CosyVoice2 or CosyVoice3 model dir (no {names})", hint=hint)
    missing = [f for f in (*COMMON, fam.speech_tokenizer, QWEN_DIR) if not (path / f).exists()]
    if missing:
        raise UsageError(f"{flag} {path} is not a complete {fam.inference_class} model dir: missing "
                         f"{', '.join(missing)}", hint=hint)
    config = path / fam.config_name
    try:
        text = config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {config}: {exc}", hint=hint) from exc
    if _NO_VOCODER.search(text):
        raise UsageError(f"{config} has 'hift: null': a training config without a vocoder, which upstream's "
                         f"{fam.inference_class} cannot synthesise with (\"No valid model type found!\")",
                         hint="use the pretrained dir's own yaml, which builds the HiFT vocoder")
    return fam


def check(source: ModelSource) -> families.Family:
    """The family of the source's model dir, everything checked that can be without upstream."""
    if source.kind not in ("serve", "pretrained"):
        raise ValueError(f"unknown model source kind {source.kind!r}")
    if source.kind == "serve" and source.adapters:
        raise UsageError("adapters apply to a pretrained dir (--pretrained), not to a serving dir",
                         hint="a serving dir already holds merged weights; pass --pretrained DIR with the adapters")
    unknown = set(source.adapters) - {"llm", "flow"}
    if unknown:
        raise ValueError(f"adapters are per model ('llm', 'flow'), got {sorted(unknown)}")
    return check_model_dir(source.model_dir, "--model-dir" if source.kind == "serve" else "--pretrained")
