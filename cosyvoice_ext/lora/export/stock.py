"""The stock model an export's weights must load into: built from the training config the way
train.py builds it (``--model`` kept, the other models set to None), from an upstream tree.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

from torch import nn

from ...errors import EnvironmentProblem, UsageError

log = logging.getLogger("cosyvoice_ext.lora")
MODEL_KEYS = ("llm", "flow", "hift", "hifigan")


def add_upstream_to_path(upstream: str | os.PathLike | None) -> None:
    """Make ``cosyvoice`` and ``matcha`` importable from an upstream checkout."""
    if upstream:  # first on sys.path, even when already further down: --upstream names the tree to use
        root = Path(upstream).resolve()
        for p in (root / "third_party" / "Matcha-TTS", root):
            while str(p) in sys.path:
                sys.path.remove(str(p))
            sys.path.insert(0, str(p))
    try:
        import cosyvoice
    except ImportError as exc:
        raise EnvironmentProblem(
            f"upstream CosyVoice is not importable ({exc}); building the stock model needs it",
            hint="pass --upstream ~/CosyVoice (the tree 'cosyext apply-patches' prepared)") from exc
    where = Path(next(iter(cosyvoice.__path__))).resolve()
    if upstream and Path(upstream).resolve() not in where.parents:  # only in-process callers get here
        log.warning("cosyext export: cosyvoice was imported from %s before; --upstream %s does not replace it "
                    "in this process", where.parent, upstream)


def read_config(config: str | os.PathLike) -> str:
    """The config's text; UsageError when it is missing, a directory or not UTF-8."""
    path = Path(config)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"config {path} is not UTF-8 text (byte {exc.start}: {exc.reason})",
                         hint="pass the YAML you trained with") from exc
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror or exc}",
                         hint="pass the YAML you trained with (train.py's --config)") from exc


def build_stock_model(config: str | os.PathLike, model: str, qwen_pretrain_path: str | None = None) -> nn.Module:
    """The stock model built from the training config the way train.py builds it (other models -> None)."""
    return load_configs(config, model, qwen_pretrain_path)[model]


def load_configs(config: str | os.PathLike, model: str, qwen_pretrain_path: str | None = None) -> dict:
    """The training config loaded as train.py loads it for ``--model model`` (runs the config's tags)."""
    from hyperpyyaml import load_hyperpyyaml

    text = read_config(config)
    present = set(re.findall(r"^([A-Za-z_]\w*)\s*:", text, flags=re.M))
    overrides = {k: None for k in MODEL_KEYS if k != model and k in present}
    if qwen_pretrain_path:
        overrides["qwen_pretrain_path"] = qwen_pretrain_path
    try:
        configs = load_hyperpyyaml(text, overrides=overrides)
    except Exception as exc:
        hint = "pass --qwen-pretrain-path DIR (as train.py's --qwen_pretrain_path)" if model == "llm" else \
            "pass the YAML you trained with; --upstream DIR if cosyvoice is not importable"
        raise UsageError(f"building the stock {model} from {config} failed: {exc!r}", hint=hint) from exc
    if not isinstance(configs, dict) or not isinstance(configs.get(model), nn.Module):
        raise UsageError(f"config {config} has no '{model}' model", hint="pass the YAML you trained with")
    return configs
