"""Assemble a directory upstream inference (`CosyVoice2(MODEL_DIR)` or `CosyVoice3(MODEL_DIR)`) loads:
the pretrained files linked (or copied) untouched, our merged llm.pt/flow.pt, the speaker registered
in spk2info.pt for prompt-free (SFT-style) inference, and a speaker_config.json entry (the keyed form
`cosyext serve` and users' TTS servers read) naming this dir as a merged voice. The family comes from the pretrained directory (its cosyvoice2.yaml or cosyvoice3.yaml,
see :mod:`cosyvoice_ext.family`) and must be the family of the exported model.

Nothing is ever written into PRETRAINED_DIR (:mod:`.outputs` refuses a MODEL_DIR inside it): files
we replace are links in MODEL_DIR, and each one is swapped for a real file by rename, never written
through. What MODEL_DIR already holds (spk2info.pt, speaker_config.json) and the speaker data are
read and checked before the slow merge, so a corrupt one stops the export before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from ... import checkpoints
from ... import family as families
from ...errors import CheckpointError, UsageError

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
    """Mean `spk_embedding` of `speaker`'s rows (or the only speaker's) in upstream parquet shards.

    Every way the list or a shard can be wrong (unreadable, not parquet, no such columns, embeddings
    stored as strings, of unequal lengths or not finite) is a UsageError naming the file.
    """
    import numpy as np

    rows: dict[str, list] = {}
    for shard in _shards(data_list):
        for spk, emb in _speaker_rows(shard, data_list):
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
    sizes = sorted({len(e) for e in rows[speaker]})
    if len(sizes) != 1 or not sizes[0]:
        raise UsageError(f"the spk_embedding values of speaker {speaker!r} in {data_list} have lengths "
                         f"{', '.join(map(str, sizes))}: one length (192, campplus) expected", hint=_DATA_HINT)
    mean = np.asarray(rows[speaker], dtype=np.float64).mean(axis=0)
    if not np.isfinite(mean).all():
        raise UsageError(f"the spk_embedding values of speaker {speaker!r} in {data_list} hold NaN or Inf",
                         hint=_DATA_HINT)
    return speaker, mean.astype(np.float32).tolist()


_DATA_HINT = "pass the train data.list 'cosyext prepare' wrote (DEST/train/data.list)"


def _shards(data_list: Path) -> list[Path]:
    try:
        text = Path(data_list).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"--speaker-data {data_list} is not a UTF-8 list of parquet files (byte {exc.start})",
                         hint=_DATA_HINT) from exc
    except OSError as exc:
        raise UsageError(f"cannot read --speaker-data {data_list}: {exc.strerror or exc}", hint=_DATA_HINT) from exc
    shards = [Path(line.strip()) for line in text.splitlines() if line.strip()]
    if not shards:
        raise UsageError(f"--speaker-data {data_list} lists no parquet files", hint=_DATA_HINT)
    return shards


def _speaker_rows(shard: Path, data_list: Path) -> list[tuple[str, list[float]]]:
    """(spk, embedding) of every row of one shard, with the column types checked first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = f"{shard} (listed in {data_list})"
    try:
        table = pq.read_table(shard, columns=["spk", "spk_embedding"])
    except FileNotFoundError as exc:
        raise UsageError(f"{where} does not exist", hint=_DATA_HINT) from exc
    except (OSError, pa.ArrowException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{where} is not a parquet shard with spk and spk_embedding columns: {first}",
                         hint=_DATA_HINT) from exc
    spk_type, emb_type = table.schema.field("spk").type, table.schema.field("spk_embedding").type
    if not (pa.types.is_string(spk_type) or pa.types.is_large_string(spk_type)):
        raise UsageError(f"column spk of {where} holds {spk_type}, not strings", hint=_DATA_HINT)
    listed = pa.types.is_list(emb_type) or pa.types.is_large_list(emb_type) or pa.types.is_fixed_size_list(emb_type)
    if not listed or not (pa.types.is_floating(emb_type.value_type) or pa.types.is_integer(emb_type.value_type)):
        raise UsageError(f"column spk_embedding of {where} holds {emb_type}, not lists of numbers", hint=_DATA_HINT)
    out = []
    for spk, emb in zip(table.column("spk").to_pylist(), table.column("spk_embedding").to_pylist()):
        if spk is None or emb is None or any(x is None for x in emb):
            raise UsageError(f"{where} has a row without spk or with a missing spk_embedding value", hint=_DATA_HINT)
        out.append((spk, emb))
    return out


