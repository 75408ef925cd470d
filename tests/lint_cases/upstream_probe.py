"""Run REAL upstream code on a config + data set and print what happened, as JSON (one line).

Used by tests/test_lint_ace7c47.py in a subprocess whose PYTHONPATH holds one upstream tree, so the
lint claims (which batches, which crash) are checked against what upstream itself does. Jobs (argv[1],
a JSON list), each {"kind": ..., "config": path, "data": data.list, ...}:

* ``batches``: iterate upstream's Dataset like train.py ({"epochs": N}) -> sorted utts per batch per epoch
* ``forward``: build configs[model] ({"model": "llm"|"flow"}) and run its forward on every batch of
  epoch 0 -> {"ok", "batches", "error"} (the first exception's type and message)

Nothing here is upstream code; it only calls it.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.pop("onnx_path", None)  # upstream's cosyvoice/utils/onnx.py: precomputed features

MODELS = ("llm", "flow", "hift", "hifigan")


def _load(config: str, model: str | None):
    from hyperpyyaml import load_hyperpyyaml

    overrides = {k: None for k in MODELS if k != model}  # as train.py does for the models it does not train
    with open(config, encoding="utf-8") as f:
        return load_hyperpyyaml(f, overrides=overrides)


def _dataset(conf, data: str):
    from cosyvoice.dataset.dataset import Dataset

    return Dataset(data, data_pipeline=conf["data_pipeline"], mode="train", shuffle=True, partition=True)


def batches(job: dict) -> list:
    conf = _load(job["config"], None)
    ds = _dataset(conf, job["data"])
    out = []
    for epoch in range(job.get("epochs", 1)):
        ds.set_epoch(epoch)
        out.append([sorted(b["utts"]) for b in ds])
    return out


def forward(job: dict) -> dict:
    import torch

    n = 0
    try:
        conf = _load(job["config"], job["model"])
        model = conf[job["model"]]
        ds = _dataset(conf, job["data"])
        ds.set_epoch(0)
        for batch in ds:
            model(batch, torch.device("cpu"))
            n += 1
    except Exception as exc:  # what upstream raised is the result
        return {"ok": False, "batches": n, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "batches": n, "error": None}


def _imports_of_train_py() -> None:
    """Import what train.py imports before it loads the config: some imports draw from the global
    random state (rich.style: getrandbits(24)), and after the config's seed line that would change
    the shuffle; in train.py they come first."""
    import importlib.util

    import cosyvoice

    path = os.path.join(os.path.dirname(cosyvoice.__file__), "bin", "train.py")
    spec = importlib.util.spec_from_file_location("cosyext_probe_train", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # __name__ != '__main__': main() does not run


def main() -> None:
    import torch

    torch.set_num_threads(1)
    _imports_of_train_py()
    jobs = json.loads(sys.argv[1])
    print(json.dumps([{"batches": batches, "forward": forward}[j["kind"]](j) for j in jobs]))


if __name__ == "__main__":
    main()
