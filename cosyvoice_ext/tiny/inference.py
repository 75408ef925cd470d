"""Complete tiny model directories that upstream's own inference classes load and synthesise with:
what `CosyVoice2(DIR)` / `CosyVoice3(DIR)` (cosyvoice/cli/cosyvoice.py) read, a few MB instead of GBs.

A directory holds the family's yaml (the tiny training config of `tiny.config` plus a real `hift:`
section: a narrow HiFTGenerator for CosyVoice2, a CausalHiFTGenerator for CosyVoice3, upstream's
strides so 480 samples per mel frame at 24 kHz), `llm.pt`, `flow.pt` and `hift.pt` built from that
yaml by upstream's classes, the stand-in `campplus.onnx` and speech tokenizer (`tiny.standin`),
`CosyVoice-BlankEN/` (the tiny Qwen; for CosyVoice3 with Qwen2's token ids, because
`CosyVoice3LM.inference` asserts the literal id 151646 of `<|endofprompt|>`), and optionally
`spk2info.pt` with `{'embedding': [1, 192]}` entries, the shape upstream's `inference_sft` reads.

The weights are random: the audio is noise and a random LLM rarely stops before 20x the text
tokens, but every code path of upstream's inference runs. The yaml is also a training config for
`tiny.workspace`-style runs (train.py sets `hift` to None unless it trains it), so adapters trained
on it export into the directory. Same arguments, same bytes (except the ONNX producer metadata).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..family import COSYVOICE3, Family
from ..family import get as get_family
from .api import UpstreamAPI, detect_api
from .config import render_tiny_config
from .qwen import make_tiny_qwen
from .standin import make_pretrained_standin

QWEN_SUBDIR = "CosyVoice-BlankEN"
SPK2INFO = "spk2info.pt"
MODELS = ("llm", "flow", "hift")
#: the speaker the tiny directories register by default (prompt-free synthesis)
DEFAULT_SPEAKER = "tiny_speaker"

_HIFT = """\
hift: !new:cosyvoice.hifigan.generator.{generator}
    in_channels: 80
    base_channels: {channels}
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 5, 3]
    upsample_kernel_sizes: [16, 11, 7]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
{extra}    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.{f0}
        num_class: 1
        in_channels: 80
        cond_channels: {channels}
