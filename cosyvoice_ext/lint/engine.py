"""Runs the registered rules over config files and turns their issues into located findings.

Selection works by code prefix like ruff's: the most specific matching ``select``/``ignore``
prefix wins (``--select CX1 --ignore CX104`` keeps CX101 but drops CX104). The config's own
``cosyext: {lint: {select, ignore}}`` applies when the command line gives no ``--select``;
ignores from both places add up.
"""

from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import UsageError
from .document import Document, position
from .registry import RuleRegistry
from .rule import Issue, LintContext, Rule
from .yamlpos import gc_paused

INTERNAL = "CX000"


@dataclass
class Finding:
    path: str
    line: int
    col: int
    code: str
    severity: str
    message: str
    fix: str | None = None
    rule: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Options:
    select: list[str] | None = None
    ignore: list[str] = field(default_factory=list)
    model: str | None = None
    gpu_memory: float | None = None
    train_engine: str | None = None
    data: Path | None = None
    cv_data: Path | None = None  # data mode: train.py's --cv_data (its CV pass after each epoch)
    qwen_pretrain_path: str | None = None
    epochs: int | None = None  # data mode: how many epochs to simulate (default: max_epoch)
    world_size: int = 1
    num_workers: int = 0
    use_cache: bool = True
    upstream: Any = None  # Path of an upstream tree (--upstream) or an already read target.Upstream
    onnx_path: str | None = None  # what train.py will get as --onnx_path ('' = precomputed features)


@dataclass
class FileResult:
    path: str
    findings: list[Finding]
    data: Any = None  # DataAnalysis summary (dict) in data-aware mode
    internal_errors: int = 0
    target: dict[str, Any] = field(default_factory=dict)  # family and upstream, as lint saw them


def _norm(codes: Iterable[str] | None) -> list[str]:
    out = []
    for c in codes or []:
        for part in str(c).split(","):
            part = part.strip().upper()
            if part:
                out.append("" if part == "ALL" else part)
    return out


def is_selected(code: str, select: list[str] | None, ignore: list[str]) -> bool:
    sel = [p for p in (select if select is not None else [""]) if code.startswith(p)]
    if not sel:
        return False
    ign = [p for p in ignore if code.startswith(p)]
    return not ign or max(map(len, sel)) > max(map(len, ign))


def _config_selection(doc: Document) -> tuple[list[str] | None, list[str]]:
    sel = doc.value("cosyext", "lint", "select")
    ign = doc.value("cosyext", "lint", "ignore")
    as_list = lambda v: [v] if isinstance(v, str) else [str(x) for x in v] if isinstance(v, list) else None  # noqa: E731
    return (_norm(as_list(sel)) if as_list(sel) is not None else None), _norm(as_list(ign) or [])


def read_config(path: Path) -> Document:
    """Read a config as text; an unreadable file is a usage error (exit 2), bad YAML is a finding."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}", hint=f"check the path: ls -l {path}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                         hint="lint a CosyVoice YAML config, e.g. cosyext lint conf/cosyvoice2.yaml") from exc
    return Document.from_text(text, path)


def lint_document(doc: Document, registry: RuleRegistry, opts: Options) -> FileResult:
    with gc_paused():  # the rules allocate per node; see yamlpos.gc_paused
        return _lint_document(doc, registry, opts)


def _lint_document(doc: Document, registry: RuleRegistry, opts: Options) -> FileResult:
    cfg_select, cfg_ignore = _config_selection(doc) if doc.root is not None else (None, [])
    select = _norm(opts.select) if opts.select is not None else cfg_select
    ignore = _norm(opts.ignore) + cfg_ignore
    cfam, upstream = _target(doc, opts)
    ctx = LintContext(doc=doc, model=opts.model, gpu_memory=opts.gpu_memory, train_engine=opts.train_engine,
                      options={"qwen_pretrain_path": opts.qwen_pretrain_path, "onnx_path": opts.onnx_path},
                      family=cfam, upstream=upstream)
    rules = [r for r in registry.sorted() if is_selected(r.code, select, ignore)]
    data_summary = None
    if opts.data is not None and doc.root is not None and any(r.needs_data or r.uses_data for r in rules):
        from .data_analysis import analyse

        ctx.data = analyse(doc, opts, upstream=upstream)
        data_summary = ctx.data.summary()
    findings: list[Finding] = []
    internal = 0
    for rule in rules:
        if rule.needs_data and ctx.data is None:
            continue
        if doc.root is None and not rule.code.startswith("CX0"):
            continue  # nothing to look at; the parse-error rules say why
        try:
            for issue in rule.check(ctx) or ():
                findings.append(_finding(doc, rule, issue))
        except Exception as exc:  # a rule bug must not hide the other findings
            internal += 1
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            findings.append(Finding(str(doc.path), 1, 1, INTERNAL, "error",
                                    f"rule {rule.code} crashed: {exc!r} ({Path(tb.filename).name}:{tb.lineno})",
                                    "report this bug; meanwhile --ignore " + rule.code, "internal-error"))
    findings = [f for f in findings if f.code == INTERNAL or not doc.suppressed(f.code, f.line)]
    findings.sort(key=lambda f: (f.line, f.col, f.code))
    target = {**cfam.as_dict(), "upstream": upstream.as_dict()} if doc.root is not None else {}
    return FileResult(str(doc.path), findings, data_summary, internal, target)


def _target(doc: Document, opts: Options):
    """The config's family and the upstream it targets (the tree named by --upstream, else inferred)."""
    from .target import Upstream, config_family, infer_upstream, read_upstream

    cfam = config_family(doc)
    up = opts.upstream
    if isinstance(up, (str, Path)):
        up = opts.upstream = read_upstream(Path(up))  # once per run, not per file
    return cfam, up if isinstance(up, Upstream) else infer_upstream(doc, cfam)


def _finding(doc: Document, rule: Rule, issue: Issue) -> Finding:
    pos = position(issue.at)
    return Finding(str(doc.path), pos.line, pos.col, rule.code, issue.severity or rule.severity,
                   issue.message, issue.fix if issue.fix is not None else (rule.fix or None), rule.name)


def lint_paths(paths: Iterable[Path], registry: RuleRegistry, opts: Options) -> list[FileResult]:
    return [lint_document(read_config(Path(p)), registry, opts) for p in paths]


def lint_text(text: str, registry: RuleRegistry | None = None, opts: Options | None = None,
              path: str = "<string>") -> FileResult:
    """Lint YAML text (tests, editors). Uses the process plugin manager's rules by default."""
    if registry is None:
        from .registry import collect

        registry = collect()
    return lint_document(Document.from_text(text, path), registry, opts or Options())