def existing_speakers(pretrained: Path, model_dir: Path) -> dict:
    """The spk2info.pt a new speaker is added to: MODEL_DIR's own file, else the pretrained one (or {})."""
    target = model_dir / SPK2INFO
    source = target if target.is_file() and not target.is_symlink() else pretrained / SPK2INFO
    if not source.is_file():
        return {}
    info = checkpoints.load(source)
    if not all(isinstance(v, dict) for v in info.values()):
        raise CheckpointError(f"{source} is not a speaker table ({{name: {{'embedding': tensor}}}}) as upstream's "
                              "frontend reads it", hint=f"move {source} aside, or pass another pretrained dir")
    return info


def register_speaker(pretrained: Path, model_dir: Path, name: str, embedding: list[float]) -> None:
    """spk2info.pt = the pretrained speakers (if any) + ours, as upstream's frontend_sft reads it."""
    import torch

    info = existing_speakers(pretrained, model_dir)
    info[name] = {"embedding": torch.tensor([embedding], dtype=torch.float32)}
    install_file(lambda tmp: torch.save(info, tmp), model_dir / SPK2INFO)


def read_speaker_config(model_dir: Path) -> dict:
    """MODEL_DIR/speaker_config.json in the keyed form `cosyext serve` reads (docs/serve.md), ``{"speakers": {}}``
    when absent.

    The list form older exports wrote (``"speakers": [{"name": ...}, ...]``) is migrated in memory (each
    entry a ``"type": "merged"`` voice of its model_dir); anything else is a UsageError: the file is never
    replaced by a guess.
    """
    from ...serve.config import normalise

    path = model_dir / SPEAKER_CONFIG
    if not path.exists():
        return {"speakers": {}}
    hint = f"move it aside (mv {path} {path}.bak) and run again: the speaker's entry is written anew"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is not readable JSON ({exc})", hint=hint) from exc
    return normalise(doc, model_dir, str(path))[0]


def write_speaker_config(model_dir: Path, name: str, description: str, models: dict[str, str],
                         family: str | None = None) -> None:
    """Add (or replace) the speaker's entry: a ``"type": "merged"`` voice of this dir (``"model_dir": "."``,
    relative to the file), speaking as ``spk_id`` from spk2info.pt; ``merged`` lists the models whose
    weights are this dir's own (not links to the pretrained dir), ``family`` ('cosyvoice2'/'cosyvoice3') the inference class. The first speaker becomes the
    ``default_speaker``; an existing entry's ``active`` flag is kept."""
    doc = read_speaker_config(model_dir)
    old = doc["speakers"].get(name, {})
    entry = {"type": "merged", "model_dir": ".", "spk_id": name, "description": description,
             "active": old.get("active", True) if isinstance(old.get("active", True), bool) else True,
             **({"family": family} if family else {}),
             "merged": sorted(m for m, f in models.items() if not (model_dir / f).is_symlink())}
    doc["speakers"][name] = entry
    if not isinstance(doc.get("default_speaker"), str) or doc["default_speaker"] not in doc["speakers"]:
        doc["default_speaker"] = name
    install_file(lambda tmp: tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8"),
                 model_dir / SPEAKER_CONFIG)


def assemble(pretrained: Path, model_dir: Path, model: str, fam: families.Family, *, copy: bool,
             speaker: tuple[str, list[float]] | None, description: str, progress: Callable[[str], None]) -> None:
    """Around the merged ``<model>.pt`` already in MODEL_DIR: the pretrained files, and the speaker."""
    linked = link_pretrained(pretrained, model_dir, copy=copy, keep=(f"{model}.pt", SPK2INFO))
    progress(f"{'copied' if copy else 'linked'} {len(linked)} pretrained file(s) into {model_dir}")
    if speaker is not None:
        name, embedding = speaker
        register_speaker(pretrained, model_dir, name, embedding)
        write_speaker_config(model_dir, name, description,
                             {m: f"{m}.pt" for m in ("llm", "flow") if (model_dir / f"{m}.pt").exists()},
                             family=fam.name)
        progress(f"registered speaker {name!r} in {model_dir / SPK2INFO} and {SPEAKER_CONFIG}")
    elif not (model_dir / SPK2INFO).exists():
        link_pretrained(pretrained, model_dir, copy=copy)
