"""Everything one upstream training run needs (model dir, data, config, base checkpoints) in one call.

Integration tests, the README demo and benchmarks all train the stock upstream train.py under
torchrun on this workspace, so the command line lives here too: one place that knows the flags.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cosyvoice_ext.family import Family
from cosyvoice_ext.family import get as get_family
from cosyvoice_ext.tiny.api import train_py_has_onnx_path
from cosyvoice_ext.tiny.config import make_base_checkpoint, write_tiny_config
from cosyvoice_ext.tiny.data import write_train_cv
from cosyvoice_ext.tiny.qwen import make_tiny_qwen

MATCHA_SUBDIR = Path("third_party") / "Matcha-TTS"


@dataclasses.dataclass(frozen=True)
class Workspace:
    """Paths of a generated tiny training setup (all under `root`)."""

    root: Path
    qwen_dir: Path
    config: Path
    train_list: Path
    cv_list: Path
    llm_ckpt: Path
    flow_ckpt: Path
    #: the model family the config, Qwen vocabulary and data were made for
    family: str = "cosyvoice2"
    #: ONNX models for online feature extraction (`train.py --onnx_path`); None: the data carries
    #: precomputed speaker embeddings and speech tokens
    onnx_dir: Path | None = None


def upstream_import_paths(upstream: Path) -> list[str]:
    """sys.path entries that make `cosyvoice` and `matcha` importable from an upstream tree.

    A git checkout keeps matcha in third_party/Matcha-TTS (the PyPI wheel layout has it at the top,
    where the first entry already finds it).
    """
    upstream = Path(upstream).resolve()
    return [str(upstream), str(upstream / MATCHA_SUBDIR)]


@contextmanager
def upstream_on_path(upstream: Path | None) -> Iterator[None]:
    """Temporarily put an upstream tree first on sys.path (no-op for None)."""
    if upstream is None:
        yield
        return
    added = upstream_import_paths(upstream)
    sys.path[:0] = added
    try:
        yield
    finally:
        for p in added:
            if p in sys.path:
                sys.path.remove(p)


def make_workspace(root: Path, *, n_train: int = 16, n_cv: int = 4, seed: int = 0,
                   upstream: Path | None = None, family: str | Family = "cosyvoice2", online_features: bool = False,
                   shards: int = 1, **config_kw) -> Workspace:
    """Generate Qwen dir, train/cv parquet, config and base llm.pt/flow.pt under `root`.

    The config matches `upstream`'s training API (read from its source; without a tree, the API
    `write_tiny_config` assumes for `family`). Building the base checkpoints needs upstream's classes:
    pass `upstream` (a CosyVoice tree) unless `cosyvoice` and `matcha` are importable already. When
    this process already imported `cosyvoice` from another tree, they are built in a child process,
    so two trees never mix. `online_features` writes data without embeddings and tokens plus the
    ONNX models that compute them (`onnx_dir`). `shards`: train parquet files (upstream gives each rank
    whole shards, so N ranks need N). `config_kw` goes to `write_tiny_config` (max_epoch, accum_grad,
    extra, ...).
    """
    fam = family if isinstance(family, Family) else get_family(family)
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    qwen_dir = make_tiny_qwen(root / "qwen", seed=seed, family=fam)
    train_list, cv_list = write_train_cv(root / "data", n_train, n_cv, seed=seed, family=fam,
                                         online_features=online_features, shards=shards)
    config = write_tiny_config(root / "conf" / "tiny.yaml", qwen_dir, family=fam, upstream=upstream, **config_kw)
    onnx_dir = None
    if online_features:
        from cosyvoice_ext.tiny.onnx_models import write_online_feature_dir

        onnx_dir = write_online_feature_dir(root / "onnx", fam, seed=seed)
    pretrained = root / "pretrained"
    if upstream is not None and _imported_elsewhere(upstream):
        _base_checkpoints_in_child(config, pretrained, seed, upstream)
    else:
        with upstream_on_path(upstream):
            _require_upstream(upstream)
            for model in ("llm", "flow"):
                make_base_checkpoint(config, model, pretrained / f"{model}.pt", seed=seed)
    return Workspace(root=root, qwen_dir=qwen_dir, config=config, train_list=train_list, cv_list=cv_list,
                     llm_ckpt=pretrained / "llm.pt", flow_ckpt=pretrained / "flow.pt", family=fam.name,
                     onnx_dir=onnx_dir)


def _imported_elsewhere(upstream: Path) -> bool:
    """Whether this process already imported `cosyvoice` from a tree other than `upstream`."""
    mod = sys.modules.get("cosyvoice")
    if mod is None:
        return False
    if getattr(mod, "__file__", None):  # tree/cosyvoice/__init__.py
        package_dir = Path(mod.__file__).parent
    else:  # a namespace package: its first directory
        package_dir = Path(next(iter(mod.__path__)))
    return package_dir.resolve().parent != Path(upstream).resolve()


def _base_checkpoints_in_child(config: Path, pretrained: Path, seed: int, upstream: Path) -> None:
    """make_base_checkpoint for llm and flow in a fresh interpreter that imports `upstream` only."""
    code = ("import sys; from pathlib import Path; from cosyvoice_ext.tiny.config import make_base_checkpoint\n"
            "for m in ('llm', 'flow'):\n"
            "    make_base_checkpoint(Path(sys.argv[1]), m, Path(sys.argv[2]) / f'{m}.pt', seed=int(sys.argv[3]))\n")
    env = train_env(upstream)
    env.pop("onnx_path", None)  # base weights never depend on online features
    res = subprocess.run([sys.executable, "-c", code, str(config), str(pretrained), str(int(seed))], env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"building the base checkpoints with {upstream} failed:\n{res.stderr[-4000:]}")


def _require_upstream(upstream: Path | None) -> None:
    import importlib.util

    missing = [m for m in ("cosyvoice", "matcha") if importlib.util.find_spec(m) is None]
    if missing:
        where = f" under {upstream}" if upstream else ""
        raise ModuleNotFoundError(
            f"cannot import {', '.join(missing)}{where}: make_workspace builds the base checkpoints with "
            "upstream's classes; pass upstream=<CosyVoice tree> or put it on sys.path")


def free_port() -> int:
    """A TCP port nobody listens on right now (for torchrun's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(ws: Workspace, upstream: Path, model: str, model_dir: Path, *, nproc: int = 1,
                  checkpoint: Path | None = None, extra_args: Sequence[str] = (),
                  onnx_path: Path | str | None = None) -> list[str]:
    """argv for the stock upstream train.py under torchrun on CPU (gloo), as a user would type it.

    `--prefetch 100` with `--num_workers 0` is upstream's default pairing and crashes the unpatched
    DataLoader; the patch series fixes that, so the command deliberately keeps it.

    `--onnx_path` goes only to a train.py that defines it (newer trees crash without it; older ones
    reject it): `onnx_path` when given, else the workspace's `onnx_dir` (online features), else ''
    (with our patch series: precomputed features from the data).
    """
    if model not in ("llm", "flow"):
        raise ValueError(f"model must be 'llm' or 'flow', got {model!r}")
    has_flag = train_py_has_onnx_path(Path(upstream))
    chosen = onnx_path if onnx_path is not None else ws.onnx_dir
    if chosen is not None and not has_flag:
        raise ValueError(f"{Path(upstream) / 'cosyvoice/bin/train.py'} has no --onnx_path flag: this tree cannot "
                         "extract features online (make the workspace without online_features)")
    model_dir = Path(model_dir)
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={int(nproc)}", f"--master_port={free_port()}",
        str(Path(upstream) / "cosyvoice" / "bin" / "train.py"),
        "--train_engine", "torch_ddp",
        "--config", str(ws.config),
        "--train_data", str(ws.train_list),
        "--cv_data", str(ws.cv_list),
        "--qwen_pretrain_path", str(ws.qwen_dir),
        "--model", model,
    ]
    if checkpoint is not None:
        cmd += ["--checkpoint", str(checkpoint)]
    if has_flag:
        cmd += ["--onnx_path", "" if chosen is None else str(chosen)]
    cmd += [
        "--model_dir", str(model_dir),
        "--tensorboard_dir", str(model_dir / "tensorboard"),
        "--ddp.dist_backend", "gloo",
        "--num_workers", "0",
        "--prefetch", "100",
        "--timeout", "5",
        *extra_args,
    ]
    return cmd


def train_env(upstream: Path) -> dict[str, str]:
    """os.environ plus upstream on PYTHONPATH (ahead of anything else), offline Hugging Face, one thread."""
    env = dict(os.environ)
    paths = upstream_import_paths(upstream)
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env.update({
        "PYTHONPATH": os.pathsep.join(paths),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    })
    return env
