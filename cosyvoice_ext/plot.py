"""Loss curves from the TensorBoard event files upstream's train.py writes (`--tensorboard_dir`).

Upstream logs, on rank 0 only, `TRAIN/<name>` for every optimizer step (`log_per_step`: epoch, lr,
grad_norm and each loss-dict entry such as loss, acc) and `CV/<name>` once per save
(`log_per_save`: epoch, lr and the CV losses), all at x = step + 1. A resumed run appends a new
event file to the same directory; the newest value written for a step wins.

Reading goes through tensorboard's EventAccumulator. tensorboard 2.14 (upstream's pin) still names
`np.string_`/`np.unicode_`, which NumPy 2 removed, so those two aliases exist while it runs.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import UsageError

EVENT_GLOB = "events.out.tfevents.*"
SPLITS = ("TRAIN", "CV")


@dataclasses.dataclass(frozen=True)
class Point:
    step: int
    epoch: float | None
    value: float


@dataclasses.dataclass
class Curve:
    """One run's series for one split (TRAIN or CV)."""

    run: str
    split: str
    points: list[Point]


@contextlib.contextmanager
def _numpy2_aliases() -> Iterator[None]:
    import numpy as np

    added = []
    for old, new in (("string_", "bytes_"), ("unicode_", "str_")):
        if old not in np.__dict__:
            setattr(np, old, getattr(np, new))
            added.append(old)
    try:
        yield
    finally:
        for old in added:
            delattr(np, old)


def event_dirs(path: Path) -> list[Path]:
    """Directories holding event files: `path` itself (a run dir or the tensorboard dir) or any below it."""
    path = Path(path)
    if path.is_file() and path.name.startswith("events.out.tfevents."):
        return [path.parent]
    if not path.is_dir():
        raise UsageError(f"{path} does not exist", hint="cosyext plot RUN_DIR... -o loss.png")
    dirs = sorted({p.parent for p in path.rglob(EVENT_GLOB) if p.is_file()})
    if not dirs:
        raise UsageError(f"no TensorBoard event files ({EVENT_GLOB}) under {path}",
                         hint="pass the training's --tensorboard_dir (train.py's default is ./tensorboard) "
                              "or a directory above it")
    return dirs


def read_scalars(directory: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} for every scalar in one event directory (later writes of a step win)."""
    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its INFO lines narrate file polling
    with _numpy2_aliases():
        from tensorboard.backend.event_processing import event_accumulator as ea

        acc = ea.EventAccumulator(str(directory), size_guidance={ea.SCALARS: 0})
        acc.Reload()
        out: dict[str, dict[int, float]] = {}
        for tag in acc.Tags().get("scalars", []):
            series: dict[int, tuple[float, float]] = {}
            for ev in acc.Scalars(tag):
                if ev.step not in series or ev.wall_time >= series[ev.step][0]:
                    series[ev.step] = (ev.wall_time, float(ev.value))
            out[tag] = {s: v for s, (_, v) in sorted(series.items())}
    return out


def curves_for(label: str, scalars: dict[str, dict[int, float]], metric: str) -> list[Curve]:
    curves = []
    for split in SPLITS:
        values = scalars.get(f"{split}/{metric}")
        if not values:
            continue
        epochs = scalars.get(f"{split}/epoch", {})
        curves.append(Curve(label, split, [Point(s, epochs.get(s), v) for s, v in values.items()]))
    return curves


def _labels(paths: Sequence[Path]) -> list[tuple[str, Path]]:
    """(label, event dir) for every run; a label is the path as given, plus the sub-path when one
    argument holds several event directories (e.g. exp/ with tensorboard/llm and tensorboard/flow)."""
    out = []
    for arg in paths:
        dirs = event_dirs(Path(arg))
        name = str(arg).rstrip("/") or str(arg)
        base = Path(arg) if Path(arg).is_dir() else Path(arg).parent
        for d in dirs:
            rel = d.relative_to(base) if d != base else None
            out.append((f"{name}/{rel}" if rel and len(dirs) > 1 else name, d))
    return out


def load_runs(paths: Sequence[Path], metric: str = "loss") -> list[Curve]:
    curves: list[Curve] = []
    for label, d in _labels(paths):
        scalars = read_scalars(d)
        found = curves_for(label, scalars, metric)
        if not found:
            tags = ", ".join(sorted(scalars)) or "none"
            raise UsageError(f"{d} has no TRAIN/{metric} or CV/{metric} scalars (tags: {tags})",
                             hint="cosyext plot RUN_DIR --metric loss   (tags come from upstream's log_per_step)")
        curves.extend(found)
    return curves


def per_epoch(curve: Curve) -> Curve:
    """TRAIN: mean over the epoch's steps; CV: the last evaluation of the epoch. x is the epoch."""
    if any(p.epoch is None for p in curve.points):
        raise UsageError(f"{curve.run}: {curve.split}/epoch is missing, so steps cannot be grouped into epochs",
                         hint="cosyext plot RUN_DIR --per step")
    groups: dict[float, list[Point]] = {}
    for p in curve.points:
        groups.setdefault(p.epoch, []).append(p)
    points = []
    for epoch, pts in sorted(groups.items()):
        value = sum(p.value for p in pts) / len(pts) if curve.split == "TRAIN" else pts[-1].value
        points.append(Point(max(p.step for p in pts), epoch, value))
    return Curve(curve.run, curve.split, points)


