"""The three outputs of an eval: a text table (also printed), `eval.json`, and `eval.png`.

All three are written to a temporary name beside the target and renamed over it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .score import SYSTEM_LABELS

ARROW = {True: "(higher better)", False: "(lower better)"}


def _fmt(est: dict | None, signed: bool = False) -> str:
    if not est:
        return "-"
    f = "{:+.3f}" if signed else "{:.3f}"
    lo, hi = est["ci"]
    return f"{f.format(est['mean'])} [{f.format(lo)}, {f.format(hi)}]"


def table(result: dict) -> str:
    """Mean [95% CI] per system, the paired difference and its verdict; then every metric not run and
    every utterance a metric skipped, with the reason."""
    systems = result["systems_order"]
    level = int(round(result["bootstrap"]["level"] * 100))
    head = ["metric", "n"] + [f"{SYSTEM_LABELS.get(s, s)} [{level}% CI]" for s in systems]
    if len(systems) == 2:
        head += [f"{SYSTEM_LABELS[systems[1]]} - {SYSTEM_LABELS[systems[0]]} [{level}% CI]", "verdict"]
    rows, notes = [], []
    for name, m in result["metrics"].items():
        if m["unavailable"]:
            notes.append(f"not run: {name}: {m['unavailable']}")
            continue
        n = m["diff"]["n"] if m["diff"] else max((v["scored"] for v in m["systems"].values()), default=0)
        row = [f"{m['label']} {ARROW[m['higher_is_better']]}", str(n)]
        row += [_fmt(m["systems"][s]["estimate"]) for s in systems]
        if len(systems) == 2:
            row += [_fmt(m["diff"], signed=True), m["verdict"] or "-"]
        rows.append(row)
        for s in systems:
            entry = m["systems"][s]
            total = entry["scored"] + sum(entry["skipped"].values())
            for reason, count in entry["skipped"].items():
                notes.append(f"skipped: {name} {SYSTEM_LABELS.get(s, s)}: {count} of {total} utterances: {reason}")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + notes) + "\n"


def _install(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.cosyext-tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, result: dict) -> None:
    _install(path, lambda p: p.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"))


def write_text(path: Path, text: str) -> None:
    _install(path, lambda p: p.write_text(text, encoding="utf-8"))


def plot(path: Path, result: dict) -> None:
    """One panel per metric that ran: each system's mean with its CI as an error bar; the difference
    and its CI in the panel's title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = result["systems_order"]
    shown = {k: m for k, m in result["metrics"].items() if not m["unavailable"]}
    cols = max(1, len(shown))
    fig, axes = plt.subplots(1, cols, figsize=(3.2 * cols, 3.6), squeeze=False)
    colors = ["#7f7f7f", "#1f77b4"]
    for ax, (name, m) in zip(axes[0], shown.items()):
        for i, s in enumerate(systems):
            est = m["systems"][s]["estimate"]
            if not est:
                continue
            lo, hi = est["ci"]
            ax.errorbar([i], [est["mean"]], yerr=[[est["mean"] - lo], [hi - est["mean"]]], fmt="o", capsize=6,
                        color=colors[i % 2], markersize=7)
        ax.set_xticks(range(len(systems)), [SYSTEM_LABELS.get(s, s) for s in systems])
        ax.set_xlim(-0.6, len(systems) - 0.4)
        title = f"{m['label']} {'↑' if m['higher_is_better'] else '↓'}"
        if m["diff"]:
            title += f"\nΔ {_fmt(m['diff'], signed=True)}"
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    if not shown:
        axes[0][0].text(0.5, 0.5, "no metric could run", ha="center", va="center")
        axes[0][0].set_axis_off()
    level = int(round(result["bootstrap"]["level"] * 100))
    fig.suptitle(f"cosyext eval: {result['speaker'] or 'speaker'}, {len(result['utterances'])} utterances "
                 f"(mean, {level}% bootstrap CI)", fontsize=10)
    fig.tight_layout()
    _install(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
