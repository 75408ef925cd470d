"""Speaker embeddings and speech tokens from the pretrained model's ONNX files, computed the way
upstream's tools/extract_embedding.py and tools/extract_speech_token.py compute them (16 kHz;
80-bin Kaldi fbank minus its mean for campplus; 128-bin Whisper log-mel for the tokenizer), on CPU.

The tokenizer file is the family's: `speech_tokenizer_v2.onnx` (CosyVoice2) or
`speech_tokenizer_v3.onnx` (CosyVoice3). At ace7c47 upstream feeds both the same way (its
extract_speech_token.py is byte-identical to the 2025 pin's and serves both recipes; the inference
front end's `_extract_speech_token` is shared too): 128-bin log-mel `[1, 128, T]` float32 and its
frame count `[1]` int32, by input position, 25 tokens per second out.

Torch, torchaudio, whisper and onnxruntime are imported only when features are actually computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from .. import family as fam_mod
from ..errors import EnvironmentProblem, UsageError
from .audio import Decoded

EMBED_DIM = 192
FEATURE_RATE = 16000
CAMPPLUS = "campplus.onnx"
#: CosyVoice2's tokenizer (kept for callers of the 2025 API; the family names the one used)
SPEECH_TOKENIZER = fam_mod.COSYVOICE2.speech_tokenizer


class FeatureError(Exception):
    """A model could not process one utterance (that utterance is skipped and reported)."""


class Extractor(Protocol):
    identity: str
    #: the speech tokenizer file used ("" without features)
    speech_tokenizer: str

    def extract(self, audio: Decoded) -> tuple[list[float], list[int]]:
        """(utt_embedding of EMBED_DIM floats, speech tokens)."""


class NoFeatures:
    """Zeros and no tokens, for `--no-features` (data inspection, lint): not trainable."""

    identity = "none"
    speech_tokenizer = ""

    def extract(self, audio: Decoded) -> tuple[list[float], list[int]]:
        return [0.0] * EMBED_DIM, []


def _file_identity(path: Path) -> str:
    st = path.stat()
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


#: where users get each family's pretrained directory
DOWNLOAD_HINT = {
    "cosyvoice2": "modelscope download --model iic/CosyVoice2-0.5B --local_dir pretrained_models/CosyVoice2-0.5B",
    "cosyvoice3": "modelscope download --model FunAudioLLM/Fun-CosyVoice3-0.5B-2512 "
                  "--local_dir pretrained_models/Fun-CosyVoice3-0.5B",
}


class OnnxFeatures:
    """campplus + the family's speech tokenizer sessions from a pretrained directory."""

    def __init__(self, pretrained: Path, *, family: fam_mod.Family = fam_mod.COSYVOICE2, threads: int = 1) -> None:
        pretrained = Path(pretrained).expanduser().resolve()
        self.speech_tokenizer = tokenizer_name = family.speech_tokenizer
        missing = [n for n in (CAMPPLUS, tokenizer_name) if not (pretrained / n).is_file()]
        if missing:
            raise UsageError(
                f"{pretrained} has no {' or '.join(missing)}: --pretrained must be a {family.inference_class} "
                "model directory",
                hint=DOWNLOAD_HINT.get(family.name, "pass the pretrained model directory"))
        try:
            import onnxruntime
        except ImportError as exc:
            raise EnvironmentProblem("onnxruntime is not installed (needed to run campplus and the speech tokenizer)",
                                     hint="pip install onnxruntime") from exc
        option = onnxruntime.SessionOptions()
        option.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        option.intra_op_num_threads = threads
        # idle ORT workers otherwise spin and starve torch's fbank/mel between runs (measured ~8x on 2 cores)
        option.add_session_config_entry("session.intra_op.allow_spinning", "0")
        option.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        try:
            self._campplus = onnxruntime.InferenceSession(str(pretrained / CAMPPLUS), sess_options=option,
                                                          providers=providers)
            self._tokenizer = onnxruntime.InferenceSession(str(pretrained / tokenizer_name), sess_options=option,
                                                           providers=providers)
        except Exception as exc:
            raise UsageError(f"cannot load the ONNX models in {pretrained}: {exc}",
                             hint="re-download the pretrained model directory") from exc
        if len(self._tokenizer.get_inputs()) < 2:
            raise UsageError(f"{pretrained / tokenizer_name} takes {len(self._tokenizer.get_inputs())} input(s); "
                             "the speech tokenizer takes (feats, feats_length)")
        self.identity = f"{_file_identity(pretrained / CAMPPLUS)};{_file_identity(pretrained / tokenizer_name)}"
        self._resamplers: dict[int, object] = {}

    def _to_16k(self, audio: Decoded):
        import torch
        import torchaudio

        wav = torch.from_numpy(np.ascontiguousarray(audio.samples)).unsqueeze(0)
        if audio.sample_rate == FEATURE_RATE:
            return wav
        if audio.sample_rate not in self._resamplers:
            self._resamplers[audio.sample_rate] = torchaudio.transforms.Resample(orig_freq=audio.sample_rate,
                                                                                 new_freq=FEATURE_RATE)
        return self._resamplers[audio.sample_rate](wav)

    def extract(self, audio: Decoded) -> tuple[list[float], list[int]]:
        import torchaudio.compliance.kaldi as kaldi
        import whisper

        wav = self._to_16k(audio)
        try:
            fbank = kaldi.fbank(wav, num_mel_bins=80, dither=0, sample_frequency=FEATURE_RATE)
            fbank = fbank - fbank.mean(dim=0, keepdim=True)
            emb = self._campplus.run(None, {self._campplus.get_inputs()[0].name: fbank.unsqueeze(0).numpy()})[0]
            mel = whisper.log_mel_spectrogram(wav, n_mels=128)
            inputs = self._tokenizer.get_inputs()
            tokens = self._tokenizer.run(None, {inputs[0].name: mel.numpy(),
                                                inputs[1].name: np.array([mel.shape[2]], dtype=np.int32)})[0]
        except Exception as exc:  # onnxruntime/torch raise many types for one bad input
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FeatureError(f"feature extraction failed: {first}") from exc
        emb = np.asarray(emb, dtype=np.float32).ravel()
        if emb.size != EMBED_DIM:
            raise UsageError(f"{CAMPPLUS} returned {emb.size} values per utterance, expected {EMBED_DIM}",
                             hint="--pretrained must be a CosyVoice2 or CosyVoice3 model directory")
        if not np.isfinite(emb).all():
            raise FeatureError("speaker embedding is not finite")
        token_list = [int(t) for t in np.asarray(tokens).ravel()]
        if not token_list:
            raise FeatureError("the speech tokenizer returned no tokens")
        return [float(x) for x in emb], token_list


def open_extractor(pretrained: Path | None, no_features: bool,
                   family: fam_mod.Family = fam_mod.COSYVOICE2) -> Extractor:
    if pretrained is not None:
        return OnnxFeatures(pretrained, family=family)
    if no_features:
        return NoFeatures()
    raise UsageError(
        f"speaker embeddings and speech tokens need the pretrained {family.inference_class} model: training reads "
        "utt_embedding, spk_embedding and speech_token from every sample",
        hint=f"cosyext prepare SRC DEST --pretrained {example_pretrained(family)}   "
             "(or add --no-features to write zeros for data inspection only)")


def example_pretrained(family: fam_mod.Family) -> str:
    """Where upstream's README puts the family's pretrained directory (for hints)."""
    return {"cosyvoice3": "pretrained_models/Fun-CosyVoice3-0.5B"}.get(family.name, "pretrained_models/CosyVoice2-0.5B")
