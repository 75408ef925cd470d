"""Built-in eval metrics (`cosyext eval`): speaker similarity with campplus and resemblyzer,
WER/CER with Whisper, DNSMOS. Registered through the same hook as a third party's metrics
(docs/eval.md); importing this module loads no model (every manager imports the built-ins)."""

from __future__ import annotations

from typing import Callable

from ..hookspecs import hookimpl


@hookimpl
def cosyext_register_metrics(register: Callable[..., None]) -> None:
    from ..eval.asr import ErrorRate
    from ..eval.mos import Dnsmos
    from ..eval.speaker import CampplusSimilarity, ResemblyzerSimilarity

    register(CampplusSimilarity())
    register(ResemblyzerSimilarity())
    register(ErrorRate("wer", "en"))
    register(ErrorRate("cer", "zh"))
    register(Dnsmos())
