"""Everything one upstream training run needs (model dir, data, config, base checkpoints) in one call.

Integration tests, the README demo and benchmarks all train the stock upstream train.py under
torchrun on this workspace, so the command line lives here too: one place that knows the flags.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

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
                   upstream: Path | None = None, **config_kw) -> Workspace:
    """Generate Qwen dir, train/cv parquet, config and base llm.pt/flow.pt under `root`.

    Building the base checkpoints imports upstream in this process: pass `upstream` (a CosyVoice
    tree) unless `cosyvoice` and `matcha` are importable already. `config_kw` goes to
    `write_tiny_config` (max_epoch, accum_grad, extra, ...).
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    qwen_dir = make_tiny_qwen(root / "qwen", seed=seed)
    train_list, cv_list = write_train_cv(root / "data", n_train, n_cv, seed=seed)
    config = write_tiny_config(root / "conf" / "tiny.yaml", qwen_dir, **config_kw)
    with upstream_on_path(upstream):
        _require_upstream(upstream)
        llm_ckpt = make_base_checkpoint(config, "llm", root / "pretrained" / "llm.pt", seed=seed)
        flow_ckpt = make_base_checkpoint(config, "flow", root / "pretrained" / "flow.pt", seed=seed)
    return Workspace(root=root, qwen_dir=qwen_dir, config=config, train_list=train_list, cv_list=cv_list,
                     llm_ckpt=llm_ckpt, flow_ckpt=flow_ckpt)


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
                  checkpoint: Path | None = None, extra_args: Sequence[str] = ()) -> list[str]:
    """argv for the stock upstream train.py under torchrun on CPU (gloo), as a user would type it.

    `--prefetch 100` with `--num_workers 0` is upstream's default pairing and crashes the unpatched
    DataLoader; the patch series fixes that, so the command deliberately keeps it.
    """
    if model not in ("llm", "flow"):
        raise ValueError(f"model must be 'llm' or 'flow', got {model!r}")
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
