"""Random-weight Whisper checkpoints in openai-whisper's file format, for tests and benchmarks:
`--asr PATH` loads them exactly as it loads a downloaded model, offline. They transcribe noise
into arbitrary tokens; what they test is the path (load, resample, log-mel, decode, score)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

#: a few-MB model (the vocabulary embedding dominates); openai-whisper's base, small and large-v3 shapes
#: for real-size cost (benchmarks/bench_eval.py)
SHAPES = {
    "tiny": dict(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1, n_vocab=51865,
                 n_text_ctx=64, n_text_state=32, n_text_head=2, n_text_layer=1),
    "base": dict(n_mels=80, n_audio_ctx=1500, n_audio_state=512, n_audio_head=8, n_audio_layer=6, n_vocab=51865,
                 n_text_ctx=448, n_text_state=512, n_text_head=8, n_text_layer=6),
    "small": dict(n_mels=80, n_audio_ctx=1500, n_audio_state=768, n_audio_head=12, n_audio_layer=12, n_vocab=51865,
                  n_text_ctx=448, n_text_state=768, n_text_head=12, n_text_layer=12),
    "large-v3": dict(n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
                     n_vocab=51866, n_text_ctx=448, n_text_state=1280, n_text_head=20, n_text_layer=32),
}


def make_whisper_checkpoint(path: Path, shape: str = "tiny", seed: int = 0) -> Path:
    """Write ``{"dims", "model_state_dict"}`` (what `whisper.load_model(path)` reads) with random weights."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(**SHAPES[shape])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Whisper(dims)
        # openai-whisper allocates the text decoder's positional embedding with torch.empty (a trained
        # checkpoint overwrites it): left as allocated it holds whatever memory held (1e25, NaN logits) and
        # differs run to run, so the same seed would not give the same model
        torch.nn.init.normal_(model.decoder.positional_embedding, std=0.02)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path
