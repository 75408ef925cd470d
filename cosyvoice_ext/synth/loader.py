"""Put ONE verified upstream tree on sys.path and import its inference classes (cosyvoice/cli).

Upstream's classes are imported from the user's tree, never from a package of ours: the tree is
recognised first (`upstream.tree.recognise`: a supported commit, every locked file pristine or
patched by our series) and every `part = "inference"` file must be there and match vendor.lock.
A tree vendored from the PyPI wheel has none of them (the wheel carries other versions), which is
an environment problem with one fix: vendor from git.

A Python process can hold only one `cosyvoice` package, so the first tree imported is the tree of
the process; asking for another one is a UsageError (use a child process, as `cosyext eval` and
the tests do).

Importing upstream is noisy in ways that would end up in our output: `cosyvoice.utils.file_utils`
calls `logging.basicConfig(level=DEBUG)` (the root logger of the whole process at DEBUG), the
2025 front end prints "failed to import ttsfrd" to stdout, DeepSpeed (pulled in through peft and
lightning) prints its accelerator, and every `inference_*` call draws a tqdm bar and logs each
sentence at INFO. `quiet()` keeps import-time output out of stdout/stderr (shown with -v), the
root logger is restored after the import, upstream's own INFO/DEBUG records are filtered from it,
and upstream's tqdm is disabled. Warnings stay warnings.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .. import family as families
from ..errors import EnvironmentProblem, UsageError, VerificationError
from ..upstream import applied, lockfile
from ..upstream.tree import State, recognise, unsupported_error

log = logging.getLogger("cosyvoice_ext.synth")

MATCHA = Path("third_party") / "Matcha-TTS"
CLI_MODULE = "cosyvoice.cli.cosyvoice"
#: warnings upstream's inference code raises on every call on current torch/torchaudio, about its own code
_NOISE = (
    (FutureWarning, r".*torch\.cuda\.amp\.autocast.*"),
    (UserWarning, r"The 'backend' parameter is not used by TorchCodec.*"),
)


@dataclass(frozen=True)
class Tree:
    """An upstream tree verified against vendor.lock, and (once imported) its inference module."""

    root: Path
    commit: lockfile.Commit
    #: how the commit was recognised, for messages ("git checkout at ...; supported upstream ...")
    origin: str

    def supports(self, fam: families.Family) -> bool:
        return fam.name in self.commit.families


@dataclass(frozen=True)
class Imported:
    tree: Tree
    #: upstream's cosyvoice.cli.cosyvoice module (CosyVoice2, CosyVoice3, ...)
    module: ModuleType

    def inference_class(self, fam: families.Family) -> type:
        return getattr(self.module, fam.inference_class)


_imported: Imported | None = None


def tree_root(upstream: str | os.PathLike) -> Path:
    """The tree's root, resolved; UsageError when it is not an upstream checkout at all."""
    root = Path(upstream).expanduser().resolve()
    if not root.is_dir():
        raise UsageError(f"upstream directory {root} does not exist",
                         hint="cosyext vendor DIR  (then pass --upstream DIR)")
    if not (root / "cosyvoice").is_dir():
        raise UsageError(f"{root} does not look like an upstream CosyVoice checkout (no cosyvoice/ directory)",
                         hint="pass --upstream DIR, or get one with 'cosyext vendor DIR'")
    return root


def verify(upstream: str | os.PathLike, lock: lockfile.Lock | None = None) -> Tree:
    """Recognise the tree and check its inference files; nothing is imported."""
    root = tree_root(upstream)
    lock = lock or lockfile.load()
    rec = recognise(root, lock, applied.read(root))
    if rec.commit is None:
        raise unsupported_error(rec, lock)
    commit = rec.commit
    absent = [s.path for s in rec.states if s.state is State.ABSENT]
    if absent:
        raise EnvironmentProblem(
            f"{root} is a training-only tree: upstream's inference files are not there "
            f"({', '.join(absent)}). A tree vendored from the PyPI wheel has none (the wheel carries other "
            "versions of them), and synthesis runs upstream's own inference classes",
            hint=f"vendor the same commit from git: cosyext vendor NEWDIR --rev {commit.name}  (GitHub, or "
                 "--source with a git bundle or mirror), then --upstream NEWDIR")
    bad = [s for s in rec.states if s.state in (State.DRIFTED, State.MISSING)]
    if bad:  # recognised by its git HEAD, but with local edits
        listed = "\n".join(f"  {s.state.value:8} {s.path}" for s in bad[:8])
        more = f"\n  ... and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise VerificationError(
            f"{root} is upstream {commit.label} by its git HEAD, but {len(bad)} locked file(s) differ from it:\n"
            f"{listed}{more}\nsynth imports the tree's code and runs only verified code",
            hint=f"cosyext status --upstream {root} (then restore those files, or cosyext apply-patches)")
    return Tree(root, commit, rec.origin())


