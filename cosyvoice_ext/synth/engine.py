"""Upstream's inference instance (CosyVoice2 / CosyVoice3) driven with fixes applied from outside;
upstream's files are never edited. What breaks otherwise (measured, DESIGN.md 12a):

- **Reproducible sampling.** The LLM runs in a thread that samples every speech token with
  `Tensor.multinomial` from torch's global RNG, which the vocoder (HiFT's noise, main thread) draws
  from at the same time while streaming: the interleaving, hence the audio, changed run to run.
  The sampler gets its own `torch.Generator`: upstream's own sampling function (`ras_sampling`
  from the yaml, untouched) runs with a thread-local default generator, so its `multinomial` draws
  come from that generator and the global RNG belongs to the vocoder alone. Both start from the seed.
- **Streaming state.** ace7c47's `CosyVoice2Model.tts` doubles `self.token_hop_len` per chunk (25
  -> 100) and never resets it, so each stream request chunked differently from the previous one;
  it is reset to the constructed value before every request.
- **Errors in the LLM thread.** `llm_job` runs in a `threading.Thread`; an exception there was
  printed and lost: offline calls returned the audio of the tokens made so far, stream calls looped
  forever waiting for the end flag. The job is wrapped: the exception is kept, the end flag set,
  and it is raised in the caller as a :class:`SynthesisError`.
- **Writes.** `save_spkinfo()` writes spk2info.pt into the model dir; it is replaced by a refusal.
  (`load_vllm`, `load_trt` and `load_jit`, which write into the model dir too, are never asked for.)

Requests on one instance run one at a time (a lock): upstream's per-instance state allows no more.
"""

from __future__ import annotations

import inspect
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import CosyextError

_tls = threading.local()
_hook_lock = threading.Lock()
_hooked = False


class SynthesisError(CosyextError):
    """Upstream's synthesis failed (in its LLM thread or its vocoder); the message names the upstream error."""


def _install_multinomial_hook() -> None:
    """`Tensor.multinomial` takes the thread's sampler generator when one is set (and only then)."""
    global _hooked
    import torch

    with _hook_lock:
        if _hooked:
            return
        original = torch.Tensor.multinomial

        def multinomial(self, *args, **kwargs):
            gen = getattr(_tls, "generator", None)
            if gen is not None and kwargs.get("generator") is None:
                kwargs["generator"] = gen
                _tls.draws += 1
            return original(self, *args, **kwargs)

        multinomial.__wrapped__ = original
        torch.Tensor.multinomial = multinomial
        _hooked = True


class SeededSampler:
    """Upstream's sampling callable (the yaml's `sampling`), drawing from its own generator."""

    def __init__(self, inner: Any) -> None:
        import torch

        _install_multinomial_hook()
        self.inner = inner
        self.generator = torch.Generator()
        #: draws that went to our generator; 0 after a request: the sampler used another RNG
        self.draws = 0

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))
        self.draws = 0

    def __call__(self, *args, **kwargs):
        _tls.generator, _tls.draws = self.generator, 0
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.draws += _tls.draws
            _tls.generator = None


class Engine:
    """One upstream inference instance with the fixes of the module docstring."""

    def __init__(self, cv: Any) -> None:
        self.cv = cv
        model = cv.model
        self.model = model
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._hop = getattr(model, "token_hop_len", None)
        self.sampler = SeededSampler(model.llm.sampling)
        model.llm.sampling = self.sampler
        self._wrap_llm_job()
        cv.save_spkinfo = _refuse_save
        #: the 2025 API takes the prompt as a 16 kHz tensor (prompt_speech_16k), the 2026 one a path
        self.prompt_as_tensor = "prompt_speech_16k" in inspect.signature(cv.inference_zero_shot).parameters

    def _wrap_llm_job(self) -> None:
        model, original, errors = self.model, self.model.llm_job, self._errors

        def llm_job(*args, **kwargs):
            try:
                original(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)
                uuid = kwargs.get("uuid", args[-1] if args else None)
                model.llm_end_dict[uuid] = True  # ends a stream request's wait loop

        model.llm_job = llm_job

    def run(self, method: str, *args: Any, seed: int, stream: bool, **kwargs: Any) -> np.ndarray:
        """Call `cv.<method>(*args, stream=..., **kwargs)` and return the whole audio (float32, mono)."""
        chunks = list(self.chunks(method, *args, seed=seed, stream=stream, **kwargs))
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def chunks(self, method: str, *args: Any, seed: int, stream: bool, **kwargs: Any) -> Iterator[np.ndarray]:
        """The audio as upstream yields it (one chunk offline, several when streaming), float32 mono each.

        The instance stays locked and the global RNGs seeded until the generator is exhausted or closed."""
        with self._lock, _seeded(seed):
            self._errors.clear()
            self.sampler.seed(seed)
            if self._hop is not None:
                self.model.token_hop_len = self._hop
            produced = False
            try:
                for out in getattr(self.cv, method)(*args, stream=stream, **kwargs):
                    self._raise_thread_error()
                    produced = True
                    yield out["tts_speech"].detach().cpu().float().numpy().reshape(-1)
            except SynthesisError:
                raise
            except Exception as exc:  # the vocoder failing on what the dead LLM thread left, or its own error
                self._raise_thread_error()
                raise SynthesisError(f"upstream's {type(self.cv).__name__}.{method} failed: {type(exc).__name__}: "
                                     f"{exc}", hint=_HINT) from exc
            self._raise_thread_error()
            if not produced:
                raise SynthesisError(f"upstream's {type(self.cv).__name__}.{method} produced no audio", hint=_HINT)

    def _raise_thread_error(self) -> None:
        if self._errors:
            exc = self._errors[0]
            raise SynthesisError(f"upstream's LLM thread failed: {type(exc).__name__}: {exc}", hint=_HINT) from exc


_HINT = "cosyext -v synth ... shows upstream's traceback"


def _refuse_save(*args: Any, **kwargs: Any) -> None:
    raise SynthesisError("save_spkinfo() would write spk2info.pt into the model dir: synth never writes there",
                         hint="register speakers with cosyext export --serve ... --speaker-name NAME")


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """The global RNGs (the vocoder's) start from `seed`, as upstream's set_all_random_seed does, and are
    given back to the caller afterwards."""
    import torch

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)
