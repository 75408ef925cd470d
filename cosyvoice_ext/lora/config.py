"""The ``cosyext:`` section of a training config: schema, defaults, validation.

Pure Python (no torch, no peft) so the linter can reuse :func:`parse_section` on a config it only
reads. Errors are :class:`LoraConfigError` with ``key`` set to the dotted path of the bad key.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from ..config_keys import reject_unknown_keys
from ..errors import ConfigError

SECTION = "cosyext"
MODELS = ("llm", "flow")
FORMATS = ("adapter", "merged")

# Named target sets per model family (DESIGN.md §7, §11a), by the config key of the trained model.
# Module names are relative to the trained model (what train.py's configs[args.model] is). A name
# resolves against the family of the model that was actually built (targets.resolve_targets), so
# one config key can mean CosyVoice2's or CosyVoice3's modules; `default` is what an omitted
# target_modules means, chosen per model class.
_LLM_LAYER = r"llm\.model\.model\.layers\.\d+"
_LLM_ATTENTION = rf"{_LLM_LAYER}\.self_attn\.(?:q|k|v|o)_proj"
_LLM_ATTENTION_MLP = rf"{_LLM_LAYER}\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)"
_FLOW_ENCODER = r"encoder\.(?:encoders|up_encoders)\.\d+\.self_attn\.linear_(?:q|k|v|out)"
_FLOW_ESTIMATOR = r"decoder\.estimator\.(?:down|mid|up)_blocks\..+\.attn1\.(?:to_q|to_k|to_v|to_out\.0)"
_DIT_BLOCK = r"decoder\.estimator\.transformer_blocks\.\d+"
_DIT_ATTENTION = rf"{_DIT_BLOCK}\.attn\.(?:to_q|to_k|to_v|to_out\.0)"
_DIT_ATTENTION_FF = rf"{_DIT_BLOCK}\.(?:attn\.(?:to_q|to_k|to_v|to_out\.0)|ff\.ff\.(?:0\.0|2))"
DEFAULT_TARGETS = "default"
DEFAULT_FAMILY = "cosyvoice2"  # presets for a model whose class no family claims (a user's own model)
FAMILY_PRESETS: dict[str, dict[str, dict[str, str]]] = {
    "cosyvoice2": {
        "llm": {
            "default": _LLM_ATTENTION,
            "attention": _LLM_ATTENTION,
            "attention_mlp": _LLM_ATTENTION_MLP,
        },
        "flow": {
            "default": rf"(?:{_FLOW_ENCODER}|{_FLOW_ESTIMATOR})",
            "attention": rf"(?:{_FLOW_ENCODER}|{_FLOW_ESTIMATOR})",
            "encoder_attention": _FLOW_ENCODER,
            "estimator_attention": _FLOW_ESTIMATOR,
        },
    },
    "cosyvoice3": {  # CosyVoice3LM keeps CosyVoice2's Qwen2 names; the flow's estimator is a DiT
        "llm": {
            "default": _LLM_ATTENTION_MLP,
            "attention": _LLM_ATTENTION,
            "attention_mlp": _LLM_ATTENTION_MLP,
        },
        "flow": {
            "default": _DIT_ATTENTION_FF,
            "attention": _DIT_ATTENTION,
            "attention_ff": _DIT_ATTENTION_FF,
        },
    },
}
#: CosyVoice2's presets by config key: what configs meant before CosyVoice3 (lint's static view).
PRESETS: dict[str, dict[str, str]] = FAMILY_PRESETS[DEFAULT_FAMILY]


def preset_names(model: str) -> list[str]:
    """Every preset name of a config key in any family (what a config may say without knowing its class)."""
    names: list[str] = []
    for presets in FAMILY_PRESETS.values():
        names.extend(n for n in presets.get(model, {}) if n not in names)
    return names


def presets_for(family: str | None, model: str) -> dict[str, str]:
    """The presets of one family's model (CosyVoice2's when the family is unknown)."""
    return FAMILY_PRESETS.get(family or DEFAULT_FAMILY, FAMILY_PRESETS[DEFAULT_FAMILY])[model]


def preset_regex(model: str, name: str, family: str | None = None) -> str | None:
    """The regex a preset name stands for in ``family`` (None: not a preset there)."""
    return presets_for(family, model).get(name)


class LoraConfigError(ConfigError):
    """A bad value in the ``cosyext:`` section; ``key`` is its dotted path (for lint positions)."""

    def __init__(self, key: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or "see docs/lora.md for the cosyext: section", key=key)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA settings of one model, validated."""

    model: str
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = DEFAULT_TARGETS
    modules_to_save: tuple[str, ...] = ()
    checkpoint_format: str = "adapter"
    base_checkpoint: str | None = None

    def target_regex(self, family: str | None = None) -> str | None:
        """The regex the targets stand for in a model of ``family`` (a preset or a user regex); None for a list.

        Raises LoraConfigError when the name is another family's preset only (e.g. CosyVoice2's
        ``encoder_attention`` for CosyVoice3's DiT flow, which has no conformer encoder).
        """
        if isinstance(self.target_modules, tuple):
            return None
        regex = preset_regex(self.model, self.target_modules, family)
        if regex is not None:
            return regex
        if self.target_modules in preset_names(self.model):
            own = ", ".join(presets_for(family, self.model))
            owners = [f for f, p in FAMILY_PRESETS.items() if self.target_modules in p.get(self.model, {})]
            raise LoraConfigError(
                f"{SECTION}.{self.model}.target_modules",
                f"preset {self.target_modules!r} belongs to {', '.join(owners)}; a {family or DEFAULT_FAMILY} "
                f"{self.model} has the presets {own}", hint=f"use one of {own}, a regex or a list of module names")
        return self.target_modules

    def to_dict(self) -> dict:
        """Plain types only: stored in adapter checkpoint metadata (weights_only-loadable)."""
        d = asdict(self)
        for k in ("target_modules", "modules_to_save"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LoraSettings":
        """Back from checkpoint metadata (validated again)."""
        d = dict(d)
        model = d.pop("model")
        return parse_model_section(model, d, prefix=f"checkpoint metadata {SECTION}.{model}")


# key -> what it means; also the list of valid keys shown in errors
SCHEMA: dict[str, str] = {
    "r": "rank of the LoRA matrices, int > 0",
    "alpha": "LoRA scaling numerator (scale = alpha / r), number > 0",
    "dropout": "dropout on the LoRA input, 0 <= dropout < 1",
    "target_modules": "a preset name (default: per model class), a regex over module names, "
                      "or a list of module names (suffixes)",
    "modules_to_save": "list of module names trained fully and saved with the adapter",
    "checkpoint_format": "'adapter' (LoRA tensors + metadata, default) or 'merged' (stock keys)",
    "base_checkpoint": "optional path of the base checkpoint (else --checkpoint, or the adapter's record)",
}


def parse_section(configs: Mapping[str, Any]) -> dict[str, LoraSettings]:
    """All LoRA settings in a loaded config, by model name; {} when there is no ``cosyext:`` section."""
    section = configs.get(SECTION) if isinstance(configs, Mapping) else None
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise LoraConfigError(SECTION, f"must be a mapping with keys {', '.join(MODELS)}, got {type(section).__name__}")
    out: dict[str, LoraSettings] = {}
    for key, value in section.items():
        if key in MODELS:
            if value is None:
                continue
            out[key] = parse_model_section(key, value)
        else:
            close = difflib.get_close_matches(str(key), MODELS, n=1, cutoff=0.6)
            if close:  # other plugins may own other keys; a near-miss of ours is a typo
                raise LoraConfigError(
                    f"{SECTION}.{key}", f"unknown model section; did you mean '{close[0]}'? (LoRA sections: {', '.join(MODELS)})")
    return out


def parse_model_value(model: str, value: Any) -> LoraSettings | None:
    """``cosyext.<model>``'s value -> LoraSettings (None when empty); the parser training and lint share."""
    return None if value is None else parse_model_section(model, value)


def parse_model_section(model: str, value: Any, prefix: str | None = None) -> LoraSettings:
    """One model's section -> LoraSettings; raises LoraConfigError naming the first bad key."""
    prefix = prefix or f"{SECTION}.{model}"
    if model not in MODELS:
        raise LoraConfigError(prefix, f"LoRA is supported for {', '.join(MODELS)}, not '{model}'")
    if not isinstance(value, Mapping):
        raise LoraConfigError(prefix, f"must be a mapping of LoRA settings, got {type(value).__name__}")
    reject_unknown_keys(value, SCHEMA, prefix, LoraConfigError)
    kw: dict[str, Any] = {"model": model}
    if "r" in value:
        r = value["r"]
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise LoraConfigError(f"{prefix}.r", f"must be an integer > 0, got {r!r}")
        kw["r"] = r
    if "alpha" in value:
        kw["alpha"] = _number(f"{prefix}.alpha", value["alpha"], low=0.0, low_inclusive=False)
    if "dropout" in value:
        kw["dropout"] = _number(f"{prefix}.dropout", value["dropout"], low=0.0, high=1.0)
    if "target_modules" in value:
        kw["target_modules"] = _targets(model, f"{prefix}.target_modules", value["target_modules"])
    if "modules_to_save" in value:
        kw["modules_to_save"] = _names(f"{prefix}.modules_to_save", value["modules_to_save"], allow_empty=True)
    if "checkpoint_format" in value:
        fmt = value["checkpoint_format"]
        if fmt not in FORMATS:
            raise LoraConfigError(f"{prefix}.checkpoint_format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
        kw["checkpoint_format"] = fmt
    if value.get("base_checkpoint") is not None:
        base = value["base_checkpoint"]
        if not isinstance(base, str) or not base:
            raise LoraConfigError(f"{prefix}.base_checkpoint", f"must be a file path, got {base!r}")
        kw["base_checkpoint"] = base
    return LoraSettings(**kw)


def _number(key: str, v: Any, low: float, high: float | None = None, low_inclusive: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise LoraConfigError(key, f"must be a number, got {v!r}")
    too_low = v < low if low_inclusive else v <= low
    if too_low or (high is not None and v >= high):
        bounds = f"{'>=' if low_inclusive else '>'} {low:g}" + (f" and < {high:g}" if high is not None else "")
        raise LoraConfigError(key, f"must be {bounds}, got {v!r}")
    return float(v)


def _targets(model: str, key: str, v: Any) -> str | tuple[str, ...]:
    if isinstance(v, str):
        if not v.strip():
            raise LoraConfigError(key, "must not be empty")
        if v in preset_names(model):
            return v
        try:
            re.compile(v)
        except re.error as exc:
            presets = ", ".join(preset_names(model))
            raise LoraConfigError(key, f"{v!r} is neither a preset ({presets}) nor a valid regex: {exc}") from exc
        return v
    return _names(key, v, allow_empty=False)


def _names(key: str, v: Any, allow_empty: bool) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)):
        raise LoraConfigError(key, f"must be a list of module names, got {type(v).__name__}")
    if not v and not allow_empty:
        raise LoraConfigError(key, "must name at least one module")
    for i, name in enumerate(v):
        if not isinstance(name, str) or not name.strip():
            raise LoraConfigError(f"{key}[{i}]", f"must be a module name, got {name!r}")
    return tuple(v)
