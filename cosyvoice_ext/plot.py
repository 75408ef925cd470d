"""Loss curves from the TensorBoard event files upstream's train.py writes (`--tensorboard_dir`).

Upstream logs, on rank 0 only, `TRAIN/<name>` for every optimizer step (`log_per_step`: epoch, lr,
grad_norm and each loss-dict entry such as loss, acc) and `CV/<name>` once per save
(`log_per_save`: epoch, lr and the CV losses), all at x = step + 1. A resumed run appends a new
event file to the same directory; the newest value written for a step wins.

Event files are read record by record here (TFRecord framing: length, masked CRC32C of the
length, the `Event` protobuf, its masked CRC32C), not through tensorboard's EventAccumulator,
which stops silently at the first bad record: a file cut off in its last record (training still
writing, or killed mid-write) is plotted up to the cut with a warning, and a record that fails its
CRC check is an error naming the file and the byte. tensorboard 2.14 (upstream's pin) still names
`np.string_`/`np.unicode_`, which NumPy 2 removed, so those two aliases exist while it decodes.

Output goes to a temporary file beside ``-o`` and is renamed over it, and ``-o`` is refused when it
is (or links to) an input events file, or would itself be read as one next time.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import os
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .errors import UsageError
from .safe_paths import check_writable, entry, same_file

EVENT_GLOB = "events.out.tfevents.*"
EVENT_PREFIX = "events.out.tfevents."
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


def read_scalars(directory: Path, warn: Callable[[str], None] | None = None) -> dict[str, dict[int, float]]:
    """tag -> {step: value} for every scalar in one event directory's files (later writes of a step win)."""
    series: dict[str, dict[int, tuple[float, float]]] = {}
    with _numpy2_aliases():
        for path in sorted(p for p in Path(directory).glob(EVENT_GLOB) if p.is_file()):
            for wall_time, step, tag, value in read_events(path, warn or _warn):
                old = series.setdefault(tag, {}).get(step)
                if old is None or wall_time >= old[0]:
                    series[tag][step] = (wall_time, value)
    return {tag: {s: v for s, (_, v) in sorted(values.items())} for tag, values in series.items()}


def read_events(path: Path, warn: Callable[[str], None]) -> list[tuple[float, int, str, float]]:
    """(wall_time, step, tag, value) of every scalar in one events file, CRCs checked.

    A file that ends inside a record is read up to it (``warn`` says so); a record whose length or
    data fails its CRC check, or does not parse, is a UsageError naming the file and the byte.
    """
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    data = path.read_bytes()
    out: list[tuple[float, int, str, float]] = []
    pos = records = 0
    while pos < len(data):
        header = data[pos:pos + 12]
        if len(header) == 12 and masked_crc32c(header[:8]) != struct.unpack("<I", header[8:])[0]:
            raise _corrupt(path, pos, records, "the record length fails its CRC check")
        length = struct.unpack("<Q", header[:8])[0] if len(header) == 12 else 0
        end = pos + 12 + length + 4
        if len(header) < 12 or end > len(data):
            warn(f"warning: events file {path} ends in a cut-off record at byte {pos} (training still writing, or "
                 f"killed mid-write): plotting the {records} record(s) before it")
            break
        body = data[pos + 12:pos + 12 + length]
        if masked_crc32c(body) != struct.unpack("<I", data[end - 4:end])[0]:
            raise _corrupt(path, pos, records, "the record data fails its CRC check")
        event = event_pb2.Event()
        try:
            event.ParseFromString(body)
        except DecodeError as exc:
            raise _corrupt(path, pos, records, f"not an Event ({exc})") from exc
        for v in event.summary.value:
            value = _scalar(v)
            if value is not None:
                out.append((event.wall_time, event.step, v.tag, value))
        pos, records = end, records + 1
    return out


