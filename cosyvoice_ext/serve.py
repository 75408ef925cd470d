"""Assemble a directory upstream inference (`CosyVoice2(MODEL_DIR)` or `CosyVoice3(MODEL_DIR)`) loads:
the pretrained files linked (or copied) untouched, our merged llm.pt/flow.pt, the speaker registered
in spk2info.pt for prompt-free (SFT-style) inference, and a speaker_config.json entry for the user's
TTS server. The family comes from the pretrained directory (its cosyvoice2.yaml or cosyvoice3.yaml,
see :mod:`cosyvoice_ext.family`) and must be the family of the exported model.

Nothing is ever written into PRETRAINED_DIR: files we replace are links in MODEL_DIR, and each one
is swapped for a real file by rename, never written through.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from . import checkpoints
from . import family as families
from .errors import UsageError

#: files upstream's CosyVoice2/CosyVoice3(model_dir) opens besides its yaml and speech tokenizer
COMMON = ("llm.pt", "flow.pt", "hift.pt", "campplus.onnx")
SPK2INFO = "spk2info.pt"
SPEAKER_CONFIG = "speaker_config.json"
_EXAMPLE_DIRS = {"cosyvoice2": "CosyVoice2-0.5B", "cosyvoice3": "Fun-CosyVoice3-0.5B"}


def required(fam: families.Family) -> tuple[str, ...]:
    """Every file a model dir of this family needs, the yaml included."""
    return (fam.config_name, *COMMON, fam.speech_tokenizer)


def check_pretrained(pretrained: Path, expected: families.Family | None = None) -> families.Family:
    """The family of a pretrained model dir; UsageError when files are missing or it is not `expected`."""
    fam = families.of_pretrained(pretrained)
    if fam is None:
        names = " or ".join(f.config_name for f in families.FAMILIES.values())
        missing = [f for f in COMMON if not (pretrained / f).exists()]
        raise UsageError(f"{pretrained} is not a CosyVoice2 or CosyVoice3 pretrained directory (no {names}"
                         + (f"; also missing {', '.join(missing)}" if missing else "") + ")",
                         hint="pass the downloaded model dir, e.g. --serve pretrained_models/CosyVoice2-0.5B")
    missing = [f for f in required(fam) if not (pretrained / f).exists()]
    if missing:
        raise UsageError(f"{pretrained} is not a complete {fam.inference_class} pretrained directory (missing "
                         f"{', '.join(missing)})",
                         hint="pass the downloaded model dir, e.g. --serve "
                         f"pretrained_models/{_EXAMPLE_DIRS[fam.name]}")
    if expected is not None and fam is not expected:
        raise UsageError(f"{pretrained} is a {fam.inference_class} model dir ({fam.config_name}), but the config "
                         f"trains {expected.inference_class} models",
                         hint=f"pass the {expected.inference_class} pretrained dir the run was trained from "
                         f"(e.g. pretrained_models/{_EXAMPLE_DIRS[expected.name]})")
    return fam


def link_pretrained(pretrained: Path, model_dir: Path, *, copy: bool = False, keep: tuple[str, ...] = ()) -> list[str]:
    """Make every top-level entry of `pretrained` appear in `model_dir` (symlink or copy).

    Entries already present are left alone (a previous export's merged file, for instance), except
    dangling links; `keep` names entries the caller will write itself.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    added = []
    for src in sorted(pretrained.iterdir()):
        dst = model_dir / src.name
        if src.name in keep or dst.exists():
            continue
        if dst.is_symlink():  # dangling: the pretrained dir moved
            dst.unlink()
        if copy:
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        else:
            dst.symlink_to(src.resolve(), target_is_directory=src.is_dir())
        added.append(src.name)
    return added


def install_file(produce: Callable[[Path], None], target: Path) -> None:
    """Write via `produce(tmp)` then rename over `target` (replacing a link, never writing through it)."""
    tmp = target.with_name(f".{target.name}.cosyext-tmp")
    produce(tmp)
    os.replace(tmp, target)


def speaker_embedding(data_list: Path, speaker: str | None) -> tuple[str, list[float]]:
    """Mean `spk_embedding` of `speaker`'s rows (or the only speaker's) in upstream parquet shards."""
    import numpy as np
    import pyarrow.parquet as pq

    shards = [Path(line.strip()) for line in data_list.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows: dict[str, list] = {}
    for shard in shards:
        table = pq.read_table(shard, columns=["spk", "spk_embedding"])
        for spk, emb in zip(table.column("spk").to_pylist(), table.column("spk_embedding").to_pylist()):
            rows.setdefault(spk, []).append(emb)
    if not rows:
        raise UsageError(f"{data_list} lists no utterances", hint="pass the train data.list you trained with")
    if speaker is None:
        if len(rows) > 1:
            raise UsageError(f"{data_list} has {len(rows)} speakers ({', '.join(sorted(rows))[:200]})",
                             hint="choose one with --speaker NAME")
        speaker = next(iter(rows))
    if speaker not in rows:
        raise UsageError(f"speaker {speaker!r} not in {data_list}", hint=f"one of: {', '.join(sorted(rows))[:200]}")
    return speaker, np.asarray(rows[speaker], dtype=np.float32).mean(axis=0).tolist()


def register_speaker(pretrained: Path, model_dir: Path, name: str, embedding: list[float]) -> None:
    """spk2info.pt = the pretrained speakers (if any) + ours, as upstream's frontend_sft reads it."""
    import torch

    target = model_dir / SPK2INFO
    source = target if target.is_file() and not target.is_symlink() else pretrained / SPK2INFO
    info = checkpoints.load(source) if source.is_file() else {}
    info[name] = {"embedding": torch.tensor([embedding], dtype=torch.float32)}
    install_file(lambda tmp: torch.save(info, tmp), target)


def write_speaker_config(model_dir: Path, name: str, description: str, models: dict[str, str],
                         family: str | None = None) -> None:
    """Add (or replace) the speaker's entry; ``family`` ('cosyvoice2'/'cosyvoice3') tells a server which
    inference class opens ``model_dir``."""
    path = model_dir / SPEAKER_CONFIG
    doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"speakers": []}
    entry = {"name": name, "spk_id": name, "model_dir": str(model_dir.resolve()), "description": description,
             **({"family": family} if family else {}),
             **{k: str((model_dir / v).resolve()) for k, v in models.items()}}
    doc["speakers"] = [s for s in doc.get("speakers", []) if s.get("name") != name] + [entry]
    install_file(lambda tmp: tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8"), path)
