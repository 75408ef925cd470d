"""The data report: `DEST/report.html` (PNGs embedded) and `DEST/report.md` (PNGs in `DEST/report/`).

What a user needs to judge a dataset before spending GPU hours on it: how long the utterances are,
how much was kept and why the rest was dropped, whether text length follows audio length (a bad
transcript or a bad cut stands out), whether every utterance sounds like its speaker (a second
voice in a recording stands out in the speaker-embedding spread), and where to start training.

Speaker embeddings: the campplus `utt_embedding`s the features stage computed (with `--pretrained`),
else resemblyzer's (its GE2E weights ship in the wheel). An utterance is flagged when its cosine
similarity to its speaker's mean is below `median - max(0.1, 4 * 1.4826 * MAD)` of that speaker.

The recommendation is a starting point derived from `cosyvoice_ext.memory.model` (the largest
`max_frames_in_batch` whose estimated LoRA step fits 90% of the GPU) and simple data-size rules for
rank and epochs, stated as such. Deterministic: the same data gives the same bytes (no timestamps).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .state import write_atomic

HTML_NAME = "report.html"
MD_NAME = "report.md"
PNG_DIR = "report"
MEL_FRAMES_PER_SEC = 50  # upstream's 24 kHz mel: hop 480
UPSTREAM_MAX_FRAMES = 2000  # the recipes' max_frames_in_batch


@dataclasses.dataclass(frozen=True)
class Item:
    """One utterance or segment: kept (status 'kept') or dropped (status = the reason)."""

    utt: str
    spk: str
    seconds: float | None
    text: str
    status: str
    path: str = ""


@dataclasses.dataclass(frozen=True)
class Recommendation:
    minutes: float
    gpu_gib: float
    family: str
    lora_rank: int
    epochs: int
    max_frames: dict[str, int]
    steps_per_epoch: dict[str, int]


def recommend(minutes: float, gpu_gib: float, family: str) -> Recommendation:
    """Rank by data size (8 below 15 min, 16 below 1 h, 32 above), epochs so the run sees ~5 h of audio
    (5..50), max_frames_in_batch: what the memory model fits in 90% of the card (LoRA, no levers), capped at
    4x the recipes' 2000."""
    from ..memory.model import max_frames_fitting

    rank = 8 if minutes < 15 else 16 if minutes < 60 else 32
    epochs = int(min(50, max(5, math.ceil(300 / max(minutes, 1e-6)))))
    frames = {m: min(max_frames_fitting(m, gpu_gib, lora=True, family=family), 4 * UPSTREAM_MAX_FRAMES)
              for m in ("llm", "flow")}
    total = minutes * 60 * MEL_FRAMES_PER_SEC
    steps = {m: (math.ceil(total / f) if f else 0) for m, f in frames.items()}
    return Recommendation(round(minutes, 2), gpu_gib, family, rank, epochs, frames, steps)


def outliers(emb: dict[str, np.ndarray], spk_of: dict[str, str]) -> tuple[dict[str, float], set[str]]:
    """(cosine similarity of each utterance to its speaker's mean, flagged utterances)."""
    sims: dict[str, float] = {}
    flagged: set[str] = set()
    by_spk: dict[str, list[str]] = defaultdict(list)
    for u in sorted(emb):
        by_spk[spk_of[u]].append(u)
    for spk, utts in by_spk.items():
        m = np.stack([emb[u] / (np.linalg.norm(emb[u]) or 1.0) for u in utts])
        c = m.mean(axis=0)
        c = c / (np.linalg.norm(c) or 1.0)
        s = m @ c
        for u, v in zip(utts, s):
            sims[u] = round(float(v), 4)
        if len(utts) >= 3:
            med = float(np.median(s))
            mad = float(np.median(np.abs(s - med)))
            bound = med - max(0.1, 4 * 1.4826 * mad)
            flagged.update(u for u, v in zip(utts, s) if v < bound)
    return sims, flagged


