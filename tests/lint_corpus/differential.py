"""Run one config through upstream's REAL train.py (torchrun, CPU, tiny data) and through `cosyext
lint`, and classify what each did.

The trainer's outcome is observed, not guessed: a throwaway sitecustomize (SPY) in the training
process counts optimizer steps with torch's global optimizer hooks, checks whether the first step
changed any parameter, and whether gradient clipping kept the gradient's direction. Outcomes:

* ``trains``     exit 0, at least one optimizer step changed the weights along the gradient
* ``fails``      train.py exited non-zero (the error line is kept)
* ``hangs``      killed after the timeout
* ``no_step``    exit 0 without a single optimizer step (zero samples, zero epochs, ...)
* ``no_update``  steps happened, but the first one changed no weight (lr 0, gradients clipped to 0)
* ``ascends``    the clipped gradient points against the real one (the weights move uphill)

Lint must report an error for every outcome but ``trains``, and none for ``trains``.

Every upstream import happens in the torchrun child (one tree on its PYTHONPATH); this process
only reads the tree's sources.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

from cosyvoice_ext.tiny.workspace import Workspace, train_command, train_env

HERE = Path(__file__).resolve().parent
OUTCOMES = HERE / "outcomes.json"
QWEN = "__QWEN_DIR__"  # the tiny Qwen directory's path, substituted when a corpus config is used
#: family@rev -> (upstream commit, model family)
SETUPS: dict[str, tuple[str, str]] = {
    "cosyvoice2@44316c34": ("44316c34", "cosyvoice2"),
    "cosyvoice2@ace7c47": ("ace7c47", "cosyvoice2"),
    "cosyvoice3@ace7c47": ("ace7c47", "cosyvoice3"),
}
TRAINS = "trains"
BAD = ("fails", "hangs", "no_step", "no_update", "ascends")
N_TRAIN, N_CV, SEED = 16, 4, 0

SPY = '''
import json, os
_OUT = os.environ.get("COSYEXT_DIFF_OUT")
if _OUT and os.environ.get("LOCAL_RANK") is not None:  # torchrun's worker, not its launcher
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    _state = {"steps": 0, "updated": None, "descent": None}
    _before = []

    def _save():
        with open(_OUT + ".tmp", "w") as f:
            json.dump(_state, f)
        os.replace(_OUT + ".tmp", _OUT)

    def _params(opt):
        return [p for g in opt.param_groups for p in g["params"]]

    def _pre(opt, args, kwargs):
        if _state["updated"] is None:
            _before[:] = [p.detach().clone() for p in _params(opt)]

    def _post(opt, args, kwargs):
        _state["steps"] += 1
        if _state["updated"] is None:
            _state["updated"] = any(not torch.equal(a, p.detach()) for a, p in zip(_before, _params(opt)))
            _before.clear()
        _save()

    register_optimizer_step_pre_hook(_pre)
    register_optimizer_step_post_hook(_post)

    _clip = torch.nn.utils.clip_grad_norm_

    def clip_grad_norm_(parameters, max_norm, *args, **kwargs):
        params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        if _state["descent"] is not None:
            return _clip(params, max_norm, *args, **kwargs)
        grads = [(p, p.grad.detach().clone()) for p in params if p.grad is not None]
        out = _clip(params, max_norm, *args, **kwargs)
        dot = sum(float((g.double() * p.grad.double()).sum()) for p, g in grads)
        _state["descent"] = dot > 0  # 0: clipped to nothing; < 0: the gradient was turned around
        _save()
        return out

    torch.nn.utils.clip_grad_norm_ = clip_grad_norm_  # train_utils imports it by name, after this runs
'''

_ERROR = re.compile(r"^\s*(?:\[rank\d+\]:\s*)?([A-Za-z_.]*(?:Error|Exception|Interrupt)\b.*)$")


@dataclasses.dataclass
class Data:
    """The tiny data one family trains on: Qwen dir, train and cv lists (deterministic from SEED)."""

    qwen_dir: Path
    train_list: Path
    cv_list: Path


def make_data(root: Path, family: str) -> Data:
    """Tiny Qwen and parquet data for `family` under `root` (same seed, same bytes every time)."""
    from cosyvoice_ext.tiny.data import write_train_cv
    from cosyvoice_ext.tiny.qwen import make_tiny_qwen

    qwen = make_tiny_qwen(root / "qwen", seed=SEED, family=family)
    train_list, cv_list = write_train_cv(root / "data", N_TRAIN, N_CV, seed=SEED, family=family)
    return Data(qwen, train_list, cv_list)


def base_config(tree: Path, family: str, tmp: Path) -> str:
    """The tiny config for `family` on `tree`'s training API, with the Qwen path as a placeholder."""
    from cosyvoice_ext.tiny.config import write_tiny_config

    qwen = tmp / "qwen-placeholder"
    path = write_tiny_config(tmp / f"base-{family}.yaml", qwen, family=family, upstream=tree)
    return path.read_text(encoding="utf-8").replace(json.dumps(str(qwen.resolve())), f'"{QWEN}"')


