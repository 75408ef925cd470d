"""Tiny CosyVoice2 models and data that the real upstream classes accept, generated on the fly.

Tests, the README demo and benchmarks need a Qwen2 directory, parquet data, a CosyVoice2-shaped
config and "pretrained" checkpoints; nothing binary is committed, so they are made here, offline,
deterministically from a seed. `make_workspace` does all of it in one call (~10 s on 2 cores).
Building models imports upstream lazily: callers put the upstream tree on sys.path first.
"""

from cosyvoice_ext.tiny.config import load_tiny_config, make_base_checkpoint, write_tiny_config
from cosyvoice_ext.tiny.data import write_parquet_dataset, write_train_cv
from cosyvoice_ext.tiny.qwen import make_tiny_qwen
from cosyvoice_ext.tiny.workspace import Workspace, make_workspace, train_command, train_env

__all__ = [
    "Workspace",
    "load_tiny_config",
    "make_base_checkpoint",
    "make_tiny_qwen",
    "make_workspace",
    "train_command",
    "train_env",
    "write_parquet_dataset",
    "write_train_cv",
    "write_tiny_config",
]
