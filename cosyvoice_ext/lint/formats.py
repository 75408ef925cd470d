"""Output formats: concise (people), json (tools), github (Actions annotations), sarif (code scanning)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from .engine import FileResult, Finding
from .registry import RuleRegistry

FORMATS = ("concise", "json", "github", "sarif")


def _all(results: list[FileResult]) -> list[Finding]:
    return [f for r in results for f in r.findings]


def statistics(results: list[FileResult], registry: RuleRegistry) -> list[dict[str, Any]]:
    counts = Counter(f.code for f in _all(results))
    rows = []
    for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        rule = registry.get(code)
        sev = next(f.severity for f in _all(results) if f.code == code)
        rows.append({"code": code, "name": rule.name if rule else "internal-error", "count": n, "severity": sev})
    return rows


def render(results: list[FileResult], registry: RuleRegistry, fmt: str, show_stats: bool = False) -> str:
    if fmt == "json":
        return _json(results, registry, show_stats)
    if fmt == "github":
        return _github(results)
    if fmt == "sarif":
        return _sarif(results, registry)
    return _concise(results, registry, show_stats)


def _concise(results: list[FileResult], registry: RuleRegistry, show_stats: bool) -> str:
    out = []
    for r in results:
        if r.target:
            out.append(target_text(r.path, r.target))
        for f in r.findings:
            line = f"{f.path}:{f.line}:{f.col}: {f.code} [{f.severity}] {f.message}"
            if f.fix:
                line += f"\n    fix: {f.fix}"
            out.append(line)
        if r.data:
            out.append(_data_text(r.path, r.data))
    findings = _all(results)
    if show_stats and findings:
        out.append("")
        for row in statistics(results, registry):
            out.append(f"{row['count']:5d}  {row['code']}  [{row['severity']}] {row['name']}")
    sev = Counter(f.severity for f in findings)
    if findings:
        parts = [f"{sev[s]} {s}{'s' if sev[s] != 1 else ''}" for s in ("error", "warning", "info") if sev[s]]
        out.append(f"Found {len(findings)} finding{'s' if len(findings) != 1 else ''} ({', '.join(parts)}).")
    else:
        out.append("All checks passed.")
    return "\n".join(out)


def target_text(path: str, t: dict[str, Any]) -> str:
    """'conf.yaml: cosyvoice3 (llm CosyVoice3LM, flow CausalMaskedDiffWithDiT); upstream: train.py with --onnx_path (...)'."""
    classes = ", ".join(f"{k} {v.rsplit('.', 1)[-1]}" for k, v in t.get("classes", {}).items())
    fam = t.get("family") or "unknown family"
    up = t.get("upstream") or {}
    flag = up.get("onnx_path_flag")
    where = ("train.py with --onnx_path (2026 upstream)" if flag else "train.py without --onnx_path (2025 upstream)"
             if flag is False else "not known")
    return f"{path}: {fam}{f' ({classes})' if classes else ''}; upstream: {where}, {up.get('source', '')}".rstrip(", ")


def _data_text(path: str, d: dict[str, Any]) -> str:
    feats = _features_text(d.get("features"))
    if d.get("error"):
        return f"{path}: data-aware summary unavailable: {d['error']}" + (f"\n    {feats}" if feats else "")
    lines = [f"{path}: data-aware summary ({d.get('data_list')}, model {d.get('model') or 'any'})"]
    if feats:
        lines.append(f"    {feats}" + (" (replayed with online features)" if d.get("online_features") else ""))
    lines.append(f"    utterances: {d['total']} read, {d['kept']} kept by the pipeline")
    for reason, n in sorted(d.get("dropped", {}).items()):
        lines.append(f"    dropped {n:6d}: {reason}")
    e0 = d.get("epochs", [{}])[0] if d.get("epochs") else {}
    if e0:
        lines.append(f"    epoch 0: {e0['batches']} batches ({e0['empty_batches']} empty, {e0['oversize_batches']} oversize), "
                     f"{e0['steps']} optimizer steps (accum_grad {d['accum_grad']})")
    lines.append(f"    total over {d['epochs_simulated']} epoch(s): {d['total_steps']} optimizer steps"
                 + (f" (of {d['max_epoch']} epochs, extrapolated)" if d.get("extrapolated") else "")
                 + (f"; warmup_steps {d['warmup_steps']}" if d.get("warmup_steps") is not None else ""))
    if d.get("seed_note"):
        lines.append(f"    note: {d['seed_note']}")
    return "\n".join(lines)


def _features_text(f: dict[str, Any] | None) -> str:
    if not f:
        return ""
    n, t, e = f["rows"], f["speech_token"], f["embedding"]
    return (f"features (of {n} rows): speech_token absent {t['rows_without_column']}, empty {t['rows_empty']}; "
            f"embeddings absent {e['rows_without_columns']}, empty {e['rows_empty']}, zero {e['rows_zero']}; "
            f"instruct missing {f['instruct']['rows_missing']}")


def _json(results: list[FileResult], registry: RuleRegistry, show_stats: bool) -> str:
    doc: dict[str, Any] = {
        "version": 1,
        "findings": [f.as_dict() for f in _all(results)],
    }
    data = {r.path: r.data for r in results if r.data}
    if data:
        doc["data"] = data
    targets = {r.path: r.target for r in results if r.target}
    if targets:
        doc["targets"] = targets
    if show_stats:
        doc["statistics"] = statistics(results, registry)
    return json.dumps(doc, indent=2)


def _esc(s: str, prop: bool = False) -> str:
    s = s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return s.replace(":", "%3A").replace(",", "%2C") if prop else s


def _github(results: list[FileResult]) -> str:
    level = {"error": "error", "warning": "warning", "info": "notice"}
    out = []
    for f in _all(results):
        msg = f.message + (f" (fix: {f.fix})" if f.fix else "")
        out.append(f"::{level.get(f.severity, 'error')} file={_esc(f.path, True)},line={f.line},col={f.col},"
                   f"title={_esc(f.code + ' ' + f.rule, True)}::{_esc(msg)}")
    return "\n".join(out)


def _sarif(results: list[FileResult], registry: RuleRegistry) -> str:
    from .. import __version__

    level = {"error": "error", "warning": "warning", "info": "note"}
    rules = [{
        "id": r.code, "name": r.name,
        "shortDescription": {"text": r.summary},
        "fullDescription": {"text": r.doc or r.summary},
        "help": {"text": r.fix or r.summary},
        "defaultConfiguration": {"level": level[r.severity]},
    } for r in registry.sorted()]
    index = {r["id"]: i for i, r in enumerate(rules)}
    sarif_results = []
    for f in _all(results):
        res: dict[str, Any] = {
            "ruleId": f.code,
            "level": level.get(f.severity, "error"),
            "message": {"text": f.message + (f" Fix: {f.fix}" if f.fix else "")},
            "locations": [{"physicalLocation": {
                "artifactLocation": {"uri": f.path},
                "region": {"startLine": f.line, "startColumn": f.col},
            }}],
        }
        if f.code in index:
            res["ruleIndex"] = index[f.code]
        sarif_results.append(res)
    return json.dumps({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "cosyext-lint", "version": __version__,
                                "rules": rules}},
            "results": sarif_results,
        }],
    }, indent=2)