def materialize(config_text: str, data: Data, dest: Path) -> Path:
    """Write a corpus config with the real Qwen directory in place of the placeholder."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(config_text.replace(QWEN, str(data.qwen_dir)), encoding="utf-8")
    return dest


def onnx_path_for(tree: Path) -> str | None:
    """What train_command passes as --onnx_path for a workspace without ONNX models ('' on a tree whose
    train.py has the flag: precomputed features), and so what lint is told."""
    from cosyvoice_ext.tiny.api import train_py_has_onnx_path

    return "" if train_py_has_onnx_path(tree) else None


def cosyext_snapshot(dest: Path, rev: str = "HEAD") -> tuple[Path, str]:
    """cosyvoice_ext as committed at `rev` (the patched train_utils imports its relay), laid out like
    the installed package, for PYTHONPATH: trainer runs then do not see half-edited files of a shared
    checkout. Returns (folder to put on PYTHONPATH, full commit)."""
    repo = HERE.parents[1]
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", rev], capture_output=True, text=True,
                         check=True).stdout.strip()
    src = Path(dest) / "src"
    src.mkdir(parents=True, exist_ok=True)
    names = subprocess.run(["git", "-C", str(repo), "ls-tree", "--name-only", sha], capture_output=True, text=True,
                           check=True).stdout.split()
    archive = subprocess.run(["git", "-C", str(repo), "archive", sha, "cosyvoice_ext",
                              *(n for n in ("hooks", "patches") if n in names)], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    for sub in ("hooks", "patches"):  # package-dir mapping of pyproject.toml, where it still applies
        if (src / sub).is_dir() and not (src / "cosyvoice_ext" / sub).exists():
            shutil.move(str(src / sub), str(src / "cosyvoice_ext" / sub))
    return src, sha


def run_trainer(config: Path, data: Data, tree: Path, model: str, workdir: Path, timeout: float = 300,
                cosyext: Path | None = None) -> dict[str, Any]:
    """Upstream's train.py (torchrun, 1 CPU rank) on `config`; the observed outcome as a dict.

    `cosyext`: a :func:`cosyext_snapshot` folder to import cosyvoice_ext from (plugin autoloading off:
    the corpus configs have no cosyext: section); default: the installed cosyvoice_ext."""
    workdir.mkdir(parents=True, exist_ok=True)
    spy = workdir / "spy"
    spy.mkdir(exist_ok=True)
    (spy / "sitecustomize.py").write_text(textwrap.dedent(SPY), encoding="utf-8")
    out = workdir / "spy.json"
    ws = Workspace(root=workdir, qwen_dir=data.qwen_dir, config=config, train_list=data.train_list,
                   cv_list=data.cv_list, llm_ckpt=workdir / "none.pt", flow_ckpt=workdir / "none.pt")
    env = train_env(tree)
    env["PYTHONPATH"] = os.pathsep.join([str(spy), *([str(cosyext)] if cosyext else []), env["PYTHONPATH"]])
    if cosyext:
        env["COSYEXT_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["COSYEXT_DIFF_OUT"] = str(out)
    cmd = train_command(ws, tree, model, workdir / "exp")
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=workdir)
        rc, log = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as exc:
        rc, log = None, (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
    spied = json.loads(out.read_text()) if out.is_file() else {"steps": 0, "updated": None, "descent": None}
    shutil.rmtree(workdir / "exp", ignore_errors=True)
    return {**classify(rc, spied), "error": error_line(log) if rc else None}


def classify(rc: int | None, spied: dict[str, Any]) -> dict[str, Any]:
    steps = int(spied.get("steps") or 0)
    if rc is None:
        outcome = "hangs"
    elif rc != 0:
        outcome = "fails"
    elif steps == 0:
        outcome = "no_step"
    elif not spied.get("updated"):
        outcome = "no_update"
    elif spied.get("descent") is False:
        outcome = "ascends"
    else:
        outcome = TRAINS
    return {"outcome": outcome, "steps": steps}


def error_line(log: str) -> str | None:
    """The last `SomethingError: ...` line of a crashed run (what a user would search for)."""
    found = None
    for line in log.splitlines():
        m = _ERROR.match(line)
        if m and "ChildFailedError" not in line and "Traceback" not in line:
            found = m.group(1).strip()
    return found[:300] if found else None


# --- lint -------------------------------------------------------------------------------------

def lint_options(data: Data, tree: Path, model: str):
    """What the user would pass to `cosyext lint` for the same train.py command line."""
    from cosyvoice_ext.lint.engine import Options
    from cosyvoice_ext.lint.target import read_upstream

    return Options(model=model, data=data.train_list, cv_data=data.cv_list, qwen_pretrain_path=str(data.qwen_dir),
                   upstream=read_upstream(tree), onnx_path=onnx_path_for(tree))


def lint_cli_args(config: Path, data: Data, tree: Path, model: str) -> list[str]:
    args = ["lint", str(config), "--data", str(data.train_list), "--cv-data", str(data.cv_list), "--model", model,
            "--qwen-pretrain-path",
            str(data.qwen_dir), "--upstream", str(tree), "--format", "json"]
    onnx = onnx_path_for(tree)
    return args + (["--onnx-path", onnx] if onnx is not None else [])


def lint_verdict(findings: list[Any]) -> dict[str, Any]:
    """'error' when any finding is an error (exit 1), else 'clean'; the error codes for the table."""
    sev = [(getattr(f, "severity", None) or f["severity"], getattr(f, "code", None) or f["code"]) for f in findings]
    errors = sorted({c for s, c in sev if s == "error"})
    return {"lint": "error" if errors else "clean", "codes": errors}


def agrees(outcome: str, verdict: str) -> bool:
    return (outcome == TRAINS) == (verdict == "clean")


def upstream_tree(rev: str, dest: Path) -> Path:
    """A patched tree at `rev` under `dest` (vendored from the mirror like tests/conftest.py's
    `upstream_at`, reused when already there). The series keeps train.py byte-identical."""
    from cosyvoice_ext.upstream import lockfile, mirror, patching, sources

    lock = lockfile.load()
    commit = lock.resolve(rev)
    root = Path(dest) / f"patched-{commit.short}" / "CosyVoice"
    if not (root / "cosyvoice" / "bin" / "train.py").is_file():
        shutil.rmtree(root.parent, ignore_errors=True)
        sources.vendor(root, mirror.default_source(), lock, rev=commit.commit)
        patching.apply_series(root, lock)
    return root


_SET = re.compile(r"^\s*-?\s*([A-Za-z_][\w.]*):\s*(.*?)\s*(?:#.*)?$")


def fix_repeats_value(config_text: str, finding: Any) -> bool:
    """Whether a finding's fix suggests the very value its line already sets (`key: value` on the
    reported line, and the fix says `key: value` again, textually or as the same number)."""
    line_no = getattr(finding, "line", None) or finding["line"]
    fix = (getattr(finding, "fix", None) if not isinstance(finding, dict) else finding.get("fix")) or ""
    lines = config_text.splitlines()
    m = _SET.match(lines[line_no - 1]) if 0 < line_no <= len(lines) else None
    if not m or not m.group(2):
        return False
    key, value = m.group(1).split(".")[-1], m.group(2)
    for fm in re.finditer(rf"(?<![\w.]){re.escape(key)}:\s*([^\s,;()]+)", fix):
        said = fm.group(1)
        if said == value:
            return True
        try:
            if value[:1] not in "'\"" and float(said) == float(value):
                return True
        except ValueError:
            pass
    return False
