"""`cosyext prepare` from long recordings: minutes of audio prepared per minute of wall time, per stage, on CPU.

Builds MINUTES of real speech from upstream's `asset/*.wav` (cross_lingual_prompt.wav and
zero_shot_prompt.wav, taken from the git bundle in $COSYEXT_UPSTREAM_MIRROR) joined with seeded
1.0-1.5 s silences into one FLAC, then times each stage on it, side by side in one process with one
torch thread (OMP_NUM_THREADS=1):

  decode    ffmpeg -> mono float32 at 24 kHz
  vad       24 -> 16 kHz resampling and silero-vad's per-frame speech probability
  slicing   planning the cuts, cutting, writing the 16-bit WAV segments
  loudness  pyloudnorm measurement + gain per segment
  features  the stand-in campplus + speech tokenizer (kB-sized ONNX models; the real ones cost more)
  asr       a tiny random-weight Whisper on --asr-segments segments, extrapolated (real Whisper models
            are far slower: this row only shows the per-segment overhead of the path)

and one full `prepare()` (tiny Whisper, stand-in features, report) for the end-to-end wall time.
Prints, per stage, seconds, minutes of audio per wall minute, and the time for 1 h of audio by
linear extrapolation (every stage is linear in audio length), names the slowest stage, and
compares the total without ASR to the 10 minutes per hour target.

usage: OMP_NUM_THREADS=1 python benchmarks/bench_prepare.py [--minutes 12] [--asr-segments 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ASSETS = ("cross_lingual_prompt.wav", "zero_shot_prompt.wav")
REV = "ace7c47"


def assets(work: Path) -> list[Path]:
    """The real recordings, read from the upstream bundle (git show; nothing checked out)."""
    bundle = Path(os.environ.get("COSYEXT_UPSTREAM_MIRROR", "/work/shared/upstream")) / "CosyVoice.bundle"
    if not bundle.is_file():
        sys.exit(f"no {bundle}: set COSYEXT_UPSTREAM_MIRROR to the folder holding CosyVoice.bundle")
    bare = work / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(bundle), str(bare)], check=True)
    out = []
    for name in ASSETS:
        data = subprocess.run(["git", "--git-dir", str(bare), "show", f"{REV}:asset/{name}"], check=True,
                              capture_output=True).stdout
        (work / name).write_bytes(data)
        out.append(work / name)
    return out


def long_file(work: Path, minutes: float) -> Path:
    import soundfile

    from cosyvoice_ext.prepare.slicing import decode_ffmpeg

    rate = 24000
    clips = [decode_ffmpeg(p, rate) for p in assets(work)]
    rng = np.random.default_rng(0)
    parts, total, i = [], 0, 0
    while total < minutes * 60 * rate:
        clip = clips[i % len(clips)]
        gap = np.zeros(int(rng.uniform(1.0, 1.5) * rate), dtype=np.float32)
        parts += [clip, gap]
        total += len(clip) + len(gap)
        i += 1
    path = work / "long.flac"
    soundfile.write(path, np.concatenate(parts), rate)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=12.0, help="audio to build and prepare (default 12)")
    ap.add_argument("--asr-segments", type=int, default=8, help="segments the tiny Whisper transcribes (default 8)")
    ap.add_argument("--skip-full", action="store_true", help="per-stage timings only")
    args = ap.parse_args()

    import soundfile
    import torch

    torch.set_num_threads(1)
    from cosyvoice_ext.prepare import PrepareOptions, prepare
    from cosyvoice_ext.prepare import audio as audio_mod
    from cosyvoice_ext.prepare import loudness, raw, slicing
    from cosyvoice_ext.prepare import transcribe as asr_mod
    from cosyvoice_ext.prepare.features import OnnxFeatures
    from cosyvoice_ext.tiny.standin import make_pretrained_standin

    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        work = Path(tmp)
        src = long_file(work, args.minutes)
        audio_min = soundfile.info(src).duration / 60
        pretrained = make_pretrained_standin(work / "pretrained")
        from cosyvoice_ext.eval.tiny import make_whisper_checkpoint

        ckpt = make_whisper_checkpoint(work / "tiny.pt")
        t: dict[str, float] = {}

        s = time.perf_counter()
        audio = slicing.decode_ffmpeg(src, raw.SEGMENT_RATE)
        t["decode"] = time.perf_counter() - s

        slicing.load_vad()  # model load is a one-off, not per minute of audio
        s = time.perf_counter()
        probs = slicing.speech_probs(raw._to16k(audio))
        t["vad"] = time.perf_counter() - s

        # the VAD model prepare uses (ONNX) against the package's JIT model, on the same 3 minutes, side by side
        from silero_vad import load_silero_vad

        clip16 = raw._to16k(audio[: 180 * raw.SEGMENT_RATE])
        n_frames = len(clip16) // slicing.VAD_FRAME
        frames = torch.from_numpy(clip16[: n_frames * slicing.VAD_FRAME].copy()).view(n_frames, slicing.VAD_FRAME)
        vad_cmp = {}
        for kind, model in (("onnx", slicing.load_vad()), ("jit", load_silero_vad(onnx=False))):
            model.reset_states()
            s = time.perf_counter()
            with torch.inference_mode():
                probs_k = np.array([float(model(frames[i:i + 1], slicing.VAD_RATE)) for i in range(n_frames)])
            vad_cmp[kind] = (time.perf_counter() - s, probs_k)
            model.reset_states()

        seg_dir = work / "segments"
        seg_dir.mkdir()
        s = time.perf_counter()
        cuts = slicing.plan(probs, len(audio) / raw.SEGMENT_RATE, slicing.SliceOptions())
        pieces = [audio[int(c.start * raw.SEGMENT_RATE):int(c.end * raw.SEGMENT_RATE)] for c in cuts]
        for i, p in enumerate(pieces):
            raw._write_if_changed(seg_dir / f"s_{i:05d}.wav", raw._wav_bytes(p, raw.SEGMENT_RATE))
        t["slicing"] = time.perf_counter() - s

        s = time.perf_counter()
        for p in pieces:
            loudness.normalise(p, raw.SEGMENT_RATE, -20.0)
        t["loudness"] = time.perf_counter() - s

        feats = OnnxFeatures(pretrained)
        paths = sorted(seg_dir.glob("*.wav"))
        feats.extract(audio_mod.check(paths[0], min_sec=0.1, max_sec=60)[0])  # warm the sessions
        s = time.perf_counter()
        for p in paths:
            decoded, _ = audio_mod.check(p, min_sec=0.1, max_sec=60)
            feats.extract(decoded)
        t["features"] = time.perf_counter() - s

        model = asr_mod.load(str(ckpt))
        n = min(args.asr_segments, len(pieces))
        s = time.perf_counter()
        for p in pieces[:n]:
            asr_mod.transcribe(model, raw._to16k(p), "en")
        asr_s = time.perf_counter() - s
        asr_audio = sum(len(p) for p in pieces[:n]) / raw.SEGMENT_RATE / 60
        t["asr (tiny, extrapolated)"] = asr_s * audio_min / asr_audio

        print(f"{audio_min:.1f} min of real speech ({ASSETS[0]} + {ASSETS[1]} from upstream {REV}, 1.0-1.5 s "
              f"silences), {len(cuts)} segments; {os.cpu_count()} CPUs, 1 torch thread")
        print(f"{'stage':28} {'seconds':>8} {'audio min / wall min':>21} {'1 h of audio takes':>19}")
        for stage, sec in t.items():
            print(f"{stage:28} {sec:8.2f} {audio_min / (sec / 60):21.0f} {sec * 60 / audio_min / 60:16.2f} min")
        no_asr = sum(v for k, v in t.items() if not k.startswith("asr"))
        slowest = max((k for k in t if not k.startswith("asr")), key=t.get)
        print(f"{'total without ASR':28} {no_asr:8.2f} {audio_min / (no_asr / 60):21.0f} "
              f"{no_asr * 60 / audio_min / 60:16.2f} min")
        print(f"slowest stage without ASR: {slowest} ({100 * t[slowest] / no_asr:.0f}% of the time)")
        (jit_s, jit_p), (onnx_s, onnx_p) = vad_cmp["jit"], vad_cmp["onnx"]
        print(f"silero-vad on the same 3 min: ONNX {onnx_s:.2f} s, JIT {jit_s:.2f} s: ONNX {jit_s / onnx_s:.1f}x "
              f"faster; probabilities differ by at most {np.abs(jit_p - onnx_p).max():.1e}")
        print(f"1 h of audio without ASR: {no_asr * 60 / audio_min / 60:.1f} min (target: under 10), extrapolated "
              f"linearly from {audio_min:.1f} min")
        if not args.skip_full:
            s = time.perf_counter()
            res = prepare(PrepareOptions(src=src, dest=work / "out", pretrained=pretrained, asr=str(ckpt),
                                         min_asr_logprob=-1e9, max_no_speech=1.0, max_compression_ratio=1e9,
                                         progress=False))
            full = time.perf_counter() - s
            print(f"full prepare() (tiny Whisper on all {res.segments} segments, stand-in features, report): "
                  f"{full:.1f} s = {audio_min / (full / 60):.0f} audio min per wall min")


if __name__ == "__main__":
    main()