def to_csv(curves: Sequence[Curve], metric: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "split", "step", "epoch", metric])
    for c in curves:
        for p in c.points:
            w.writerow([c.run, c.split, p.step, "" if p.epoch is None else _num(p.epoch), repr(p.value)])
    return buf.getvalue()


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def render_png(curves: Sequence[Curve], out: Path, *, per: str, metric: str, title: str | None = None) -> Path:
    """One axes: a colour per run, TRAIN solid, CV dashed with markers; the best CV point starred."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = {}
    palette = [f"C{i}" for i in range(10)]
    for c in curves:
        colour = colours.setdefault(c.run, palette[len(colours) % len(palette)])
        xs = [p.epoch if per == "epoch" else p.step for p in c.points]
        ys = [p.value for p in c.points]
        if c.split == "TRAIN":
            ax.plot(xs, ys, color=colour, linewidth=1.4, alpha=0.9,
                    marker="o" if per == "epoch" or len(xs) < 30 else None, markersize=3,
                    label=f"{c.run}: train")
        else:
            best = min(range(len(ys)), key=ys.__getitem__)
            where = f"epoch {_num(xs[best])}" if per == "epoch" else f"step {xs[best]}"
            ax.plot(xs, ys, color=colour, linewidth=1.6, linestyle="--", marker="s", markersize=4,
                    label=f"{c.run}: cv (best {ys[best]:.4g} at {where})")
            ax.plot([xs[best]], [ys[best]], color=colour, marker="*", markersize=14, markeredgecolor="black",
                    linestyle="none")
    runs = list(colours)
    ax.set_title(title or f"{metric} per {per}: " + (runs[0] if len(runs) == 1 else f"{len(runs)} runs"))
    ax.set_xlabel("epoch" if per == "epoch" else "optimizer step")
    ax.set_ylabel(f"{metric} (TRAIN solid, CV dashed)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small", framealpha=0.85)
    if per == "epoch":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def plot(paths: Sequence[Path], out: Path | None, *, fmt: str = "png", per: str = "step", metric: str = "loss",
         title: str | None = None) -> str | Path:
    """Write the PNG (returns its path) or the CSV (to `out`, or returned as text when `out` is None)."""
    if per not in ("step", "epoch"):
        raise UsageError(f"--per must be 'step' or 'epoch', got {per!r}")
    curves = load_runs(paths, metric)
    if per == "epoch":
        curves = [per_epoch(c) for c in curves]
    if fmt == "csv":
        text = to_csv(curves, metric)
        if out is None:
            return text
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")
        return Path(out)
    if out is None:
        raise UsageError("a PNG needs an output file", hint="cosyext plot RUN_DIR -o loss.png")
    return render_png(curves, Path(out), per=per, metric=metric, title=title)
