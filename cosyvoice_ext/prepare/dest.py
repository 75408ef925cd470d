"""What `cosyext prepare` may write in DEST, and when a DEST is refused.

prepare writes only these names (its *outputs*), always by rename from a temporary file:

- ``DEST/prepare_report.tsv``, ``DEST/prepare_summary.json``, ``DEST/.cosyext-prepare/`` (resume state);
- from raw recordings: ``DEST/segments/*.wav`` (cut utterances; ones no longer planned are deleted),
  ``DEST/transcripts.tsv``, ``DEST/report.html``, ``DEST/report.md``, ``DEST/report/*.png``;
- ``DEST/{train,cv}/data.list``, ``utt2data.list``, ``spk2data.list``;
- ``DEST/{train,cv}/parquet/{parquet,utt2parquet,spk2parquet}_NNNNNNNNN.{parquet,json}``; shards numbered
  beyond the current plan are deleted (an earlier run planned more).

A DEST holding its state directory is prepare's: ``--resume`` continues it, ``--force`` starts over.
Any other DEST that already holds one of those names, or training data of another tool (a
``data.list``, ``*.parquet`` or ``*.tar`` shards), is refused unless ``--force``, which replaces or
deletes only files with the names above: every other file in DEST stays as it is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import UsageError
from ..safe_paths import check_writable, entry
from .state import RUN_FILES, STATE_DIR, PrepareState

REPORT_NAME = "prepare_report.tsv"
SUMMARY_NAME = "prepare_summary.json"
#: written from raw recordings (see `raw`, `report`): cut utterances, the editable transcripts, the data report
SEGMENTS_DIR = "segments"
TOP_NAMES = (REPORT_NAME, SUMMARY_NAME, "transcripts.tsv", "report.html", "report.md")
REPORT_PNG_DIR = "report"
SETS = ("train", "cv")
LIST_NAMES = ("data.list", "utt2data.list", "spk2data.list")
#: a shard or side file, or its temporary name while it is written
SHARD_NAME = re.compile(r"^\.?(parquet|utt2parquet|spk2parquet)_\d{9}\.(parquet|json)(\.tmp)?$")
#: training data made by something else, anywhere below DEST (upstream's make_parquet_list.py writes .tar shards)
FOREIGN_DATA = re.compile(r"^(data\.list|.*\.parquet|parquet_\d+\.tar)$")
_SHOWN = 5


def is_output(path: Path, dest: Path) -> bool:
    """Whether ``path`` (resolved) is a file prepare writes or deletes in ``dest`` (resolved)."""
    try:
        parts = path.relative_to(dest).parts
    except ValueError:
        return False
    if not parts:
        return False
    if parts[0] == STATE_DIR or (len(parts) == 1 and _untemp(parts[0]) in TOP_NAMES):
        return True
    if len(parts) == 2 and parts[0] == SEGMENTS_DIR and _untemp(parts[1]).endswith(".wav"):
        return True
    if len(parts) == 2 and parts[0] == REPORT_PNG_DIR and _untemp(parts[1]).endswith(".png"):
        return True
    if len(parts) >= 2 and parts[0] in SETS:
        if len(parts) == 2:
            return _untemp(parts[1]) in LIST_NAMES
        return len(parts) == 3 and parts[1] == "parquet" and bool(SHARD_NAME.match(parts[2]))
    return False


def _untemp(name: str) -> str:
    """The name a temporary file (``.NAME.tmp``, see ``state.write_atomic``) is renamed to."""
    return name[1:-4] if name.startswith(".") and name.endswith(".tmp") else name


def check(src: Path, dest: Path, *, resume: bool, force: bool) -> None:
    """Refuse a DEST that is a file, cannot be written, or holds data prepare did not make (see module doc)."""
    hint_new = f"cosyext prepare {src} NEW_DEST"
    if resume and force:
        raise UsageError("give --resume or --force, not both: --resume continues the run in DEST, --force "
                         "starts it over", hint=f"cosyext prepare {src} {dest} --resume")
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"DEST {dest} is a file, not a directory", hint=hint_new)
    check_writable(dest, "DEST", hint_new)
    if PrepareState.exists(dest):
        if not resume and not force:
            raise UsageError(f"{dest} holds an earlier 'cosyext prepare' run",
                             hint=f"cosyext prepare {src} {dest} --resume  (same options as before; --force "
                                  "starts over, or pick an empty DEST)")
        return
    if force or not dest.is_dir():
        return
    found = existing(dest)
    if found:
        shown = ", ".join(str(p.relative_to(dest)) for p in found[:_SHOWN])
        more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
        resume_note = " (--resume continues a 'cosyext prepare' run, and DEST holds none: no .cosyext-prepare/)" \
            if resume else ""
        raise UsageError(f"{dest} already holds data 'cosyext prepare' did not make ({shown}{more}); writing there "
                         f"would overwrite or delete it{resume_note}",
                         hint=f"{hint_new}   (or --force: replaces only the files prepare writes, keeps the rest)")


def existing(dest: Path) -> list[Path]:
    """Files in DEST with prepare's output names, or training data of another tool (sorted)."""
    found = []
    for root, dirs, files in os.walk(dest):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if is_output(path, dest) or FOREIGN_DATA.match(name):
                found.append(path)
    return found


def refuse_outputs_as_inputs(inputs: dict[Path, str], dest: Path) -> None:
    """An input that is one of prepare's outputs would be overwritten (or deleted) while it is read."""
    real = dest.resolve()
    for path, what in sorted(inputs.items()):
        if is_output(entry(path), real) or is_output(path.resolve(), real):
            raise UsageError(f"input {path} ({what}) is a file 'cosyext prepare' writes in DEST {dest}",
                             hint="move the input out of DEST, or prepare into another DEST")


def forget_earlier_run(dest: Path) -> None:
    """``--force``: the earlier run's state goes (its other outputs are replaced as the run writes)."""
    state = dest / STATE_DIR
    if not state.is_dir():
        return
    for name in RUN_FILES:
        for path in (state / name, state / f".{name}.tmp"):
            if path.is_file():
                path.unlink()
    if not any(state.iterdir()):
        state.rmdir()
