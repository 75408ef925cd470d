"""The config's ``data_pipeline`` as a list of upstream processor stages, read without importing them.

Each entry is usually ``!ref <filter>`` pointing at ``filter: !name:cosyvoice.dataset.processor.filter``
with keyword arguments; the stage is named by the tag's last component. ``DEFAULTS`` are upstream's
keyword defaults (cosyvoice/dataset/processor.py at the 2025 pin and at ace7c47), used when the config
leaves one out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .document import Document, RefError
from .yamlpos import YMap, YNode, YScalar, YSeq

PROCESSOR_MODULE = "cosyvoice.dataset.processor"

DEFAULTS: dict[str, dict[str, Any]] = {
    "filter": {"max_length": 10240, "min_length": 10, "token_max_length": 200, "token_min_length": 1,
               "min_output_input_ratio": 0.0005, "max_output_input_ratio": 1},
    "resample": {"resample_rate": 22050, "min_sample_rate": 16000},
    "truncate": {"truncate_length": 24576},
    "compute_fbank": {"token_mel_ratio": 0, "num_frames": -1},  # 2025: token_mel_ratio; 2026: num_frames
    "shuffle": {"shuffle_size": 10000},
    "sort": {"sort_size": 500},
    "batch": {"batch_type": "static", "batch_size": 16, "max_frames_in_batch": 12000},
}


@dataclass
class Stage:
    func: str  # processor function name, e.g. "filter"
    qualname: str  # full dotted name from the tag
    item: YNode  # the data_pipeline entry (for positions)
    target: YNode | None  # the node defining the stage (its keyword arguments)
    key: str | None  # top-level key it refers to, if any

    def param_node(self, doc: Document, name: str) -> YNode | None:
        t = self.target
        return t.get(name) if isinstance(t, YMap) else None

    def param(self, doc: Document, name: str) -> Any:
        """The keyword argument as the upstream function will see it (config value or default)."""
        n = self.target.get(name) if isinstance(self.target, YMap) else None
        if n is None:
            return DEFAULTS.get(self.func, {}).get(name)
        try:
            v = doc.scalar(n)
        except RefError:
            return None
        return v if isinstance(v, (int, float, str, bool, list, dict)) or v is None else None

    def has_param(self, name: str) -> bool:
        return isinstance(self.target, YMap) and self.target.get(name) is not None


def stages(doc: Document, key: str = "data_pipeline") -> list[Stage] | None:
    """The stages of ``key`` in order; None when the config has no such list."""
    try:
        seq = doc.deref(doc.root.get(key)) if doc.root is not None else None
    except RefError:  # `data_pipeline: !ref <nowhere>` is CX003's finding, not a crash
        return None
    if not isinstance(seq, YSeq):
        return None
    out = []
    for item in seq.items:
        ref_key = None
        if isinstance(item, YScalar) and item.tag in ("!ref", "!copy"):
            ref_key = item.raw.strip().strip("<>").split(".")[0]
        try:
            target = doc.deref(item)
        except Exception:
            target = None
        call = target.call if target is not None else None
        qual = call[1] if call else ""
        out.append(Stage(qual.rsplit(".", 1)[-1] if qual else "", qual, item, target, ref_key))
    return out


def find(stage_list: list[Stage] | None, func: str) -> Stage | None:
    for s in stage_list or []:
        if s.func == func:
            return s
    return None


def top_level_stage(doc: Document, func: str) -> Stage | None:
    """A processor defined at top level (e.g. ``feat_extractor``) even if no pipeline uses it."""
    root = doc.root
    if root is None:
        return None
    for k, v in root.items:
        call = v.call
        if call and call[1].rsplit(".", 1)[-1] == func and isinstance(k, YScalar):
            return Stage(func, call[1], v, v, k.raw)
    return None
