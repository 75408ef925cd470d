"""Child process for the synth tests: ONE upstream tree per interpreter, so every upstream import of
test_synth.py / test_lora_e2e.py happens here, once, and many `cosyext` command lines run on it.

    python tests/synth_probe.py PLAN.json RESULT.json

PLAN: {"tree": DIR, "actions": [...]}, run in order:

- {"do": "build", "dest": D, "family": F}: a tiny inference dir (tiny.inference, built in this process)
- {"do": "prompt", "dest": WAV, "seconds": S}: the first S seconds of the tree's asset/zero_shot_prompt.wav
  (real speech, 16 kHz)
- {"do": "train_start", "name": N, "pre": D, "root": R, "model": "llm"|"flow", "extra": YAML}: a real torchrun
  run of upstream's train.py (LoRA from `extra`) on the inference dir, started in the background
- {"do": "train_wait", "name": N}
- {"do": "cli", "id": ID, "argv": [...]}: `cosyext ARGV` through cosyvoice_ext.cli.main in this process
  (the console entry point is `sys.exit(main())`), its exit code, stdout, stderr and seconds
- {"do": "tokens", "id": ID, "qwen": DIR, "text": T}: how many text tokens the model's tokenizer makes of T

Network: every socket connect fails and is recorded, and modelscope's snapshot_download (what
upstream's classes call for a model dir that does not exist) records its call and fails; the result
lists both, so the tests assert that synthesis asked for nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONNECTS: list[str] = []
DOWNLOADS: list[str] = []


def guard_network() -> None:
    def connect(self, address, *args, **kwargs):
        CONNECTS.append(repr(address))
        raise OSError(f"synth_probe: network access attempted: {address!r}")

    socket.socket.connect = connect
    socket.socket.connect_ex = connect
    import modelscope

    def snapshot_download(*args, **kwargs):
        DOWNLOADS.append(repr((args, kwargs)))
        raise OSError("synth_probe: modelscope snapshot_download called")

    modelscope.snapshot_download = snapshot_download


def run_probe(plan: dict, work: Path, timeout: int = 900) -> dict:
    """Run this file on `plan` in a child interpreter (from a test); its result, every step's rc/stdout/stderr."""
    plan_path, result_path = Path(work) / "plan.json", Path(work) / "result.json"
    plan_path.write_text(json.dumps(plan))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, __file__, str(plan_path), str(result_path)], env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"synth probe failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    return json.loads(result_path.read_text())


def cli(step: str, *argv) -> dict:
    """A "cli" action: `cosyext ARGV` (paths become strings)."""
    return {"do": "cli", "id": step, "argv": [str(a) for a in argv]}


def main(plan_path: str, result_path: str) -> int:
    import torch

    torch.set_num_threads(1)
    guard_network()
    plan = json.loads(Path(plan_path).read_text())
    tree = Path(plan["tree"])
    from cosyvoice_ext.synth import loader

    loader.import_tree(loader.verify(tree))  # the tree on sys.path: tiny dirs are built in this process
    result: dict = {"steps": {}, "trains": {}}
    trains: dict = {}
    for action in plan["actions"]:
        do = action["do"]
        t0 = time.perf_counter()
        if do == "build":
            from cosyvoice_ext.tiny.inference import make_inference_dir

            make_inference_dir(Path(action["dest"]), family=action["family"], upstream=tree)
        elif do == "prompt":
            import soundfile

            audio, sr = soundfile.read(str(tree / "asset" / "zero_shot_prompt.wav"))
            soundfile.write(action["dest"], audio[: int(action["seconds"] * sr)], sr)
        elif do == "train_start":
            trains[action["name"]] = start_training(tree, action)
        elif do == "train_wait":
            proc, log, started = trains.pop(action["name"])
            proc.wait(timeout=900)
            log.seek(0)
            text = log.read()
            result["trains"][action["name"]] = {"rc": proc.returncode, "log": text[-4000:],
                                                "seconds": time.perf_counter() - started}
        elif do == "cli":
            result["steps"][action["id"]] = run_cli(action["argv"])
        elif do == "tokens":
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(action["qwen"])
            result["steps"][action["id"]] = {"tokens": len(tok(action["text"])["input_ids"])}
        else:
            raise ValueError(f"unknown action {do!r}")
        result.setdefault("seconds", []).append([do, action.get("id") or action.get("name") or action.get("dest"),
                                                 round(time.perf_counter() - t0, 2)])
    imported = loader.imported()
    result["module"] = imported.module.__file__ if imported else None
    result["connects"], result["downloads"] = CONNECTS, DOWNLOADS
    Path(result_path).write_text(json.dumps(result, indent=1))
    return 0


def run_cli(argv: list[str]) -> dict:
    from cosyvoice_ext.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main(argv)
        except SystemExit as exc:  # argparse errors
            rc = exc.code
        except Exception:  # noqa: BLE001 - a traceback is a finding: the tests show it
            import traceback

            rc = "traceback"
            err.write(traceback.format_exc())
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(), "seconds": time.perf_counter() - t0}


def start_training(tree: Path, action: dict):
    """upstream's train.py under torchrun on the inference dir's own weights (LoRA per `extra`), in the background."""
    import tempfile

    from cosyvoice_ext import family as families
    from cosyvoice_ext.tiny.api import detect_api
    from cosyvoice_ext.tiny.data import write_train_cv
    from cosyvoice_ext.tiny.inference import render_inference_config
    from cosyvoice_ext.tiny.workspace import Workspace, train_command, train_env

    pre, root, model = Path(action["pre"]), Path(action["root"]), action["model"]
    fam = families.of_pretrained(pre)
    root.mkdir(parents=True, exist_ok=True)
    config = root / "train.yaml"
    config.write_text(render_inference_config(pre / "CosyVoice-BlankEN", family=fam, api=detect_api(tree),
                                              extra=action["extra"], max_epoch=1, lr=action.get("lr", 0.01),
                                              max_frames_in_batch=400))
    train_list, cv_list = write_train_cv(root / "data", 4, 2, seed=0, family=fam)
    ws = Workspace(root=root, qwen_dir=pre / "CosyVoice-BlankEN", config=config, train_list=train_list,
                   cv_list=cv_list, llm_ckpt=pre / "llm.pt", flow_ckpt=pre / "flow.pt", family=fam.name)
    log = tempfile.TemporaryFile("w+")
    cmd = train_command(ws, tree, model, root / "exp", checkpoint=pre / f"{model}.pt")
    proc = subprocess.Popen(cmd, env=train_env(tree), stdout=log, stderr=subprocess.STDOUT, text=True)
    return proc, log, time.perf_counter()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