def _scalar(value) -> float | None:
    """A summary value's number: `simple_value` (what SummaryWriter.add_scalar writes) or a 1-element tensor."""
    if value.HasField("simple_value"):
        return float(value.simple_value)
    if value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "scalars":
        from tensorboard.util import tensor_util

        array = tensor_util.make_ndarray(value.tensor)
        return float(array.item()) if array.size == 1 else None
    return None


def _corrupt(path: Path, pos: int, records: int, what: str) -> UsageError:
    return UsageError(f"events file {path} is corrupt at byte {pos} (record {records + 1}: {what}); the "
                      f"{records} record(s) before it are intact, what follows cannot be trusted",
                      hint=f"mv {path} {path.parent}/corrupt-{path.name}   (then plot the rest; a copy from "
                           "the training machine may be whole)")


def _warn(message: str) -> None:
    print(f"cosyext plot: {message}", file=sys.stderr)


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
    return _load(_labels(paths), metric)


def _load(labelled: list[tuple[str, Path]], metric: str) -> list[Curve]:
    curves: list[Curve] = []
    for label, d in labelled:
        scalars = read_scalars(d)
        found = curves_for(label, scalars, metric)
        if not found:
            tags = ", ".join(sorted(scalars)) or "none"
            raise UsageError(f"{d} has no TRAIN/{metric} or CV/{metric} scalars (tags: {tags})",
                             hint="cosyext plot RUN_DIR --metric loss   (tags come from upstream's log_per_step)")
        curves.extend(found)
    return curves


def check_output(out: Path, event_dirs: Sequence[Path]) -> None:
    """UsageError when writing ``out`` would replace an input events file (as named, through a symlinked
    folder, as a link to it or a hard link), create a file the next plot reads as one, or cannot happen."""
    out = Path(out)
    hint = "write the plot elsewhere, e.g. -o loss.png"
    if out.is_dir():
        raise UsageError(f"-o {out} is a directory; name the file to write", hint=f"-o {out / 'loss.png'}")
    where = entry(out)
    for directory in event_dirs:
        for events in sorted(Path(directory).glob(EVENT_GLOB)):
            if where in (entry(events), events.resolve()):
                why = f"is the input events file {events}"
            elif out.is_symlink() and out.resolve() == events.resolve():
                why = f"is a link to the input events file {events}"
            elif where.is_file() and not where.is_symlink() and same_file(where, events):
                why = f"is a hard link to the input events file {events}"
            else:
                continue
            raise UsageError(f"-o {out} {why}: plot never writes over what it reads", hint=hint)
    if where.name.startswith(EVENT_PREFIX) and where.parent in {Path(d).resolve() for d in event_dirs}:
        raise UsageError(f"-o {out} would be read as an events file of {where.parent} by the next plot", hint=hint)
    check_writable(where.parent, f"-o {out}", hint)


def _write_atomic(out: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` beside ``out``, then rename over it: never half a file, never through a link at ``out``."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename or out}: {exc.strerror or exc}",
                         hint="write the plot elsewhere, e.g. -o loss.png") from exc
    return out


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
    return _write_atomic(Path(out), lambda tmp: fig.savefig(tmp, format="png"))


def plot(paths: Sequence[Path], out: Path | None, *, fmt: str = "png", per: str = "step", metric: str = "loss",
         title: str | None = None) -> str | Path:
    """Write the PNG (returns its path) or the CSV (to `out`, or returned as text when `out` is None)."""
    if per not in ("step", "epoch"):
        raise UsageError(f"--per must be 'step' or 'epoch', got {per!r}")
    if fmt != "csv" and out is None:
        raise UsageError("a PNG needs an output file", hint="cosyext plot RUN_DIR -o loss.png")
    labelled = _labels(paths)
    if out is not None:
        check_output(Path(out), [d for _, d in labelled])
    curves = _load(labelled, metric)
    if per == "epoch":
        curves = [per_epoch(c) for c in curves]
    if fmt == "csv":
        text = to_csv(curves, metric)
        if out is None:
            return text
        return _write_atomic(Path(out), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return render_png(curves, Path(out), per=per, metric=metric, title=title)
