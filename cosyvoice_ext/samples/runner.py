"""Rank 0's sampler: upstream's inference class built once from the pretrained dir, the just-saved
checkpoint put into its copy of the trained model, a few fixed CV sentences spoken, written, logged
to TensorBoard and scored with `cosyvoice_ext.eval`'s metrics.

The training model is never touched: the inference instance holds its own modules, and the weights
come from the checkpoint file train.py just wrote (an adapter: LoRA injected once, then only its
tensors copied in; a full checkpoint: loaded strictly). Every global RNG (python, numpy, torch CPU
and CUDA) is saved before and restored after, and building upstream's class re-seeds them through
its yaml's ``__set_seed`` lines: without that, sampling would change the training that follows.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, CosyextError
from . import results
from .config import PREFIX, WHERE, Settings

log = logging.getLogger("cosyvoice_ext.samples")


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Give every global RNG back as it was: training continues exactly as without samples."""
    import torch

    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


@contextlib.contextmanager
def quiet_upstream(root: Path) -> Iterator[None]:
    """Upstream's per-sentence INFO lines ("synthesis text ...") stay out of the training log while sampling
    (synth's own quiet mode would filter train.py's lines for the rest of the run)."""
    from ..synth.loader import UpstreamChatter

    flt = UpstreamChatter(root)
    logger = logging.getLogger()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


def training_tree() -> Path:
    """The upstream tree this training process imported `cosyvoice` from (train.py's own tree)."""
    import sys

    mod = sys.modules.get("cosyvoice")
    if mod is None:
        raise ConfigError("cosyvoice is not imported in this process: samples run inside upstream's train.py",
                          key=WHERE)
    first = Path(mod.__file__).parent if getattr(mod, "__file__", None) else Path(next(iter(mod.__path__)))
    return first.resolve().parent


@dataclass
class Row:
    checkpoint: str
    epoch: int
    step: int
    metrics: dict[str, float | None] = field(default_factory=dict)
    utterances: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped_for_time: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    since_previous: float | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        overhead = (self.seconds.get("total", 0.0) / self.since_previous) if self.since_previous else None
        return {"checkpoint": f"{self.checkpoint}.pt", "name": self.checkpoint, "epoch": self.epoch, "step": self.step,
                "metrics": self.metrics, "utterances": self.utterances, "skipped_for_time": self.skipped_for_time,
                "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
                "seconds_since_previous_checkpoint": None if self.since_previous is None else round(self.since_previous, 4),
                "overhead": None if overhead is None else round(overhead, 4), "error": self.error,
                "time": time.time()}