def resemblyzer_embeddings(paths: dict[str, str]) -> dict[str, np.ndarray]:
    """GE2E embeddings (weights from the resemblyzer wheel) of each kept utterance's audio."""
    import soundfile
    from resemblyzer import VoiceEncoder, preprocess_wav

    enc = VoiceEncoder(device="cpu", verbose=False)
    out = {}
    for u, p in sorted(paths.items()):
        audio, rate = soundfile.read(p, dtype="float32", always_2d=True)
        wav = preprocess_wav(audio.mean(axis=1), source_sr=rate)
        if len(wav) >= 1600:
            out[u] = np.asarray(enc.embed_utterance(wav), dtype=np.float64)
    return out


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _figures(items: list[Item], sims: dict[str, float], flagged: set[str]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = [i for i in items if i.status == "kept" and i.seconds is not None]
    dropped = [i for i in items if i.status != "kept" and i.seconds is not None]
    figs: dict[str, bytes] = {}
    fig, ax = plt.subplots(figsize=(6, 3))
    top = max([i.seconds for i in kept + dropped] + [1.0])
    bins = np.linspace(0, math.ceil(top), min(40, max(5, math.ceil(top))) + 1)
    ax.hist([[i.seconds for i in kept], [i.seconds for i in dropped]], bins=bins, stacked=True,
            label=["kept", "dropped"], color=["tab:blue", "tab:gray"])
    ax.set_xlabel("seconds")
    ax.set_ylabel("utterances")
    ax.legend()
    ax.set_title("Durations")
    figs["durations.png"] = _png(fig)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.scatter([i.seconds for i in kept], [len(i.text) for i in kept], s=10)
    ax.set_xlabel("seconds")
    ax.set_ylabel("characters")
    ax.set_title("Text length vs audio length (kept)")
    figs["text_vs_audio.png"] = _png(fig)
    if sims:
        fig, ax = plt.subplots(figsize=(6, 3))
        names = sorted(sims)
        ax.scatter(range(len(names)), [sims[u] for u in names], s=12,
                   c=["tab:red" if u in flagged else "tab:blue" for u in names])
        ax.set_xlabel("utterance (sorted by id)")
        ax.set_ylabel("cosine to speaker mean")
        ax.set_title("Speaker-embedding spread (red: outliers)")
        figs["speaker_spread.png"] = _png(fig)
    return figs


def write(dest: Path, items: list[Item], embeddings: dict[str, np.ndarray], embedding_source: str,
          rec: Recommendation) -> dict[str, object]:
    """Write report.html, report.md and report/*.png; returns the numbers (also in prepare_summary.json)."""
    spk_of = {i.utt: i.spk for i in items}
    sims, flagged = outliers(embeddings, spk_of) if embeddings else ({}, set())
    figs = _figures(items, sims, flagged)
    kept = [i for i in items if i.status == "kept"]
    by_reason: dict[str, list[Item]] = defaultdict(list)
    for i in items:
        if i.status != "kept":
            by_reason[_reason_kind(i.status)].append(i)
    minutes = lambda group: round(sum(i.seconds or 0.0 for i in group) / 60, 2)  # noqa: E731
    rows = [("kept", len(kept), minutes(kept))] + [(r, len(g), minutes(g)) for r, g in sorted(by_reason.items())]
    rate = [len(i.text) / i.seconds for i in kept if i.seconds]
    numbers = {"kept": {"utterances": len(kept), "minutes": minutes(kept)},
               "dropped": {r: {"utterances": n, "minutes": m} for r, n, m in rows[1:]},
               "speaker_outliers": sorted(flagged), "embeddings": embedding_source,
               "recommendation": dataclasses.asdict(rec)}
    md = ["# Data report", "", "## Kept and dropped", "", "| | utterances | minutes |", "|---|---|---|"]
    md += [f"| {r} | {n} | {m} |" for r, n, m in rows]
    md += ["", "Every dropped utterance and its reason: prepare_report.tsv (and transcripts.tsv for cut segments).",
           "", "## Durations", "", f"![durations]({PNG_DIR}/durations.png)", "",
           "## Text length vs audio length", "",
           f"Characters per second (kept): median {np.median(rate):.1f}" if rate else "No kept utterances.",
           "", f"![text vs audio]({PNG_DIR}/text_vs_audio.png)", "", "## Speaker-embedding spread", "",
           f"Embeddings: {embedding_source}. Outliers (cosine to their speaker's mean far below the rest; "
           "a second voice in a recording shows up here):"]
    md += [f"- {u} ({spk_of[u]}): {sims[u]:.3f}" for u in sorted(flagged)] or ["- none"]
    if sims:
        md += ["", f"![speaker spread]({PNG_DIR}/speaker_spread.png)"]
    md += ["", "## Where to start training (a starting point, not a tuned result)", "",
           f"For {rec.minutes} minutes of kept audio on a {rec.gpu_gib:g} GiB GPU ({rec.family}):", "",
           f"- LoRA rank: {rec.lora_rank} (8 below 15 min of data, 16 below 1 h, 32 above)",
           f"- epochs: {rec.epochs} (about 5 h of audio seen in total, 5 to 50)"]
    for m in ("llm", "flow"):
        md.append(f"- {m}: max_frames_in_batch {rec.max_frames[m]} ({rec.steps_per_epoch[m]} steps per epoch); "
                  "the largest that cosyvoice_ext.memory.model estimates fits 90% of the card with LoRA and no "
                  "memory levers (capped at 8000)")
    md += ["", "Check the fit with `cosyext lint CONFIG --gpu-memory "
           f"{rec.gpu_gib:g}`; lower max_frames_in_batch if a step runs out of memory.", ""]
    text = "\n".join(md)
    png_dir = dest / PNG_DIR
    png_dir.mkdir(parents=True, exist_ok=True)
    for name, data in figs.items():
        write_atomic(png_dir / name, data)
    write_atomic(dest / MD_NAME, text.encode("utf-8"))
    write_atomic(dest / HTML_NAME, _html(text, figs).encode("utf-8"))
    return numbers


def _reason_kind(reason: str) -> str:
    """Group reasons by their kind ('too short: 1.2 s ...' -> 'too short')."""
    return reason.split(":")[0].split(" (")[0].strip()


def _html(md: str, figs: dict[str, bytes]) -> str:
    """A self-contained page: the markdown's lines as HTML, every image inline as a data URI."""
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>Data report</title>"
           "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 8px}</style></head><body>"]
    in_list = in_table = False
    for line in md.splitlines():
        if in_list and not line.startswith("- "):
            out.append("</ul>")
            in_list = False
        if in_table and not line.startswith("|"):
            out.append("</table>")
            in_table = False
        if line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            name = line.split("(", 1)[1].rstrip(")").split("/")[-1]
            data = base64.b64encode(figs[name]).decode("ascii")
            out.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= {"-"}:
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
        elif line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            out.append(f"<p>{html.escape(line)}</p>")
    out.append("</ul>" if in_list else "")
    out.append("</table>" if in_table else "")
    out.append("</body></html>\n")
    return "\n".join(o for o in out if o)
