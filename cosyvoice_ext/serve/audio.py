"""Response audio: 16-bit mono WAV and raw PCM written here, MP3 by ffmpeg (the formats of OpenAI's speech
API that a CPU box can make; `pcm` is signed 16-bit little-endian at the model's rate, 24 kHz for
CosyVoice2/3, as OpenAI's).

Float samples become 16-bit as ``round(clip(x, -1, 1) * 32767)``: what a client decodes equals the
synthesiser's float output quantised that way, exactly, so tests compare bit for bit.
A streamed WAV has 0xFFFFFFFF in its two size fields (the length is not known yet), which players
and OpenAI's own streamed WAVs use.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator

import numpy as np

from ..errors import EnvironmentProblem

FORMATS = ("wav", "pcm", "mp3")
CONTENT_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "mp3": "audio/mpeg"}
_UNKNOWN = 0xFFFFFFFF


def to_int16(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio.astype(np.float32, copy=False), -1.0, 1.0) * 32767.0).astype("<i2")


def wav_header(sample_rate: int, samples: int | None) -> bytes:
    """RIFF/WAVE header of 16-bit mono PCM; `samples` None: a stream of unknown length."""
    data = _UNKNOWN if samples is None else samples * 2
    riff = _UNKNOWN if samples is None else 36 + data
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate,
                                                                         sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data))


def ffmpeg() -> str | None:
    return shutil.which("ffmpeg")


def _ffmpeg_args(sample_rate: int) -> list[str]:
    exe = ffmpeg()
    if exe is None:
        raise EnvironmentProblem("mp3 needs ffmpeg, which is not installed here", hint="ask for wav or pcm")
    return [exe, "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar", str(sample_rate), "-ac", "1",
            "-i", "pipe:0", "-f", "mp3", "pipe:1"]


def encode(audio: np.ndarray, fmt: str, sample_rate: int) -> bytes:
    """The whole response body for `fmt`."""
    pcm = to_int16(audio).tobytes()
    if fmt == "pcm":
        return pcm
    if fmt == "wav":
        return wav_header(sample_rate, len(pcm) // 2) + pcm
    res = subprocess.run(_ffmpeg_args(sample_rate), input=pcm, capture_output=True)
    if res.returncode != 0:
        raise EnvironmentProblem(f"ffmpeg could not encode mp3: {res.stderr.decode(errors='replace').strip()[-300:]}",
                                 hint="ask for wav or pcm")
    return res.stdout


async def stream(chunks: AsyncIterator[np.ndarray], fmt: str, sample_rate: int) -> AsyncIterator[bytes]:
    """Encoded bytes as the float chunks come (MP3 through one ffmpeg process fed as they arrive)."""
    if fmt in ("wav", "pcm"):
        if fmt == "wav":
            yield wav_header(sample_rate, None)
        async for chunk in chunks:
            yield to_int16(chunk).tobytes()
        return
    proc = await asyncio.create_subprocess_exec(*_ffmpeg_args(sample_rate), stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)

    async def feed() -> None:
        try:
            async for chunk in chunks:
                proc.stdin.write(to_int16(chunk).tobytes())
                await proc.stdin.drain()
        finally:
            proc.stdin.close()

    feeder = asyncio.create_task(feed())
    try:
        while True:
            data = await proc.stdout.read(8192)
            if not data:
                break
            yield data
        await feeder
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        feeder.cancel()
