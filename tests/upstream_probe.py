"""Run in a child interpreter whose PYTHONPATH holds ONE upstream tree (train_env), so tests of
several upstream commits never import two `cosyvoice` packages into one process.

    python tests/upstream_probe.py strict-load CONFIG MODEL CKPT QWEN_DIR
    python tests/upstream_probe.py cv-loss CONFIG MODEL CKPT QWEN_DIR CV_LIST
    python tests/upstream_probe.py export-check CONFIG MODEL EXPORTED BASE QWEN_DIR CV_LIST
        (strict load of EXPORTED, and the CV loss of BASE and of EXPORTED: one upstream import for all three)

Prints one JSON line.
"""

from __future__ import annotations

import json
import random
import sys

import torch

from cosyvoice_ext import checkpoints
from cosyvoice_ext.tiny.config import load_tiny_config


def build(config: str, model: str, ckpt: str, qwen: str):
    """The stock model from the config as train.py builds it, holding `ckpt` loaded with strict=True."""
    configs = load_tiny_config(config, model, qwen_dir=qwen, seed=0)
    net = configs[model]
    state = checkpoints.tensors(checkpoints.load(ckpt))
    net.load_state_dict(state, strict=True)
    return configs, net


def cv_loss(config: str, model: str, ckpt: str, qwen: str, cv_list: str) -> float:
    """Mean CV loss through upstream's own data pipeline (fixed seeds)."""
    from cosyvoice.dataset.dataset import Dataset

    configs, net = build(config, model, ckpt, qwen)
    net.eval()
    data = Dataset(cv_list, data_pipeline=configs["data_pipeline"], mode="train", gan=False, dpo=False,
                   shuffle=False, partition=False)
    total, n = 0.0, 0
    random.seed(0)
    torch.manual_seed(0)
    with torch.no_grad():
        for batch in data:
            utts = len(batch["utts"])
            total += float(net(batch, torch.device("cpu"))["loss"]) * utts
            n += utts
    return total / n


def main(argv: list[str]) -> None:
    what, *args = argv
    if what == "strict-load":
        _, net = build(*args)
        print(json.dumps({"class": type(net).__name__, "tensors": len(net.state_dict())}))
    elif what == "cv-loss":
        print(json.dumps({"loss": cv_loss(*args)}))
    elif what == "export-check":
        config, model, exported, base, qwen, cv_list = args
        _, net = build(config, model, exported, qwen)
        print(json.dumps({"class": type(net).__name__, "tensors": len(net.state_dict()),
                          "base_loss": cv_loss(config, model, base, qwen, cv_list),
                          "exported_loss": cv_loss(config, model, exported, qwen, cv_list)}))
    else:
        raise SystemExit(f"unknown probe {what!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