"""
_NO_VOCODER = "hift: null\n"


@dataclass(frozen=True)
class InferenceDir:
    """A generated model directory and what it was made as."""

    root: Path
    family: Family
    #: the yaml upstream's inference class reads (also usable as the training config)
    config: Path
    qwen_dir: Path
    #: names registered in spk2info.pt (empty: no spk2info.pt)
    speakers: tuple[str, ...] = ()

    def path(self, name: str) -> Path:
        return self.root / name


def render_inference_config(qwen_dir: Path, *, family: str | Family = "cosyvoice2", api: UpstreamAPI | None = None,
                            hift_channels: int = 32, **config_kw) -> str:
    """The tiny config of `tiny.config` with a tiny vocoder in place of `hift: null`.

    `hift_channels` is the HiFT's base width (upstream: 512; it halves per upsampling stage, so it
    must be a multiple of 8).
    """
    fam = family if isinstance(family, Family) else get_family(family)
    if hift_channels <= 0 or hift_channels % 8:
        raise ValueError(f"hift_channels must be a positive multiple of 8, got {hift_channels}")
    text = render_tiny_config(qwen_dir, family=fam, api=api, **config_kw)
    if text.count(_NO_VOCODER) != 1:
        raise AssertionError("the tiny config template no longer has exactly one 'hift: null' line")
    causal = fam is COSYVOICE3
    hift = _HIFT.format(generator="CausalHiFTGenerator" if causal else "HiFTGenerator", channels=int(hift_channels),
                        extra="    conv_pre_look_right: 4\n" if causal else "",
                        f0="CausalConvRNNF0Predictor" if causal else "ConvRNNF0Predictor")
    return text.replace(_NO_VOCODER, hift)


def make_inference_dir(dest: Path, *, family: str | Family = "cosyvoice2", upstream: Path | None = None,
                       api: UpstreamAPI | None = None, seed: int = 0, speakers: tuple[str, ...] = (DEFAULT_SPEAKER,),
                       hift_channels: int = 32, **config_kw) -> InferenceDir:
    """Write a complete tiny model directory for `family` to `dest` (created; must not hold files).

    The yaml follows `upstream`'s API (read from its source; `api` wins). Building the weights needs
    upstream's classes: from `upstream` in a child interpreter when this process imported another
    tree (or none is importable here), else in this process. `speakers` are registered in
    spk2info.pt with seeded random embeddings (none: no spk2info.pt, as in the real pretrained dirs).
    """
    fam = family if isinstance(family, Family) else get_family(family)
    dest = Path(dest).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    if api is None and upstream is not None:
        api = detect_api(Path(upstream))
    qwen_dir = make_tiny_qwen(dest / QWEN_SUBDIR, seed=seed, family=fam, qwen2_ids=fam is COSYVOICE3)
    text = render_inference_config(qwen_dir, family=fam, api=api, hift_channels=hift_channels, seed=seed, **config_kw)
    make_pretrained_standin(dest, seed=seed, family=fam, config_text=text)
    config = dest / fam.config_name
    build_weights(config, dest, seed=seed, upstream=upstream)
    if speakers:
        write_spk2info(dest / SPK2INFO, speakers, seed=seed)
    return InferenceDir(dest, fam, config, qwen_dir, tuple(speakers))


def write_spk2info(path: Path, names: tuple[str, ...], seed: int = 0) -> Path:
    """`{name: {'embedding': [1, 192] float32}}`, what upstream's `frontend_sft` reads, seeded per name."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    torch.save({name: {"embedding": torch.randn(1, 192, generator=gen)} for name in names}, path)
    return path


def build_weights(config: Path, dest: Path, *, seed: int = 0, upstream: Path | None = None) -> None:
    """`llm.pt`, `flow.pt`, `hift.pt` in `dest`: the state dicts of the models `config` builds (seeded)."""
    from .workspace import _imported_elsewhere

    if upstream is not None and (_imported_elsewhere(upstream) or not _importable()):
        _build_in_child(config, dest, seed, upstream)
        return
    from .workspace import upstream_on_path

    with upstream_on_path(upstream):
        _build_here(config, dest, seed)


def _importable() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("cosyvoice", "matcha"))


def _build_here(config: Path, dest: Path, seed: int) -> None:
    """Build from the yaml (its __set_seed lines are rendered from `seed`) and save each model's state dict."""
    import torch
    from hyperpyyaml import load_hyperpyyaml

    state = torch.random.get_rng_state()
    try:
        with open(config, encoding="utf-8") as f:  # the yaml's own __set_seed lines (rendered from `seed`)
            configs = load_hyperpyyaml(f)
        for name in MODELS:
            torch.save(configs[name].state_dict(), Path(dest) / f"{name}.pt")
    finally:
        torch.random.set_rng_state(state)


def _build_in_child(config: Path, dest: Path, seed: int, upstream: Path) -> None:
    from .workspace import train_env

    code = ("import sys; from pathlib import Path; from cosyvoice_ext.tiny.inference import _build_here\n"
            "_build_here(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))\n")
    env = train_env(upstream)
    env.pop("onnx_path", None)
    res = subprocess.run([sys.executable, "-c", code, str(config), str(dest), str(int(seed))], env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"building the tiny inference weights with {upstream} failed:\n{res.stderr[-4000:]}")


__all__ = ["DEFAULT_SPEAKER", "InferenceDir", "build_weights", "make_inference_dir", "render_inference_config",
           "write_spk2info"]