class Sampler:
    """Built once on rank 0 (at the `init` checkpoint); :meth:`sample` per checkpoint."""

    def __init__(self, settings: Settings, *, model: str, model_dir: Path, cv_data: Path, tensorboard_dir: str | None,
                 upstream: Path) -> None:
        from ..eval import metric as metric_mod
        from ..eval import score as score_mod
        from ..eval.audio import write_wav
        from ..eval.data import choose, read_list
        from ..eval.metric import Context
        from ..synth import ModelSource, Speaker, Synthesizer, ZeroShot

        t0 = time.perf_counter()
        self.settings, self.model, self.model_dir, self.upstream = settings, model, Path(model_dir), upstream
        self.dir = results.samples_dir(model_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        pretrained = Path(settings.pretrained)

        utts = read_list(cv_data)
        evalset = choose(utts, speaker=settings.speaker, prompt_utt=settings.prompt_utt,
                         need_prompt=settings.spk_id is None)
        rng = random.Random(settings.seed)
        chosen = rng.sample(range(len(evalset.items)), min(settings.sentences, len(evalset.items)))
        self.items = [evalset.items[i] for i in sorted(chosen)]
        self.speaker = evalset.speaker
        if settings.spk_id is not None:
            self.voice: Any = Speaker(settings.spk_id)
            self.prompt = None
        else:
            self.prompt = evalset.prompt
            prompt_wav = self.dir / "prompt.wav"
            write_wav(prompt_wav, self.prompt.clip)
            self.voice = ZeroShot(prompt_wav, self.prompt.text)

        # verbose: synth's quiet mode would filter train.py's own log lines (synth keeps the root handlers' levels)
        self.syn = Synthesizer(upstream, ModelSource.pretrained(pretrained), verbose=True)
        self.syn.check_voice(self.voice)
        self.sample_rate = self.syn.sample_rate
        self.t_build = time.perf_counter() - t0

        # metrics: set up once (scorer models, the target speaker's reference embeddings)
        t1 = time.perf_counter()
        found = metric_mod.collect()
        selected = metric_mod.select(found, list(settings.metrics)) if settings.metrics else {}
        context = Context(references=[u.clip for u in evalset.items], texts=[(u.text, u.lang) for u in self.items],
                          pretrained=pretrained, asr=settings.asr, threads=1)
        self.runs = score_mod.setup(selected, context, lambda s: log.info("cosyext samples: %s", s))
        for run in self.runs:
            if run.unavailable:
                raise ConfigError(f"metric {run.name} cannot run: {run.unavailable}", key=f"{WHERE}.metrics",
                                  hint="fix what it needs (asr:, the pretrained dir's campplus.onnx, a package), "
                                       "or leave the metric out")
        self.t_metrics = time.perf_counter() - t1
        self._score_all = score_mod.score_all
        self._write_wav = write_wav
        self._injected = False
        self._mts_keys: set[str] | None = None
        self._writer = None
        self._tb_dir = tensorboard_dir
        self._last_end: float | None = None
        self.sampled = 0
        self.seen = 0

    # -- weights ---------------------------------------------------------------------------------------------

    def _module(self):
        # upstream's CosyVoice2/3 instance: its CosyVoice2Model holds the llm and flow modules
        return getattr(self.syn._cv.model, self.model)  # noqa: SLF001 - synth has no public accessor yet

    def load_checkpoint(self, path: Path) -> None:
        """Put the checkpoint train.py just wrote into the inference instance's copy of the trained model."""
        from ..lora.inject import load_exact, lora_state
        from ..synth import adapters

        loaded = adapters.load(path, self.model)
        module = self._module()
        if loaded.adapter is None or not self._injected:
            adapters.check_base(loaded, Path(self.settings.pretrained) / f"{self.model}.pt")
            adapters.apply(module, loaded)
            if loaded.adapter is not None:
                self._injected = True
                self._mts_keys = set(loaded.adapter.modules_to_save)
            return
        ad = loaded.adapter
        load_exact(module, ad.modules_to_save, f"adapter {path} (modules_to_save)", expected=self._mts_keys)
        load_exact(module, ad.lora, f"adapter {path}", expected=set(lora_state(module)))

    # -- one checkpoint ----------------------------------------------------------------------------------------

    def due(self, model_name: str) -> bool:
        """Whether this checkpoint is sampled (`every: N` counts checkpoints after init)."""
        if model_name == "init":
            return self.settings.at_init
        self.seen += 1
        return self.seen % self.settings.every == 0

    def sample(self, model_name: str, info_dict: dict) -> dict[str, Any]:
        """Speak the sentences with the checkpoint's weights, within the time budget; return the row."""
        from ..eval.audio import Clip
        from ..eval.metric import Sample
        from ..eval.run import wav_name

        start = time.perf_counter()
        since = None if self._last_end is None else start - self._last_end
        row = Row(model_name, int(info_dict.get("epoch", -1)), int(info_dict.get("step", 0)), since_previous=since)
        out = self.dir / model_name
        out.mkdir(parents=True, exist_ok=True)
        t_load = t_synth = t_score = 0.0
        try:
            t = time.perf_counter()
            self.load_checkpoint(Path(info_dict["model_dir"]) / f"{model_name}.pt")
            t_load = time.perf_counter() - t
            slowest = 0.0
            for i, u in enumerate(self.items):
                elapsed = time.perf_counter() - start
                if i > 0 and elapsed + slowest > self.settings.max_seconds:
                    row.skipped_for_time = [v.utt for v in self.items[i:]]
                    break
                t = time.perf_counter()
                with quiet_upstream(self.upstream):
                    audio = self.syn.tts(u.text, self.voice, seed=self.settings.seed + i, stream=self.settings.stream)
                dt_synth = time.perf_counter() - t
                clip = Clip(audio, self.sample_rate, u.utt)
                wav = out / wav_name(u.utt)
                self._write_wav(wav, clip)
                self._add_audio(f"samples/audio/{u.utt}", clip, row.step + 1)
                t = time.perf_counter()
                self._score_all(self.runs, [Sample(u.utt, u.text, u.lang, model_name, clip)], lambda s: None)
                dt_score = time.perf_counter() - t
                t_synth, t_score = t_synth + dt_synth, t_score + dt_score
                slowest = max(slowest, dt_synth + dt_score)
                entry: dict[str, Any] = {"text": u.text, "wav": str(wav.relative_to(self.model_dir)),
                                         "seconds": round(clip.seconds, 3), "synthesis_seconds": round(dt_synth, 4),
                                         "seed": self.settings.seed + i, "scores": {}, "details": {}, "skipped": {}}
                for run in self.runs:
                    score = run.scores.get(model_name, {}).get(u.utt)
                    if score is not None:
                        entry["scores"][PREFIX + run.name] = score.value
                        if score.detail:  # what the ASR heard, for instance
                            entry["details"][PREFIX + run.name] = score.detail
                    elif u.utt in run.skipped.get(model_name, {}):
                        entry["skipped"][PREFIX + run.name] = run.skipped[model_name][u.utt]
                    elif run.unavailable:
                        entry["skipped"][PREFIX + run.name] = run.unavailable
                row.utterances[u.utt] = entry
            for run in self.runs:
                values = [s.value for s in run.scores.get(model_name, {}).values()]
                row.metrics[PREFIX + run.name] = float(np.mean(values)) if values else None
        except CosyextError as exc:  # a checkpoint that cannot speak must not end a long training run
            row.error = f"{type(exc).__name__}: {exc}"
            log.error("cosyext samples: %s: %s%s", model_name, exc, f" (next: {exc.hint})" if exc.hint else "")
        except Exception as exc:  # noqa: BLE001 - upstream's own failure: recorded, logged with its traceback
            row.error = f"{type(exc).__name__}: {exc}"
            log.exception("cosyext samples: %s: sampling failed", model_name)
        total = time.perf_counter() - start
        row.seconds = {"load": t_load, "synthesis": t_synth, "metrics": t_score, "total": total}
        for name, v in row.metrics.items():
            if v is not None:
                self._add_scalar(name, v, row.step + 1)
        self._add_scalar("samples/seconds", total, row.step + 1)
        self._flush()
        doc = row.to_json()
        results.append_row(self.model_dir, doc)
        self._last_end = time.perf_counter()
        self.sampled += 1
        scores = ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} -" for k, v in row.metrics.items())
        share = f"; {doc['overhead']:.0%} of the {since:.1f} s since the previous checkpoint" if since else ""
        log.info("cosyext samples: %s: %d sentence(s) in %.1f s (synthesis %.1f s, metrics %.1f s)%s%s%s",
                 model_name, len(row.utterances), total, t_synth, t_score, share, f"; {scores}" if scores else "",
                 f"; {len(row.skipped_for_time)} skipped for max_seconds" if row.skipped_for_time else "")
        return doc

    def mark(self) -> None:
        """A checkpoint that was not sampled ends here: the next row's training time counts from now."""
        self._last_end = time.perf_counter()

    # -- TensorBoard -------------------------------------------------------------------------------------------

    def _tb(self):
        if self._writer is None and self._tb_dir:
            from torch.utils.tensorboard import SummaryWriter

            # a second writer beside train.py's: its own events file in the same directory
            self._writer = SummaryWriter(self._tb_dir, filename_suffix=".cosyext-samples")
        return self._writer

    def _add_audio(self, tag: str, clip, step: int) -> None:
        writer = self._tb()
        if writer is not None:
            import torch

            samples = torch.from_numpy(np.clip(clip.samples, -1.0, 1.0)).unsqueeze(0)
            writer.add_audio(tag, samples, step, sample_rate=clip.sample_rate)

    def _add_scalar(self, tag: str, value: float, step: int) -> None:
        writer = self._tb()
        if writer is not None:
            writer.add_scalar(tag, value, step)

    def _flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
