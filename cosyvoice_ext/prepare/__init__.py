"""`cosyext prepare`: raw recordings (a folder of wav + transcript pairs, or a Kaldi data dir) to the
parquet shards and `data.list` files upstream CosyVoice's training reads.

The stages are separate modules so each can be tested on its own: `sources` finds utterances,
`audio` decodes and checks them, `family_choice` picks CosyVoice2 or CosyVoice3 (tokenizer, instruct),
`features` runs the pretrained campplus / speech-tokenizer ONNX models, `align` makes stored audio
and speech tokens line up as upstream's flow requires, `state` remembers finished work for `--resume`,
`shards` writes the upstream format, and `pipeline` ties them together.

Long recordings without transcripts go first through `raw`: `slicing` (ffmpeg decoding, silero-vad,
cutting on pauses), `loudness` (pyloudnorm), `transcribe` (Whisper and the editable
transcripts.tsv); `report` writes report.html/.md with a training recommendation.
"""

from __future__ import annotations

from .pipeline import PrepareOptions, PrepareResult, prepare

__all__ = ["PrepareOptions", "PrepareResult", "prepare"]
