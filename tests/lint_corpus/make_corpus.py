"""Generate the differential lint corpus: every mutation of tests/lint_corpus/mutations.py on every
setup (CosyVoice2 at 44316c34, CosyVoice2 and CosyVoice3 at ace7c47), run through upstream's real
train.py, outcome recorded in outcomes.json; then lint each and print the agreement table.

    python -m tests.lint_corpus.make_corpus                  # run what is new or changed, then the table
    python -m tests.lint_corpus.make_corpus --table-only     # lint the corpus against the recorded outcomes
    python -m tests.lint_corpus.make_corpus --only base-llm,lr-0 --force --jobs 2

Configs are written as tests/lint_corpus/<setup>/<mutation>.yaml with the tiny Qwen directory as a
placeholder; an entry whose config, model and setup are unchanged keeps its recorded outcome
(--force re-runs it). A trainer run takes ~20 s; the whole corpus ~45 min with --jobs 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from tests.lint_corpus import differential as d
from tests.lint_corpus.mutations import MUTATIONS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "lint.md"
BEGIN, END = "<!-- agreement-table:begin -->", "<!-- agreement-table:end -->"


def digest(setup: str, model: str, text: str) -> str:
    return hashlib.sha256(f"{setup}\n{model}\n{text}".encode()).hexdigest()[:16]


def load_outcomes() -> list[dict[str, Any]]:
    """The recorded entries (outcomes.json: {"cosyext": commit the trainer ran with, "entries": [...]})."""
    if not d.OUTCOMES.is_file():
        return []
    return json.loads(d.OUTCOMES.read_text(encoding="utf-8"))["entries"]


def save_outcomes(entries_: list[dict[str, Any]], cosyext_rev: str) -> None:
    d.OUTCOMES.write_text(json.dumps({"cosyext": cosyext_rev, "entries": entries_}, indent=1) + "\n", encoding="utf-8")


def entries(trees: dict[str, Path], tmp: Path, write: bool = True) -> list[dict[str, Any]]:
    """Every (setup, mutation) with its config text, in corpus order; `write`: also (re)write the yaml
    files and delete those of mutations that are gone."""
    out = []
    for setup, (rev, family) in d.SETUPS.items():
        base = d.base_config(trees[rev], family, tmp)
        folder = d.HERE / setup
        keep = set()
        for m in MUTATIONS:
            if not m.applies(setup):
                continue
            text = m.apply(base)
            if write:
                folder.mkdir(exist_ok=True)
                (folder / f"{m.id}.yaml").write_text(text, encoding="utf-8")
            keep.add(f"{m.id}.yaml")
            out.append({"setup": setup, "id": m.id, "what": m.what, "model": m.model,
                        "digest": digest(setup, m.model, text), "text": text})
        for stale in folder.glob("*.yaml") if write else ():
            if stale.name not in keep:
                stale.unlink()
    return out


def run_missing(todo: list[dict[str, Any]], trees: dict[str, Path], datas: dict[str, d.Data], tmp: Path,
                jobs: int, record: Callable[[tuple[str, str], dict[str, Any]], None], cosyext: Path) -> None:
    """Each entry of `todo` through train.py, `jobs` at a time; `record(key, result)` after each run."""
    lock = threading.Lock()

    def one(e: dict[str, Any]) -> None:
        rev, family = d.SETUPS[e["setup"]]
        work = tmp / "runs" / e["setup"] / e["id"]
        cfg = d.materialize(e["text"], datas[family], work / "conf.yaml")
        t = time.time()
        res = d.run_trainer(cfg, datas[family], trees[rev], e["model"], work, cosyext=cosyext)
        print(f"  {e['setup']:22s} {e['id']:28s} {res['outcome']:9s} {time.time() - t:5.1f}s "
              f"{res['error'] or ''}", flush=True)
        with lock:
            record((e["setup"], e["id"]), res)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, todo))


def merge(all_entries: list[dict[str, Any]], recorded: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Recorded outcomes of the current entries (by digest), in corpus order."""
    out = []
    for e in all_entries:
        res = recorded.get((e["setup"], e["id"]))
        if res is None or res.get("digest") != e["digest"]:
            continue  # never run, or run on a config that has changed since
        out.append({"setup": e["setup"], "id": e["id"], "what": e["what"], "model": e["model"],
                    "digest": e["digest"], "outcome": res["outcome"], "steps": res["steps"], "error": res.get("error")})
    return out


