"""What a config is for: the model family (from the classes it names) and the upstream train.py that
will run it (from ``--upstream DIR``, read as text, or inferred from the config).

Upstream changed under configs: at the 2025 pin ``compute_fbank`` trims features to
``token_mel_ratio`` and ``train.py`` has no ``--onnx_path``; at ace7c47 (2026-03) ``compute_fbank``
pads audio to ``num_frames`` instead, ``train.py`` requires ``--onnx_path`` (online speech tokens
and speaker embeddings from ONNX models), and CosyVoice3 exists. Rules need to know which one
they are checking against. Nothing here imports upstream or executes the config: the tree is
parsed with :mod:`ast`, the config is the composed YAML.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import family as fam_mod
from ..errors import UsageError
from .document import Document
from .yamlpos import YMap
from .pipeline import find, stages

MODEL_KEYS = ("llm", "flow")
#: names that exist only in the 2026 upstream (ace7c47; checked against 44316c34's tree)
NEW_ONLY = frozenset({
    "cosyvoice.llm.llm.CosyVoice3LM", "cosyvoice.flow.flow.CausalMaskedDiffWithDiT", "cosyvoice.flow.DiT.dit.DiT",
    "cosyvoice.dataset.processor.compute_whisper_fbank",
})
#: processor keywords the 2026 upstream removed (its compute_fbank takes num_frames instead)
OLD_ONLY_KWARGS = {"compute_fbank": ("token_mel_ratio",)}


@dataclass(frozen=True)
class ConfigFamily:
    """The family a config's model classes belong to, and which classes said so."""

    family: fam_mod.Family | None
    classes: dict[str, str | None]  # config key -> dotted class of its !new: tag (None: no such model)

    @property
    def mixed(self) -> bool:
        """llm and flow name classes of two different families."""
        fams = {f.name for f in map(fam_mod.of_class, self.classes.values()) if f is not None}
        return len(fams) > 1

    def of(self, key: str) -> fam_mod.Family | None:
        return fam_mod.of_class(self.classes.get(key))

    def as_dict(self) -> dict[str, Any]:
        return {"family": self.family.name if self.family else None,
                "classes": {k: v for k, v in self.classes.items() if v}}


def config_classes(doc: Document) -> dict[str, str | None]:
    """``{'llm': 'cosyvoice.llm.llm.CosyVoice3LM', 'flow': ...}`` from the ``!new:`` tags (refs followed)."""
    out: dict[str, str | None] = {}
    for key in MODEL_KEYS:
        node = doc.deref(doc.node(key))
        call = node.call if node is not None else None
        out[key] = call[1] if call and call[0] == "new" else None
    return out


def config_family(doc: Document) -> ConfigFamily:
    classes = config_classes(doc) if doc.root is not None else {}
    return ConfigFamily(fam_mod.of_config_classes(classes), classes)


# --- the upstream tree, read as text -------------------------------------------------------------

@dataclass
class Symbols:
    """Top-level names and call signatures of upstream modules, from their source text (ast, no import)."""

    root: Path
    _cache: dict[str, dict[str, "Signature"] | None] = field(default_factory=dict)

    def _module(self, module: str) -> dict[str, "Signature"] | None:
        if module in self._cache:
            return self._cache[module]
        parts = module.split(".")
        bases = [self.root, self.root / "third_party" / "Matcha-TTS"]
        text = None
        for base in bases:
            for cand in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
                if cand.is_file():
                    text = cand.read_text(encoding="utf-8", errors="replace")
                    break
            if text is not None:
                break
        self._cache[module] = _definitions(text) if text is not None else None
        return self._cache[module]

    def lookup(self, qualname: str) -> tuple[bool | None, "Signature | None"]:
        """(defined?, signature) of ``pkg.module.Name``; defined is None when the module is not in the tree."""
        module, _, name = qualname.rpartition(".")
        defs = self._module(module) if module else None
        if defs is None:
            return None, None
        if name not in defs:
            return False, None
        return True, defs[name]


@dataclass(frozen=True)
class Signature:
    """Keyword names a function (or a class's ``__init__``) accepts; ``any_kw`` for ``**kwargs``."""

    params: tuple[str, ...] = ()
    any_kw: bool = True  # unknown (an imported or assigned name) accepts anything
    #: parameters without a default (a call without them is a TypeError); () when unknown
    required: tuple[str, ...] = ()

    def accepts(self, name: str) -> bool:
        return self.any_kw or name in self.params


