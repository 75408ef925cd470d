"""Speech tokens and stored audio that line up the way upstream's flow needs them.

At upstream ace7c47 `processor.compute_fbank(num_frames=960)` pads the 24 kHz waveform with zeros
up to a whole number of tokens (960 samples = one 25 Hz token) before the mel (hop 480: two frames
per token), so `speech_feat` has exactly ``2 * ceil(samples_24k / 960)`` frames. Both flows
(CosyVoice2's `CausalMaskedDiffWithXvec` and CosyVoice3's DiT) upsample the stored `speech_token`
by 2 and compare it with that mel frame by frame: any other token count is a size mismatch
("956 vs 954"). The 2025 pin (44316c34) trimmed both to the shorter one instead (mel frames
``floor(samples_24k / 480)``), so data that satisfies the strict rule trains there too: nothing is
trimmed when the 24 kHz length is whole tokens (any 24 kHz recording), else the last token.

The real tokenizers give about one token per 640 samples at 16 kHz, rounded their own way, so
`prepare` makes the rule hold by construction (:func:`plan`):

- more tokens than ``ceil(samples_24k / 960)``: the surplus tokens (they describe no audio) go;
- fewer: the stored audio is cut, at the file's own rate, to the longest length whose 24 kHz
  length is at most ``tokens * 960`` (the partial last token, under 40 ms for a tokenizer that
  rounds down);
- more than MAX_SLACK tokens off either way is not rounding: the utterance is refused (Misaligned).

`samples_24k` is what upstream's pipeline computes: the file's frame count, resampled by
torchaudio's `Resample` to 24 kHz unless the file is at 24 kHz already (:func:`resampled_length`).
"""

from __future__ import annotations

import dataclasses
import math

#: upstream's `sample_rate` (the `resample` step's target) for CosyVoice2 and CosyVoice3
SAMPLE_RATE = 24000
#: samples per speech token at SAMPLE_RATE: 25 tokens/s (`compute_fbank: num_frames: 960`)
SAMPLES_PER_TOKEN = 960
#: mel frames per token (hop 480 at 24 kHz; `token_mel_ratio: 2`)
MEL_FRAMES_PER_TOKEN = 2
#: tokens a tokenizer may be off by before the utterance is refused rather than fixed: one from rounding,
#: one more for a tokenizer that counts a partial last frame; beyond that it is not a 25 Hz tokenizer
MAX_SLACK = 2


class Misaligned(ValueError):
    """The token count is too far from the audio's length to be rounding."""


def resampled_length(frames: int, orig_rate: int, new_rate: int = SAMPLE_RATE) -> int:
    """The length torchaudio's resampling gives for `frames` samples (none when the rates match).

    torchaudio computes ``ceil(new * frames / orig)`` (rates divided by their gcd) through a float32
    tensor, which rounds some lengths down by one; the same expression is used here so the answer
    is the one upstream's pipeline sees, not the exact rational one.
    """
    if orig_rate == new_rate:
        return int(frames)
    import torch

    gcd = math.gcd(int(orig_rate), int(new_rate))
    orig, new = int(orig_rate) // gcd, int(new_rate) // gcd
    return int(torch.ceil(torch.as_tensor(new * int(frames) / orig)).long())


def tokens_for(samples_24k: int) -> int:
    """How many speech tokens upstream's compute_fbank(num_frames=960) makes room for."""
    return -(-int(samples_24k) // SAMPLES_PER_TOKEN)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to store for one utterance: the first `frames` frames of the file, and `tokens`."""

    frames: int
    tokens: list[int]
    #: frames the file has
    total_frames: int
    #: tokens the tokenizer returned
    total_tokens: int

    @property
    def cut(self) -> bool:
        return self.frames < self.total_frames


def plan(total_frames: int, rate: int, tokens: list[int]) -> Plan:
    """Frames to keep and tokens to store so that ``len(tokens) == ceil(samples_24k / 960)``.

    Cuts less than MAX_SLACK tokens' worth of audio or drops at most MAX_SLACK surplus tokens; never
    pads either. Raises Misaligned beyond that.
    """
    room = tokens_for(resampled_length(total_frames, rate))
    if not tokens or abs(len(tokens) - room) > MAX_SLACK:
        raise Misaligned(f"the speech tokenizer returned {len(tokens)} tokens for {total_frames / rate:.2f} s of "
                         f"audio; upstream's flow needs {room} ({SAMPLE_RATE // SAMPLES_PER_TOKEN} per second)")
    if len(tokens) >= room:
        return Plan(total_frames, list(tokens[:room]), total_frames, len(tokens))
    limit = len(tokens) * SAMPLES_PER_TOKEN
    # resampled_length is non-decreasing in frames: step down from an estimate just above the answer
    frames = min(total_frames, limit * rate // SAMPLE_RATE + 2)
    while frames > 0 and resampled_length(frames, rate) > limit:
        frames -= 1
    assert tokens_for(resampled_length(frames, rate)) == len(tokens), (frames, rate, len(tokens))
    return Plan(frames, list(tokens), total_frames, len(tokens))
