"""Predicted MOS with DNSMOS (P.835 SIG/BAK/OVRL + P.808), the ONNX models the `speechmos` wheel ships.

CV3-Eval reports DNSMOS; we report OVRL as the value and keep SIG, BAK and P.808 beside it. DNSMOS
scores 9.01 s windows and tiles shorter audio up to one window: below DNSMOS_MIN_SECONDS the tiled
clip is mostly repetition, so such a clip is not scored (and says so).
"""

from __future__ import annotations

import os

import numpy as np

from .audio import SCORER_RATE
from .metric import Context, MetricUnavailable, Sample, Score

DNSMOS_MIN_SECONDS = 1.0


class Dnsmos:
    name = "dnsmos"
    label = "DNSMOS OVRL"
    higher_is_better = True

    def setup(self, context: Context) -> None:
        model = context.cache.get("dnsmos")
        if model is None:
            model = context.cache["dnsmos"] = load_dnsmos(context.threads)
        self.model = model

    def score(self, sample: Sample) -> Score:
        if sample.clip.seconds < DNSMOS_MIN_SECONDS:
            raise MetricUnavailable(f"less than the {DNSMOS_MIN_SECONDS:g} s of audio DNSMOS is run on")
        return Score(*dnsmos_scores(self.model, sample.clip.at(SCORER_RATE)))


def load_dnsmos(threads: int = 1):
    """speechmos' DNSMOS object with sessions we open (its own use every core and spin)."""
    try:
        import onnxruntime
        from speechmos import dnsmos
    except ImportError as exc:
        raise MetricUnavailable(f"speechmos is not installed or does not import ({exc}); pip install speechmos") from exc
    root = os.path.dirname(os.path.abspath(dnsmos.__file__))
    option = onnxruntime.SessionOptions()
    option.intra_op_num_threads = threads
    option.add_session_config_entry("session.intra_op.allow_spinning", "0")
    option.log_severity_level = 3

    def session(*parts: str):
        return onnxruntime.InferenceSession(os.path.join(root, *parts), sess_options=option,
                                            providers=["CPUExecutionProvider"])

    model = dnsmos.DNSMOS.__new__(dnsmos.DNSMOS)
    model.primary_model_path = os.path.join(root, "dnsmos_models", "sig_bak_ovr.onnx")
    model.onnx_sess = session("dnsmos_models", "sig_bak_ovr.onnx")
    model.p808_onnx_sess = session("dnsmos_models", "model_v8.onnx")
    return model


def dnsmos_scores(model, wav16k: np.ndarray) -> tuple[float, dict]:
    out = model(np.clip(wav16k, -1.0, 1.0).astype(np.float32), SCORER_RATE, False)
    detail = {k: float(out[f"{k}_mos"]) for k in ("sig", "bak", "p808")}
    return float(out["ovrl_mos"]), detail
