"""The world of the `cosyext serve` tests, built in a child process (`python -m tests.serve_world DIR TREE`):
one tiny CosyVoice2 pretrained dir, LoRA adapter checkpoints (training's format, seeded non-zero
weights) for four voices on it, one merged serve dir, a tiny CosyVoice3 pretrained dir with one voice, speaker embeddings as files, and the reference
audio of every (voice, text, seed, stream) the tests ask for, made by `cosyvoice_ext.synth.Synthesizer`
(what `cosyext synth` runs) with the same model, adapters, text and seed.

A child, because a process imports one upstream tree and the test process may hold another.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: the load test's text (1 token: a random tiny LLM says ~20 speech tokens, 0.8 s); the stream test's (3.2 s, 4 chunks)
SHORT, LONG = "a", "hello world"
#: lora voices (adapter seed) and the merged one; "dave" is added by the reload test
LORA = {"alice": 1, "bob": 2, "dave": 4}
MERGED = {"carol": 3}
#: a lora voice on a CosyVoice3 base (a second base in the same server)
CV3 = {"eve": 5}
#: (voice, text, seed, stream) of every reference; "base" is the pretrained dir without adapters
REFERENCES = [(v, SHORT, s, False) for v in ("alice", "bob", "carol") for s in (0, 1)] + [
    ("alice", LONG, 0, True), ("dave", SHORT, 0, False), ("base", SHORT, 0, False), ("eve", SHORT, 0, False)]


def ref_name(voice: str, text: str, seed: int, stream: bool) -> str:
    return f"{voice}-{'long' if text == LONG else 'short'}-{seed}-{'stream' if stream else 'offline'}.npy"


def build(root: Path, tree: Path) -> None:
    import numpy as np
    import torch

    from cosyvoice_ext.synth import ModelSource, Speaker, Synthesizer, loader
    from cosyvoice_ext.tiny.adapters import make_adapters, make_merged_dir
    from cosyvoice_ext.tiny.inference import make_inference_dir

    torch.set_num_threads(1)
    loader.import_tree(loader.verify(tree))
    names = (*LORA, *MERGED)
    pre = make_inference_dir(root / "models" / "pretrained", family="cosyvoice2", upstream=tree, speakers=names)
    spk2info = torch.load(pre.root / "spk2info.pt", weights_only=True)
    (root / "voices").mkdir()
    for name in names:
        torch.save(spk2info[name]["embedding"], root / "voices" / f"{name}.pt")
    adapters = {name: make_adapters(pre.root, root / "runs" / name, seed=seed) for name, seed in {**LORA, **MERGED}.items()}
    for name in MERGED:
        make_merged_dir(pre.root, root / "models" / f"merged_{name}", adapters[name])
    pre3 = make_inference_dir(root / "models" / "pretrained3", family="cosyvoice3", upstream=tree, speakers=tuple(CV3))
    spk3 = torch.load(pre3.root / "spk2info.pt", weights_only=True)
    for name, seed in CV3.items():
        torch.save(spk3[name]["embedding"], root / "voices" / f"{name}.pt")
        adapters[name] = make_adapters(pre3.root, root / "runs" / name, seed=seed)
    (root / "models.ready").write_text("")  # the server may start now; references follow
    refs = root / "refs"
    refs.mkdir()
    synths: dict[str, Synthesizer] = {}
    for voice, text, seed, stream in REFERENCES:
        if voice not in synths:
            if voice in MERGED:
                source = ModelSource.serve_dir(root / "models" / f"merged_{voice}")
            elif voice in CV3:
                source = ModelSource.pretrained(pre3.root, llm=adapters[voice]["llm"], flow=adapters[voice]["flow"])
            elif voice == "base":
                source = ModelSource.pretrained(pre.root)
            else:
                source = ModelSource.pretrained(pre.root, llm=adapters[voice]["llm"], flow=adapters[voice]["flow"])
            synths[voice] = Synthesizer(tree, source)
        speaker = "alice" if voice == "base" else voice
        audio = synths[voice].tts(text, Speaker(speaker), seed=seed, stream=stream)
        np.save(refs / ref_name(voice, text, seed, stream), audio)
    (root / "built.json").write_text(json.dumps({"sample_rate": synths["alice"].sample_rate}))


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]))
