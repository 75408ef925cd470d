"""The ``cosyext.memory`` section of a training config: schema, defaults, validation.

Pure Python (no torch) so lint and the memory model can read a config they never execute.
Errors are :class:`MemoryConfigError` with ``key`` set to the dotted path of the bad key.

Example::

    cosyext:
      memory:
        gradient_checkpointing: true   # recompute blocks in backward: the LLM's Qwen2 decoder layers, the
                                       # flow's estimator blocks (U-Net or DiT) and conformer encoder layers
        autocast: bf16                 # bf16 | fp16 | off
        skip_unused_logits: true       # do not compute Qwen2's 151,936-way logits nobody reads
        release_cpu_memory: true       # CPU training: glibc gives freed tensor memory back (lower RSS, slower)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..config_keys import reject_unknown_keys
from ..errors import ConfigError

SECTION = "cosyext"
KEY = "memory"
AUTOCAST_MODES = ("off", "bf16", "fp16")

SCHEMA: dict[str, str] = {
    "gradient_checkpointing": "true/false: recompute blocks in backward instead of keeping their activations "
                              "(LLM: Qwen2 decoder layers; flow: estimator U-Net/DiT blocks and conformer encoder layers)",
    "autocast": "bf16, fp16 or off: mixed-precision forward (CPU: bf16; CUDA: bf16 if supported, fp16 with --use_amp)",
    "skip_unused_logits": "true/false: run Qwen2 without its vocabulary head, whose logits upstream discards (LLM only)",
    "release_cpu_memory": "true/false: CPU training: glibc malloc returns freed tensor memory to the OS instead of "
                          "keeping it (lower RSS peaks, slower steps; no effect on GPU memory)",
}
BOOL_KEYS = ("gradient_checkpointing", "skip_unused_logits", "release_cpu_memory")


class MemoryConfigError(ConfigError):
    """A bad value in ``cosyext.memory``; ``key`` is its dotted path (for lint positions)."""

    def __init__(self, key: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or "see docs/memory.md for the cosyext.memory section", key=key)


@dataclass(frozen=True)
class MemorySettings:
    """The memory levers, validated. The defaults are upstream's behaviour."""

    gradient_checkpointing: bool = False
    autocast: str = "off"
    skip_unused_logits: bool = False
    release_cpu_memory: bool = False

    @property
    def any(self) -> bool:
        return any(getattr(self, k) for k in BOOL_KEYS) or self.autocast != "off"

    def describe(self) -> str:
        on = [k for k in BOOL_KEYS if getattr(self, k)]
        if self.autocast != "off":
            on.append(f"autocast={self.autocast}")
        return ", ".join(on) or "none"


def parse_memory_section(configs: Mapping[str, Any]) -> MemorySettings:
    """The levers of a loaded (or only parsed) config; all off when there is no ``cosyext.memory``."""
    section = configs.get(SECTION) if isinstance(configs, Mapping) else None
    if not isinstance(section, Mapping):
        return MemorySettings()  # a non-mapping cosyext: is core's to report
    return parse_memory_value(section.get(KEY))


def parse_memory_value(value: Any) -> MemorySettings:
    """``cosyext.memory``'s value -> MemorySettings; the parser training start-up and lint share."""
    prefix = f"{SECTION}.{KEY}"
    if value is None:
        return MemorySettings()
    if not isinstance(value, Mapping):
        raise MemoryConfigError(prefix, f"must be a mapping with keys {', '.join(SCHEMA)}, got {type(value).__name__}")
    reject_unknown_keys(value, SCHEMA, prefix, MemoryConfigError)
    kw: dict[str, Any] = {}
    for key in BOOL_KEYS:
        if key in value:
            v = value[key]
            if not isinstance(v, bool):
                raise MemoryConfigError(f"{prefix}.{key}", f"must be true or false, got {v!r}")
            kw[key] = v
    if "autocast" in value:
        kw["autocast"] = _autocast(f"{prefix}.autocast", value["autocast"])
    return MemorySettings(**kw)


def _autocast(key: str, v: Any) -> str:
    # YAML 1.1 readers (PyYAML) turn an unquoted `off` into False; accept it as what the user wrote
    if v is False or v is None:
        return "off"
    if isinstance(v, str) and v.lower() in AUTOCAST_MODES:
        return v.lower()
    raise MemoryConfigError(key, f"must be one of {', '.join(AUTOCAST_MODES)}, got {v!r}")