def lint_all(recorded: list[dict[str, Any]], trees: dict[str, Path], datas: dict[str, d.Data],
             tmp: Path) -> list[dict[str, Any]]:
    """Each recorded entry with lint's verdict added (in-process, the options the CLI would get)."""
    from cosyvoice_ext.lint.engine import lint_document, read_config
    from cosyvoice_ext.lint.registry import collect

    registry = collect()
    rows = []
    for e in recorded:
        rev, family = d.SETUPS[e["setup"]]
        text = (d.HERE / e["setup"] / f"{e['id']}.yaml").read_text(encoding="utf-8")
        cfg = d.materialize(text, datas[family], tmp / "lint" / e["setup"] / f"{e['id']}.yaml")
        res = lint_document(read_config(cfg), registry, d.lint_options(datas[family], trees[rev], e["model"]))
        rows.append({**e, **d.lint_verdict(res.findings)})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per mutation, one column per setup ('fails / CX503' = trainer / lint errors)."""
    setups = list(d.SETUPS)
    by = {(r["setup"], r["id"]): r for r in rows}
    ids = list(dict.fromkeys(r["id"] for r in rows))
    lines = ["| mutation | " + " | ".join(setups) + " |", "|---|" + "---|" * len(setups)]
    for mid in ids:
        cells = []
        for s in setups:
            r = by.get((s, mid))
            if r is None:
                cells.append("")
                continue
            mark = "" if d.agrees(r["outcome"], r["lint"]) else " **DISAGREE**"
            cells.append(f"{r['outcome']} / {', '.join(r['codes']) or 'clean'}{mark}")
        what = next(r["what"] for r in rows if r["id"] == mid)
        lines.append(f"| `{mid}`: {what} | " + " | ".join(cells) + " |")
    n = len(rows)
    ok = sum(d.agrees(r["outcome"], r["lint"]) for r in rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return "\n".join(lines) + f"\n\n{ok}/{n} agree (trainer outcomes: {summary}).\n"


def write_docs(text: str) -> None:
    doc = DOCS.read_text(encoding="utf-8")
    a, b = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    DOCS.write_text(doc[:a] + "\n" + text + doc[b:], encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated mutation ids to (re)run")
    ap.add_argument("--force", action="store_true", help="re-run entries whose outcome is recorded")
    ap.add_argument("--jobs", type=int, default=1, help="trainer runs at a time (1 CPU thread each)")
    ap.add_argument("--table-only", action="store_true", help="no trainer runs: lint and print the table")
    ap.add_argument("--docs", action="store_true", help="also write the table into docs/lint.md")
    ap.add_argument("--trees", type=Path, help="folder to keep the patched upstream trees in (reused)")
    ap.add_argument("--cosyext-rev", default="HEAD",
                    help="the committed cosyvoice_ext train.py imports its relay from (default HEAD)")
    args = ap.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    with tempfile.TemporaryDirectory(prefix="lint-corpus-") as t:
        tmp = Path(t)
        trees = {rev: d.upstream_tree(rev, args.trees or tmp / "trees") for rev, _ in d.SETUPS.values()}
        datas = {fam: d.make_data(tmp / "data" / fam, fam) for _, fam in d.SETUPS.values()}
        all_entries = entries(trees, tmp, write=not args.table_only)
        recorded = {(e["setup"], e["id"]): e for e in load_outcomes()}
        todo = [] if args.table_only else [
            e for e in all_entries
            if (only is None or e["id"] in only)
            and (args.force or recorded.get((e["setup"], e["id"]), {}).get("digest") != e["digest"])]
        print(f"{len(all_entries)} corpus entries, {len(todo)} to run through train.py", flush=True)
        digests = {(e["setup"], e["id"]): e["digest"] for e in all_entries}

        snapshot, rev = d.cosyext_snapshot(tmp / "cosyext", args.cosyext_rev)
        if todo and recorded and json.loads(d.OUTCOMES.read_text(encoding="utf-8"))["cosyext"] != rev:
            print(f"note: entries recorded with another cosyext commit are kept; --force re-runs them", flush=True)

        def record(key: tuple[str, str], res: dict[str, Any]) -> None:  # saved after every run: resumable
            recorded[key] = {**res, "digest": digests[key]}
            save_outcomes(merge(all_entries, recorded), rev)

        run_missing(todo, trees, datas, tmp, args.jobs, record, snapshot)
        merged = merge(all_entries, recorded)
        if todo:
            save_outcomes(merged, rev)
        rows = lint_all(merged, trees, datas, tmp)
    text = table(rows)
    print(text)
    if args.docs:
        write_docs(text)
    return 0 if all(d.agrees(r["outcome"], r["lint"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