def import_tree(tree: Tree, *, verbose: bool = False) -> Imported:
    """Import `tree`'s inference module (once per process; the same tree again returns it)."""
    global _imported
    if _imported is not None:
        if _imported.tree.root == tree.root:
            return _imported
        raise _second_tree(_imported.tree.root, tree.root)
    already = _cosyvoice_dir()
    if already is not None and already != tree.root:
        raise _second_tree(already, tree.root)
    for p in (tree.root / MATCHA, tree.root):
        while str(p) in sys.path:
            sys.path.remove(str(p))
        sys.path.insert(0, str(p))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local Qwen dirs only: never ask the hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    install_warning_filters()
    with quiet(verbose), keep_root_logger():
        module = importlib.import_module(CLI_MODULE)
    where = Path(module.__file__).resolve()
    if tree.root not in where.parents:
        raise _second_tree(where.parents[2], tree.root)
    _disable_tqdm(module)
    _filter_upstream_records(tree.root, verbose)
    _imported = Imported(tree, module)
    return _imported


def imported() -> Imported | None:
    """The tree this process imported through `import_tree`, if any."""
    return _imported


def _cosyvoice_dir() -> Path | None:
    """The tree a `cosyvoice` package already in this process came from."""
    mod = sys.modules.get("cosyvoice")
    if mod is None:
        return None
    first = Path(mod.__file__).parent if getattr(mod, "__file__", None) else Path(next(iter(mod.__path__)))
    return first.resolve().parent


def _second_tree(have: Path, want: Path) -> UsageError:
    return UsageError(f"this process already imported upstream CosyVoice from {have}; one process can import "
                      f"only one upstream tree, so {want} cannot be used here",
                      hint="run each tree in its own process (one `cosyext synth` per tree)")


@contextlib.contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """Keep what upstream and its imports print (stdout and stderr) out of our output; with `verbose`
    it is logged at DEBUG afterwards."""
    if verbose:
        yield
        return
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        said = (out.getvalue() + err.getvalue()).strip()
        if said:
            log.debug("upstream said:\n%s", said)


@contextlib.contextmanager
def keep_root_logger() -> Iterator[None]:
    """Undo what importing and constructing upstream does to the root logger: basicConfig at DEBUG, and
    modelscope's logger setting every root StreamHandler to ERROR once torch.distributed is initialised
    (which silenced rank 0's whole training log when samples built the inference class there)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    handler_levels = [(h, h.level) for h in handlers]
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
        for handler, handler_level in handler_levels:
            handler.setLevel(handler_level)


def install_warning_filters() -> None:
    """Upstream's own deprecated calls warn on every synthesis; those say nothing to a user."""
    for category, message in _NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)


class UpstreamChatter(logging.Filter):
    """Drops upstream's INFO/DEBUG records ("synthesis text ...", "yield speech len ...") from the root logger."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.prefix = str(root) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not str(record.pathname).startswith(self.prefix)


def _filter_upstream_records(root: Path, verbose: bool) -> None:
    if not verbose:
        logging.getLogger().addFilter(UpstreamChatter(root))


def _disable_tqdm(module: ModuleType) -> None:
    """`inference_*` wrap each call in tqdm(...): a bar per utterance inside our own progress."""
    bar = getattr(module, "tqdm", None)
    if bar is not None and not isinstance(bar, functools.partial):
        module.tqdm = functools.partial(bar, disable=True)
