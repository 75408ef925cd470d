"""Speaker similarity: cosine between a synthesised clip's embedding and the target speaker's.

The target speaker is the centroid of the L2-normalised embeddings of their real recordings (the
CV utterances' `audio_data`), normalised again, so one odd reference recording cannot decide it.
Two embedding models: campplus (the pretrained dir's `campplus.onnx`, the model CosyVoice itself
conditions on, fed as upstream's front end feeds it: 16 kHz, 80-bin Kaldi fbank minus its mean),
and resemblyzer (a GE2E encoder trained independently of CosyVoice, weights in its wheel), so a
model cannot look better merely by matching its own conditioning network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .audio import SCORER_RATE, Clip
from .metric import Context, MetricUnavailable, Sample, Score

CAMPPLUS = "campplus.onnx"
#: shortest clip campplus is asked to embed (Kaldi fbank frames are 25 ms; below this it is noise)
CAMPPLUS_MIN_SECONDS = 0.5
#: resemblyzer embeds 1.6 s windows; shorter speech (after its silence trimming) gets zero-padded
RESEMBLYZER_MIN_SECONDS = 1.6


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).ravel()
    norm = np.linalg.norm(v)
    if not np.isfinite(norm) or norm == 0:
        raise MetricUnavailable("the embedding is zero or not finite")
    return v / norm


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(unit(a), unit(b)))


def centroid(embeddings: list[np.ndarray]) -> np.ndarray:
    return unit(np.mean([unit(e) for e in embeddings], axis=0))


class _Similarity:
    """Shared part: embed the references once in setup, then score = cosine to their centroid."""

    higher_is_better = True
    min_seconds = 0.0

    def __init__(self) -> None:
        self.reference: np.ndarray | None = None
        self.references_used = 0

    def load(self, context: Context) -> None:
        raise NotImplementedError

    def embed(self, clip: Clip) -> np.ndarray:
        raise NotImplementedError

    def setup(self, context: Context) -> None:
        if not context.references:
            raise MetricUnavailable("no real recordings of the target speaker to compare with")
        self.load(context)
        embeddings, why = [], []
        for clip in context.references:
            try:
                embeddings.append(self.embed(clip))
            except MetricUnavailable as exc:
                why.append(str(exc))
        if not embeddings:
            raise MetricUnavailable(f"none of the {len(context.references)} reference recordings could be "
                                    f"embedded ({why[0]})")
        self.reference = centroid(embeddings)
        self.references_used = len(embeddings)

    def score(self, sample: Sample) -> Score:
        assert self.reference is not None, "setup() first"
        return Score(cosine(self.embed(sample.clip), self.reference))

    def _check_length(self, seconds: float, what: str = "audio") -> None:
        # the reason names the limit, not the clip's length: eval counts utterances per reason
        if seconds < self.min_seconds:
            raise MetricUnavailable(f"less than the {self.min_seconds:g} s of {what} "
                                    f"{self.name} needs")  # type: ignore[attr-defined]


def open_campplus(path: Path, threads: int = 1) -> Any:
    import onnxruntime

    option = onnxruntime.SessionOptions()
    option.intra_op_num_threads = threads
    option.add_session_config_entry("session.intra_op.allow_spinning", "0")
    option.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), sess_options=option, providers=["CPUExecutionProvider"])


def campplus_embedding(session: Any, wav16k: np.ndarray) -> np.ndarray:
    """Upstream's `CosyVoiceFrontEnd._extract_spk_embedding` on 16 kHz samples."""
    import torch
    import torchaudio.compliance.kaldi as kaldi

    feat = kaldi.fbank(torch.from_numpy(np.ascontiguousarray(wav16k)).unsqueeze(0), num_mel_bins=80, dither=0,
                       sample_frequency=SCORER_RATE)
    feat = feat - feat.mean(dim=0, keepdim=True)
    out = session.run(None, {session.get_inputs()[0].name: feat.unsqueeze(0).numpy()})[0]
    return np.asarray(out, dtype=np.float64).ravel()


class CampplusSimilarity(_Similarity):
    name = "sim_campplus"
    label = "SIM campplus"
    min_seconds = CAMPPLUS_MIN_SECONDS

    def load(self, context: Context) -> None:
        if context.pretrained is None:
            raise MetricUnavailable("no pretrained directory (its campplus.onnx is the embedding model)")
        path = Path(context.pretrained) / CAMPPLUS
        if not path.is_file():
            raise MetricUnavailable(f"{path} does not exist")
        try:
            self.session = open_campplus(path, context.threads)
        except ImportError as exc:
            raise MetricUnavailable("onnxruntime is not installed (pip install onnxruntime)") from exc
        except Exception as exc:
            raise MetricUnavailable(f"cannot load {path}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}") from exc

    def embed(self, clip: Clip) -> np.ndarray:
        self._check_length(clip.seconds)
        return campplus_embedding(self.session, clip.at(SCORER_RATE))


class ResemblyzerSimilarity(_Similarity):
    name = "sim_resemblyzer"
    label = "SIM resemblyzer"
    min_seconds = RESEMBLYZER_MIN_SECONDS

    def load(self, context: Context) -> None:
        encoder = context.cache.get("resemblyzer")
        if encoder is None:
            try:
                import warnings

                with warnings.catch_warnings():  # webrtcvad imports pkg_resources, which warns on import
                    warnings.simplefilter("ignore")
                    from resemblyzer import VoiceEncoder
            except ImportError as exc:
                raise MetricUnavailable(f"resemblyzer is not installed or does not import ({exc}); "
                                        "pip install resemblyzer") from exc
            encoder = context.cache["resemblyzer"] = VoiceEncoder("cpu", verbose=False)
        self.encoder = encoder

    def embed(self, clip: Clip) -> np.ndarray:
        from resemblyzer import preprocess_wav

        wav = preprocess_wav(clip.at(SCORER_RATE))  # volume normalisation + webrtcvad silence trimming
        self._check_length(len(wav) / SCORER_RATE, "speech (after silence trimming)")
        return np.asarray(self.encoder.embed_utterance(wav), dtype=np.float64)