def _sig(fn: ast.FunctionDef | ast.AsyncFunctionDef, skip_self: bool) -> Signature:
    a = fn.args
    positional = [x.arg for x in (*a.posonlyargs, *a.args)]
    required = positional[:len(positional) - len(a.defaults)]
    required += [x.arg for x, d in zip(a.kwonlyargs, a.kw_defaults) if d is None]
    names = [*positional, *(x.arg for x in a.kwonlyargs)]
    if skip_self and names:
        names, required = names[1:], [r for r in required if r != names[0]]
    return Signature(tuple(names), any_kw=a.kwarg is not None, required=tuple(required))


def _definitions(text: str) -> dict[str, Signature]:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return {}
    out: dict[str, Signature] = {}
    body = list(tree.body)
    while body:
        node = body.pop(0)
        if isinstance(node, (ast.If, ast.Try, ast.With)):  # `try: import x` / `if cond: def f()` define names too
            body[:0] = [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                        *(s for h in getattr(node, "handlers", []) for s in h.body)]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = _sig(node, skip_self=False)
        elif isinstance(node, ast.ClassDef):
            init = next((b for b in node.body if isinstance(b, ast.FunctionDef) and b.name == "__init__"), None)
            out[node.name] = _sig(init, skip_self=True) if init else Signature()  # inherited __init__: unknown
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                out[(alias.asname or alias.name).split(".")[0]] = Signature()
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = Signature()
    return out


@dataclass(frozen=True)
class Upstream:
    """The upstream lint checks against.

    ``onnx_flag``: train.py has ``--onnx_path`` (and requires it); None when unknown.
    ``empty_means_precomputed``: ``--onnx_path ''`` trains on the data's features (cosyext's patch to
    ``cosyvoice/utils/onnx.py``); False for a stock tree, where any value switches online features on;
    None when no tree was read. ``source`` says how lint knows.
    """

    onnx_flag: bool | None
    source: str
    path: Path | None = None
    empty_means_precomputed: bool | None = None
    symbols: Symbols | None = field(default=None, compare=False)
    #: the shuffle stage yields half its buffer and keeps the rest (2026) instead of all of it (2025)
    shuffle_keeps_half: bool | None = None
    #: train.py's --qwen_pretrain_path override must match a config key (2026); the 2025 train.py retries
    #: the load without it. None: not known
    qwen_override_strict: bool | None = None

    @property
    def qwen_key_required(self) -> bool | None:
        """Whether a config without ``qwen_pretrain_path`` fails when train.py gets --qwen_pretrain_path."""
        return self.qwen_override_strict if self.qwen_override_strict is not None else self.onnx_flag

    @property
    def keeps_half(self) -> bool:
        """What the data-aware replay does: the tree's shuffle if read, else by the train.py generation."""
        return bool(self.shuffle_keeps_half if self.shuffle_keeps_half is not None else self.onnx_flag)

    @property
    def from_tree(self) -> bool:
        return self.path is not None

    def as_dict(self) -> dict[str, Any]:
        return {"onnx_path_flag": self.onnx_flag, "source": self.source,
                "path": str(self.path) if self.path else None,
                "empty_onnx_path_means_precomputed": self.empty_means_precomputed,
                "shuffle_keeps_half": self.keeps_half}


def _empty_means_precomputed(onnx_py: Path) -> bool | None:
    """Stock ``cosyvoice/utils/onnx.py`` turns online features on with ``if onnx_path is not None``, so
    ``--onnx_path ''`` is online too; a truthiness test (cosyext's patch) makes '' mean precomputed."""
    try:
        tree = ast.parse(onnx_py.read_text(encoding="utf-8", errors="replace"))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if isinstance(node, ast.If) and any(isinstance(n, ast.Name) and n.id == "onnx_path" for n in ast.walk(node.test)):
            t = node.test
            stock = (isinstance(t, ast.Compare) and len(t.ops) == 1 and isinstance(t.ops[0], ast.IsNot)
                     and isinstance(t.comparators[0], ast.Constant) and t.comparators[0].value is None)
            return not stock
    return None


def _shuffle_keeps_half(processor_py: Path) -> bool | None:
    """True when processor.shuffle re-binds ``buf`` to a slice of itself (yields half, keeps half)."""
    try:
        tree = ast.parse(processor_py.read_text(encoding="utf-8", errors="replace"))
    except (OSError, SyntaxError):
        return None
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "shuffle"), None)
    if fn is None:
        return None
    return any(isinstance(n, ast.Assign) and isinstance(n.value, ast.Subscript)
               and isinstance(n.value.value, ast.Name) and n.value.value.id == "buf"
               and any(isinstance(t, ast.Name) and t.id == "buf" for t in n.targets) for n in ast.walk(fn))


