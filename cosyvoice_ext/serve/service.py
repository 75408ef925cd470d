"""The voices of a `cosyext serve` process and the one thread that synthesises with them.

**One synthesis at a time, first come first served.** Every request, and every change to the
models (loading a voice, adding or removing an adapter), is a job on one FIFO queue run by one
thread (:class:`Worker`). That is what keeps weights from mixing: a request activates its voice's
adapters and runs to its last chunk before the next job touches any model. It is also what keeps
audio reproducible across processes: upstream's vocoder and flow draw from torch's process-wide
RNG, which `Engine` seeds per request; two syntheses running at once (even on two different
model instances) would draw from it in an order that depends on timing. Scale out with more
processes (one per core or GPU), not threads.

**Reload without losing requests.** `reload()` reads the config again; new and changed voices are
loaded by a job on the same queue (requests queued before it run first, on the old voices); then
the voice table is swapped and, in the same step under the table's lock, a clean-up job that
removes the adapters of dropped voices is queued. Any request that saw the old table was queued
before that job, so its adapters are still there when it runs; requests after the swap see the
new table. Unchanged voices (same entry, same files) are kept as they are.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import CosyextError, UsageError
from ..synth import loader
from . import config as cfg
from .models import Emit, Models, Voice

Progress = Callable[[str], None]


class Worker:
    """One thread running jobs in the order they were submitted."""

    def __init__(self, name: str = "cosyext-serve-synthesis") -> None:
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> Future:
        fut: Future = Future()
        self._q.put((fut, fn))
        return fut

    def call(self, fn: Callable[[], Any]) -> Any:
        return self.submit(fn).result()

    @property
    def depth(self) -> int:
        return self._q.qsize()

    def stop(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            fut, fn = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the job
                fut.set_exception(exc)


class VoiceNotFound(UsageError):
    """A request named a voice that is not served (unknown, inactive or skipped)."""

    def __init__(self, message: str, available: list[str]) -> None:
        super().__init__(message, hint=f"one of: {', '.join(available) or 'none'} (GET /v1/voices)")
        self.available = available


class QueueFull(CosyextError):
    """More requests are waiting than --max-queue allows."""


@dataclass(frozen=True)
class Table:
    """What the server speaks with right now (replaced whole on reload, never edited)."""

    config: cfg.ServeConfig | None = None
    voices: dict[str, Voice] = field(default_factory=dict)
    fingerprints: dict[str, tuple] = field(default_factory=dict)
    inactive: dict[str, cfg.VoiceSpec] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def default(self) -> str | None:
        return self.config.default_speaker if self.config else None


@dataclass(frozen=True)
class ReloadReport:
    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]
    problems: dict[str, str]

    def as_dict(self) -> dict:
        return {"added": self.added, "removed": self.removed, "changed": self.changed, "unchanged": self.unchanged,
                "skipped": self.problems}


class Service:
    """Config + models + worker: what the HTTP layer calls."""

    def __init__(self, config_path: Path, upstream: Path, *, root: Path | None = None, strict: bool = False,
                 pretrained: Path | None = None, lock_path: Path | None = None, max_queue: int = 256,
                 max_chars: int = 4096, verbose: bool = False, progress: Progress = lambda _: None) -> None:
        from ..upstream import lockfile

        self.config_path = Path(config_path).expanduser().absolute()
        self.root = Path(root).expanduser().resolve() if root is not None else None
        self.strict, self.pretrained, self.max_queue, self.max_chars = strict, pretrained, max_queue, max_chars
        self.progress = progress
        self.tree = loader.verify(upstream, lockfile.load(Path(lock_path)) if lock_path else None)
        self.models = Models(self.tree, root=self.root, verbose=verbose, progress=progress)
        self.worker = Worker()
        self.table = Table()
        self._lock = threading.Lock()  # the table and the queue order change together
        self._reload_lock = threading.Lock()
        self.started = time.time()

    # --- voices ---------------------------------------------------------------------------------------

    def read_config(self) -> cfg.ServeConfig:
        return cfg.load(self.config_path, root=self.root, pretrained=self.pretrained)

    def start(self) -> ReloadReport:
        """Load every active voice; with `strict`, a UsageError naming every problem instead of a partial start."""
        return self.reload()

    def reload(self) -> ReloadReport:
        """Re-read the config; load new and changed voices, drop removed ones (see the module docstring)."""
        with self._reload_lock:
            new = self.read_config()
            if self.strict and new.problems:  # before anything is loaded
                raise cfg.refusal(self.config_path, new.problems)
            old = self.table
            built = self.worker.call(lambda: self._build(new, old))
            table, loaded = built
            if self.strict and table.problems:
                self.worker.call(lambda: self._clean_up(loaded, old))
                raise cfg.refusal(self.config_path, table.problems)
            keep = set(table.voices.values())
            dropped = [v for v in old.voices.values() if v not in keep]
            with self._lock:
                self.table = table
                self.worker.submit(lambda: self._clean_up(dropped, table))
            report = ReloadReport(
                added=sorted(n for n in table.voices if n not in old.voices),
                removed=sorted(n for n in old.voices if n not in table.voices),
                changed=sorted(n for n in table.voices if n in old.voices and table.voices[n] is not old.voices[n]),
                unchanged=sorted(n for n in table.voices if old.voices.get(n) is table.voices[n]),
                problems=dict(table.problems))
            return report

    def _build(self, new: cfg.ServeConfig, old: Table) -> tuple[Table, list[Voice]]:
        """On the worker: the new table, and the voices loaded for it (to unload if it is refused)."""
        voices: dict[str, Voice] = {}
        prints: dict[str, tuple] = {}
        problems = dict(new.problems)
        inactive: dict[str, cfg.VoiceSpec] = {}
        loaded: list[Voice] = []
        for name, spec in new.voices.items():
            if not spec.active:
                inactive[name] = spec
                continue
            fp = spec.fingerprint()
            if name in old.voices and old.fingerprints.get(name) == fp:
                voices[name], prints[name] = old.voices[name], fp
                continue
            try:
                voice = self.models.load(spec)
            except CosyextError as exc:
                problems[name] = str(exc) + (f" (next: {exc.hint})" if exc.hint else "")
                continue
            except Exception as exc:  # noqa: BLE001 - one broken voice must not stop the others
                problems[name] = f"{type(exc).__name__}: {exc}"
                continue
            voices[name], prints[name] = voice, fp
            loaded.append(voice)
            self.progress(f"voice {name}: {_describe(voice)}")
        default = new.default_speaker
        if default is not None and default not in voices:
            if default in inactive:
                why = "it is inactive"
            elif default in problems:
                why = problems[default]
            else:
                why = "no such voice in the config"
            problems.setdefault(f"default_speaker {default}", f"not available: {why}")
        for name, why in problems.items():
            self.progress(f"skipped {name}: {why}")
        return Table(new, voices, prints, inactive, problems), loaded

    def _clean_up(self, dropped: list[Voice], table: Table) -> None:
        for voice in dropped:
            self.models.unload(voice)
        keep = {v.instance.model_dir for v in table.voices.values()}
        for d in self.models.drop_unused(keep):
            self.progress(f"released the model of {d}")

    # --- requests -------------------------------------------------------------------------------------

    def resolve(self, name: str | None, table: Table | None = None) -> Voice:
        table = table or self.table
        available = sorted(table.voices)
        if name is None:
            if table.default is None:
                raise VoiceNotFound("no voice given and the config names no default_speaker", available)
            name = table.default
            if name not in table.voices:
                raise VoiceNotFound(f"no voice given, and the default speaker {name!r} is not available "
                                    f"({table.problems.get(f'default_speaker {name}', '')})", available)
        voice = table.voices.get(name)
        if voice is None:
            why = ("is inactive (\"active\": false)" if name in table.inactive else
                   f"was skipped: {table.problems[name]}" if name in table.problems else "is not in the config")
            raise VoiceNotFound(f"voice {name!r} {why}", available)
        return voice

    def submit(self, name: str | None, text: str, *, seed: int, stream: bool, speed: float,
               emit: Emit | None = None) -> tuple[Voice, Future]:
        """Queue a synthesis; the future gives the whole float32 audio (chunks also go to `emit`)."""
        with self._lock:
            voice = self.resolve(name)
            if self.worker.depth >= self.max_queue:
                raise QueueFull(f"{self.worker.depth} requests are waiting (--max-queue {self.max_queue})",
                                hint="retry later, or run more server processes")
            fut = self.worker.submit(lambda: voice.instance.synthesize(voice, text, seed=seed, stream=stream,
                                                                       speed=speed, emit=emit))
        return voice, fut

    def synthesize(self, name: str | None, text: str, *, seed: int = 0, stream: bool = False,
                   speed: float = 1.0) -> np.ndarray:
        return self.submit(name, text, seed=seed, stream=stream, speed=speed)[1].result()

    def describe(self) -> dict:
        """GET /v1/voices."""
        table = self.table
        out = []
        for name, voice in table.voices.items():
            out.append({**_spec_doc(voice.spec), "status": "ready", "family": voice.instance.family.name,
                        "sample_rate": voice.instance.sample_rate})
        for name, spec in table.inactive.items():
            out.append({**_spec_doc(spec), "status": "inactive"})
        for name, why in table.problems.items():
            if name.startswith("default_speaker "):
                continue
            out.append({"name": name, "status": "skipped", "reason": why})
        out.sort(key=lambda d: d["name"])
        default = table.default
        return {"default_speaker": default if default in table.voices else None, "voices": out,
                "problems": table.problems}

    def health(self) -> dict:
        return {"status": "ok", "voices": len(self.table.voices), "models": len(self.models.instances),
                "queued": self.worker.depth, "uptime_s": round(time.time() - self.started, 1),
                "upstream": self.tree.commit.label}

    def close(self) -> None:
        self.worker.stop()


def _spec_doc(spec: cfg.VoiceSpec) -> dict:
    return {"name": spec.name, "type": spec.type, "description": spec.description, "active": spec.active}


def _describe(voice: Voice) -> str:
    spec = voice.spec
    what = (f"lora on {spec.model_dir}" if spec.type == "lora" else f"merged model {spec.model_dir}")
    adapters = "; ".join(voice.described) or "no adapters"
    return f"{what} ({adapters}; speaker {'embedding ' + str(spec.embedding) if spec.embedding else spec.spk_id})"


__all__ = ["QueueFull", "ReloadReport", "Service", "VoiceNotFound", "Worker"]
