"""Tiny CosyVoice2 and CosyVoice3 models and data that the real upstream classes accept, generated on the fly.

Tests, the README demo and benchmarks need a Qwen2 directory, parquet data, a CosyVoice-shaped
config, "pretrained" checkpoints and (for online feature extraction) ONNX models; nothing binary is
committed, so they are made here, offline, deterministically from a seed. `make_workspace` does all
of it in one call (~10 s on 2 cores). The config follows the training API of the upstream tree it
is made for (`tiny.api`). Building models imports upstream lazily: callers put the upstream tree on
sys.path first (or pass `upstream=`).
"""

from cosyvoice_ext.tiny.api import UpstreamAPI, detect_api
from cosyvoice_ext.tiny.config import load_tiny_config, make_base_checkpoint, write_tiny_config
from cosyvoice_ext.tiny.data import write_parquet_dataset, write_train_cv
from cosyvoice_ext.tiny.onnx_models import write_online_feature_dir
from cosyvoice_ext.tiny.qwen import make_tiny_qwen
from cosyvoice_ext.tiny.workspace import Workspace, make_workspace, train_command, train_env

__all__ = [
    "UpstreamAPI",
    "Workspace",
    "detect_api",
    "load_tiny_config",
    "make_base_checkpoint",
    "make_tiny_qwen",
    "make_workspace",
    "train_command",
    "train_env",
    "write_online_feature_dir",
    "write_parquet_dataset",
    "write_train_cv",
    "write_tiny_config",
]