def _qwen_override_strict(train_text: str) -> bool | None:
    """ace7c47's train.py adds ``override_dict['qwen_pretrain_path']`` when the flag is given, and
    HyperPyYAML refuses an override without a matching key; 44316c34's loads inside a ``try`` and, on
    any error, loads again without that override."""
    try:
        tree = ast.parse(train_text)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant)
                and t.slice.value == "qwen_pretrain_path" for t in node.targets):
            return True
        if isinstance(node, ast.Try) and node.handlers and any(
                isinstance(n, ast.Constant) and n.value == "qwen_pretrain_path"
                for stmt in node.body for n in ast.walk(stmt)):
            return False
    return None


def read_upstream(path: Path) -> Upstream:
    """Read ``DIR/cosyvoice/bin/train.py`` as text (never imported) to learn what it accepts."""
    root = Path(path).expanduser()
    train = root / "cosyvoice" / "bin" / "train.py"
    if not train.is_file():
        raise UsageError(f"--upstream {path}: no cosyvoice/bin/train.py there, so it is not an upstream CosyVoice tree",
                         hint="pass the directory you run torchrun in (the one holding cosyvoice/ and third_party/)")
    text = train.read_text(encoding="utf-8", errors="replace")
    flag = "--onnx_path" in text
    empty = _empty_means_precomputed(root / "cosyvoice" / "utils" / "onnx.py") if flag else None
    return Upstream(flag, f"read from {train}", root, empty, Symbols(root),
                    _shuffle_keeps_half(root / "cosyvoice" / "dataset" / "processor.py"), _qwen_override_strict(text))


def infer_upstream(doc: Document, cfam: ConfigFamily) -> Upstream:
    """Without ``--upstream``: CosyVoice3 classes, a ``num_frames`` compute_fbank or a
    ``compute_whisper_fbank`` stage exist only at the 2026 upstream; a ``token_mel_ratio``
    compute_fbank only at the 2025 one."""
    if cfam.family is fam_mod.COSYVOICE3 or any(cfam.of(k) is fam_mod.COSYVOICE3 for k in MODEL_KEYS):
        return Upstream(True, "inferred from the config: CosyVoice3 classes")
    fb = fbank_stage(doc)
    if fb is not None and fb.has_param("num_frames"):
        return Upstream(True, "inferred from the config: compute_fbank takes num_frames")
    if any(s.func == "compute_whisper_fbank" for s in stages(doc, "data_pipeline") or []):
        return Upstream(True, "inferred from the config: a compute_whisper_fbank stage")
    if fb is not None and fb.has_param("token_mel_ratio"):
        return Upstream(False, "inferred from the config: compute_fbank takes token_mel_ratio")
    return Upstream(None, "pass --upstream DIR to tell")


#: CosyVoice2's flow encoder: Upsample1D(stride=2) hard-coded in UpsampleConformerEncoder (44316c34, ace7c47)
UPSAMPLE_ENCODER_FRAMES_PER_TOKEN = 2


def flow_frames_per_token(doc: Document) -> int | None:
    """Mel frames the flow makes of one speech token in training, so the number its mel targets must
    match: CosyVoice2's CausalMaskedDiffWithXvec upsamples with its UpsampleConformerEncoder, a fixed 2
    whatever token_mel_ratio says; CosyVoice3's DiT flow repeats each token token_mel_ratio times.
    None when there is no flow or nothing to go by."""
    flow = doc.deref(doc.node("flow"))
    call = flow.call if flow is not None else None
    if call is None or not isinstance(flow, YMap):
        return None
    enc = doc.deref(flow.get("encoder"))
    enc_call = enc.call if enc is not None else None
    if enc_call and enc_call[1].rsplit(".", 1)[-1] == "UpsampleConformerEncoder":
        return UPSAMPLE_ENCODER_FRAMES_PER_TOKEN
    for path in (("flow", "token_mel_ratio"), ("token_mel_ratio",)):
        v = doc.value(*path)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def fbank_trims(doc: Document) -> bool:
    """compute_fbank with a non-zero ``token_mel_ratio`` (the 2025 keyword) cuts mels and tokens to each
    other in the data pipeline, so misaligned features still train (on wrong targets) instead of
    stopping the flow with a size mismatch."""
    fb = fbank_stage(doc)
    v = fb.param(doc, "token_mel_ratio") if fb is not None and fb.has_param("token_mel_ratio") else None
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0


def fbank_stage(doc: Document):
    """The data pipeline's compute_fbank stage, or the top-level ``compute_fbank`` definition."""
    st = find(stages(doc, "data_pipeline"), "compute_fbank")
    if st is not None:
        return st
    from .pipeline import top_level_stage

    return top_level_stage(doc, "compute_fbank")


def trained_families(cfam: ConfigFamily, models: tuple[str, ...]) -> list[fam_mod.Family]:
    """Families of the models train.py builds for ``--model`` (each loads its own batch tokenizer)."""
    out = []
    for m in models:
        f = cfam.of(m)
        if f is not None and f not in out:
            out.append(f)
    return out
