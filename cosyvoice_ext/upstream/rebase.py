"""`cosyext rebase`: replay a supported commit's patch series onto a new upstream commit (maintainers).

Like `gbp pq rebase` + `quilt refresh`, in a private git work tree (never the user's checkout):

1. clone the upstream source (GitHub, a bundle, a mirror) into the work dir;
2. commit the old series patch by patch on top of the old commit;
3. cherry-pick those commits one by one onto the new commit: real 3-way merges;
4. at a conflict, use the recorded resolution for that patch if there is one
   (`patches/<name>/resolutions/<patch>.diff`), else stop and name the patch, file and hunk; the
   maintainer edits the work tree and runs `--continue` (which records the resolution), or `--abort`;
5. patches the new commit's existing series adds on top (written by hand for that commit) are
   replayed after the rebased ones;
6. write the refreshed series (`git diff -U3`, DEP-3 headers kept, `Last-Update` refreshed) into
   `patches/<name>/`, check that it reproduces the result with `git apply`, and add the commit to the lock.

The same inputs give byte-identical patches, so a test can re-run a rebase and compare.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import family as families
from ..errors import EnvironmentProblem, PatchConflict, UsageError
from . import mirror, pin
from .lockfile import Commit, FileHash, Lock
from .patching import Patch, read_series, series_dir, stage_series

STATE = "state.json"
INFERENCE_DIR = "cosyvoice/cli/"
RESOLUTIONS = "resolutions"
_DIFF_START = re.compile(r"^diff --git ", re.M)
_HUNK = re.compile(r"^@@ .*$", re.M)
_GIT = ["git", "-c", "user.name=cosyext rebase", "-c", "user.email=cosyext@localhost", "-c", "core.autocrlf=false",
        "-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false", "-c", "commit.gpgsign=false",
        "-c", "advice.detachedHead=false"]


@dataclass
class State:
    """Everything `--continue` needs, saved in the work dir between runs."""

    source: str
    onto: str
    name: str
    from_name: str
    patches_root: str
    lock_path: str
    last_update: str
    #: (name, header, patch file) of every patch to replay, in order
    todo: list[dict] = field(default_factory=list)
    done: int = 0
    #: patch name -> recorded resolution diff text (new ones, written with the series at the end)
    resolved: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    conflict: dict | None = None
    #: where the Matcha-TTS submodule can be cloned from, if its commit moved
    matcha: str | None = None

    def save(self, workdir: Path) -> None:
        tmp = workdir / (STATE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        tmp.replace(workdir / STATE)

    @classmethod
    def load(cls, workdir: Path) -> "State":
        try:
            return cls(**json.loads((workdir / STATE).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise UsageError(f"no rebase in progress in {workdir}",
                             hint="start one with 'cosyext rebase --onto REV --source MIRROR'") from None
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{workdir / STATE} is unreadable ({exc})",
                             hint=f"cosyext rebase --abort --workdir {workdir}, then start again") from None


@dataclass(frozen=True)
class Result:
    commit: Commit
    written: Path
    notes: list[str]


# --- git plumbing ---------------------------------------------------------------------------

def _git(repo: Path, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*_GIT, *args], cwd=repo, capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise EnvironmentProblem(f"git {' '.join(args)} failed in {repo}: {(proc.stderr or proc.stdout).strip()}",
                                 hint="see the message above; 'cosyext rebase --abort' removes the work dir")
    return proc


def _git_bytes(repo: Path, *args: str) -> bytes:
    proc = subprocess.run([*_GIT, *args], cwd=repo, capture_output=True)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"git {' '.join(args)} failed in {repo}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def _source_repo(source: str, lock: Lock) -> tuple[str, str | None]:
    """(CosyVoice repository to clone, Matcha-TTS repository or None) for a --source value."""
    if source == mirror.GITHUB:
        return lock.upstream_url, lock.submodule_urls.get(pin.MATCHA_PATH)
    repos = mirror.git_repos(source)
    if repos is not None:
        return repos
    if "://" in source or source.startswith("git@"):
        return source, None
    raise UsageError(f"--source {source!r} is not a git bundle, a git repository, a mirror folder or a git URL",
                     hint="cosyext rebase --onto REV --source PATH/CosyVoice.bundle")


def _split_patch(text: str) -> tuple[str, str]:
    """(DEP-3 header incl. the '---' line, diff) of a patch file."""
    m = _DIFF_START.search(text)
    if m is None:
        raise UsageError("a patch without a 'diff --git' section cannot be rebased")
    return text[:m.start()], text[m.start():]


def _refresh_header(header: str, date: str) -> str:
    if re.search(r"^Last-Update: .*$", header, re.M):
        return re.sub(r"^Last-Update: .*$", f"Last-Update: {date}", header, count=1, flags=re.M)
    return header.replace("\n---\n", f"\nLast-Update: {date}\n---\n", 1)


def _diff(repo: Path, a: str, b: str) -> str:
    return _git(repo, "diff", "--no-color", "--no-ext-diff", "--no-renames", "-U3", "--abbrev=7", a, b).stdout


def today() -> str:
    """The date written into Last-Update: SOURCE_DATE_EPOCH when set (reproducible), else today (UTC)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch else _dt.datetime.now(_dt.timezone.utc)
    return when.strftime("%Y-%m-%d")


# --- the command's steps --------------------------------------------------------------------

def start(lock: Lock, lock_path: Path, patches_root: Path, workdir: Path, *, onto: str, source: str,
          from_rev: str | None = None, name: str | None = None, last_update: str | None = None,
          matcha: str | None = None) -> Result:
    """Begin a rebase in `workdir` (which must not exist) and run it as far as it goes."""
    if (workdir / STATE).exists():
        raise UsageError(f"a rebase is already in progress in {workdir}",
                         hint="cosyext rebase --continue (after resolving), or cosyext rebase --abort")
    if workdir.exists() and any(workdir.iterdir()):
        raise UsageError(f"work dir {workdir} exists and is not empty; nothing was changed",
                         hint="pass another --workdir, or remove it if it is a leftover of yours")
    old = lock.resolve(from_rev)
    url, sibling_matcha = _source_repo(source, lock)
    workdir.mkdir(parents=True, exist_ok=True)
    repo = workdir / "repo"
    try:
        proc = subprocess.run([*_GIT, "clone", "--quiet", "--no-checkout", url, str(repo)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise EnvironmentProblem(f"git could not clone {url}: {proc.stderr.strip()}",
                                     hint="pass a git bundle or mirror with --source (offline)")
        got = _git(repo, "rev-parse", "--verify", "--quiet", f"{onto}^{{commit}}", check=False).stdout.strip()
        if not got:
            raise UsageError(f"{onto!r} is not a commit of {url}", hint="pass a commit hash, tag or branch it holds")
        if _git(repo, "rev-parse", "--verify", "--quiet", f"{old.commit}^{{commit}}", check=False).returncode != 0:
            raise UsageError(f"{url} does not hold the series' own commit {old.label}",
                             hint="use a mirror with the full history (a bundle of upstream main)")
        new_name = name or _git(repo, "show", "-s", "--format=%cs", got).stdout.strip()
        state = State(source=source, onto=got, name=new_name, from_name=old.name, patches_root=str(patches_root),
                      lock_path=str(lock_path), last_update=last_update or today())
        # the old series, one commit per patch, on the old commit
        _git(repo, "checkout", "-q", "-b", "cosyext/old", old.commit)
        for p in read_series(series_dir(old, patches_root)):
            _git(repo, "apply", "--index", "--whitespace=nowarn", str(p.path.resolve()))
            _git(repo, "commit", "-q", "-m", p.name)
            header, _ = _split_patch(p.text)
            state.todo.append({"name": p.name, "header": header, "commit": _git(repo, "rev-parse", "HEAD").stdout.strip()})
        # patches the new commit's series already adds on top (hand-written for it) are replayed after
        known = {t["name"] for t in state.todo}
        target_dir = patches_root / new_name
        if (target_dir / "series").is_file():
            for p in read_series(target_dir):
                if p.name not in known:
                    header, _ = _split_patch(p.text)
                    state.todo.append({"name": p.name, "header": header, "file": str(p.path.resolve())})
        _git(repo, "checkout", "-q", "-b", "cosyext/new", got)
        state.matcha = matcha or sibling_matcha
        state.save(workdir)
    except BaseException:
        if not (workdir / STATE).exists():
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    return _run(workdir, state)


def resume(workdir: Path) -> Result:
    """`--continue`: take the maintainer's resolution of the current conflict and go on."""
    state = State.load(workdir)
    repo = workdir / "repo"
    if not state.conflict:
        raise UsageError("there is no conflict to continue from", hint="cosyext rebase --abort to give up")
    files = state.conflict["files"]
    left = [f for f in files if (repo / f).is_file() and "<<<<<<< " in (repo / f).read_text(encoding="utf-8", errors="replace")]
    if left:
        raise PatchConflict(f"conflict markers remain in {', '.join(left)} (under {repo})",
                            hint="edit them out, then cosyext rebase --continue")
    _git(repo, "add", "-A", "--", *files)
    item = state.todo[state.done]
    _git(repo, "commit", "-q", "--allow-empty", "-m", item["name"])
    state.resolved[item["name"]] = _diff(repo, "HEAD~1", "HEAD")
    state.done += 1
    state.conflict = None
    state.save(workdir)
    return _run(workdir, state)


def abort(workdir: Path) -> str:
    """`--abort`: remove the work dir; nothing else was ever written."""
    if not (workdir / STATE).is_file():
        raise UsageError(f"no rebase in progress in {workdir} (no {STATE}); nothing was removed",
                         hint="pass the --workdir the rebase was started with")
    shutil.rmtree(workdir)
    return f"rebase aborted; {workdir} removed, patches/ and the lock untouched"


def _resolution_for(state: State, name: str) -> str | None:
    """A resolution recorded in this run, else one recorded in the target's resolutions/ folder."""
    if name in state.resolved:
        return state.resolved[name]
    f = Path(state.patches_root) / state.name / RESOLUTIONS / f"{name}.diff"
    return f.read_text(encoding="utf-8") if f.is_file() else None


def _run(workdir: Path, state: State) -> Result:
    repo = workdir / "repo"
    while state.done < len(state.todo):
        item = state.todo[state.done]
        if "commit" in item:
            proc = _git(repo, "cherry-pick", "--no-commit", item["commit"], check=False)
        else:  # a patch written for the new commit: 3-way apply of the file
            proc = _git(repo, "apply", "--3way", "--index", "--whitespace=nowarn", item["file"], check=False)
        if proc.returncode != 0:
            conflicted = _git(repo, "diff", "--name-only", "--diff-filter=U").stdout.split()
            resolution = _resolution_for(state, item["name"])
            _git(repo, "reset", "-q", "--hard", "HEAD")
            _git(repo, "cherry-pick", "--quit", check=False)
            if resolution is not None and _git(repo, "apply", "--index", "--whitespace=nowarn",
                                                check=False, input=resolution).returncode == 0:
                state.resolved.setdefault(item["name"], resolution)
            else:
                _stop_at_conflict(repo, workdir, state, item, conflicted, proc, resolution is not None)
        if _git(repo, "diff", "--cached", "--quiet", check=False).returncode == 0:
            state.dropped.append(item["name"])  # upstream already has the change
        else:
            _git(repo, "commit", "-q", "-m", item["name"])
        state.done += 1
        state.save(workdir)
    return _finish(workdir, state)


def _stop_at_conflict(repo: Path, workdir: Path, state: State, item: dict, conflicted: list[str],
                      proc: subprocess.CompletedProcess, stale_resolution: bool) -> None:
    """Leave the conflict in the work tree for the maintainer, save the state, and say what to do."""
    if "commit" in item:
        _git(repo, "cherry-pick", "--no-commit", item["commit"], check=False)
        patch_text = _diff(repo, item["commit"] + "~1", item["commit"])
    else:
        _git(repo, "apply", "--3way", "--whitespace=nowarn", item["file"], check=False)
        patch_text = Path(item["file"]).read_text(encoding="utf-8")
    files = conflicted or sorted(set(re.findall(r"^\+\+\+ b/(\S+)", patch_text, re.M)))
    first = files[0] if files else "?"
    hunks = _failing_hunks(repo, patch_text, first)
    markers = _marker_lines(repo / first) if files else []
    state.conflict = {"files": files, "patch": item["name"]}
    state.save(workdir)
    where = f"{repo / first}"
    lines = [f"patch {item['name']} ({state.done + 1} of {len(state.todo)}) does not merge onto "
             f"{state.onto[:12]}: conflict in {first}" + (f" (and {', '.join(files[1:])})" if len(files) > 1 else "")]
    if hunks:
        lines.append(f"  hunk: {hunks[0]}" + (f" (+{len(hunks) - 1} more)" if len(hunks) > 1 else ""))
    if markers:
        lines.append(f"  conflict markers at line(s) {', '.join(str(n) for n in markers[:6])} of {where}")
    if stale_resolution:
        lines.append("  the recorded resolution for this patch no longer applies either")
    lines.append("Resolve it in the work tree (keep upstream's new code and the patch's intent, remove the markers), then")
    lines.append(f"  cosyext rebase --continue --workdir {workdir}")
    lines.append(f"or give up with: cosyext rebase --abort --workdir {workdir}")
    raise PatchConflict("\n".join(lines), hint=f"cosyext rebase --continue --workdir {workdir}")


def _failing_hunks(repo: Path, patch_text: str, path: str) -> list[str]:
    """Headers of the hunks of `path` in `patch_text` that do not apply to HEAD's version of it."""
    m = re.search(rf"^diff --git a/{re.escape(path)} b/{re.escape(path)}\n(?:.*\n)*?(?=^@@ )", patch_text, re.M)
    if m is None:
        return []
    head = patch_text[m.start():m.end()]
    rest = patch_text[m.end():]
    end = _DIFF_START.search(rest)
    body = rest[:end.start()] if end else rest
    starts = [h.start() for h in _HUNK.finditer(body)] + [len(body)]
    failing = []
    base = _git_bytes(repo, "show", f"HEAD:{path}")
    with tempfile.TemporaryDirectory(prefix="cosyext-hunk-") as tmp:
        subprocess.run(["git", "init", "-q", tmp], check=True)
        (Path(tmp) / path).parent.mkdir(parents=True, exist_ok=True)
        for a, b in zip(starts, starts[1:]):
            hunk = body[a:b]
            (Path(tmp) / path).write_bytes(base)
            check = subprocess.run(["git", "apply", "--check", "--recount", "-"], cwd=tmp, input=head + hunk,
                                   capture_output=True, text=True)
            if check.returncode != 0:
                failing.append(hunk.splitlines()[0])
    return failing


def _marker_lines(f: Path) -> list[int]:
    try:
        return [i for i, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
                if line.startswith("<<<<<<< ")]
    except OSError:
        return []


# --- writing the result ---------------------------------------------------------------------

def _locked_files(repo: Path, old: Commit, onto: str, matcha_repo: str | None, workdir: Path) -> dict[str, FileHash]:
    """The new commit's locked files: the old set where it still exists, plus every file new under cosyvoice/."""
    listing = _git(repo, "ls-tree", "-r", onto).stdout.splitlines()
    blobs, gitlinks = {}, {}
    for line in listing:
        meta, path = line.split("\t", 1)
        mode, kind, sha = meta.split()
        (gitlinks if kind == "commit" else blobs)[path] = sha
    before = set(_git(repo, "ls-tree", "-r", "--name-only", old.commit).stdout.splitlines())
    wanted = {p for p in old.files if not p.startswith(pin.MATCHA_PATH + "/") and p in blobs}
    wanted |= {p for p in blobs if p.startswith("cosyvoice/") and p not in before}
    def part(p: str) -> str:  # a file keeps its role; new inference code is upstream's cli/
        return old.files[p].part if p in old.files else ("inference" if p.startswith(INFERENCE_DIR) else "train")

    files = {p: FileHash.of(_git_bytes(repo, "cat-file", "blob", blobs[p]), part=part(p)) for p in sorted(wanted)}
    sub = gitlinks.get(pin.MATCHA_PATH)
    matcha_files = {p: h for p, h in old.files.items() if p.startswith(pin.MATCHA_PATH + "/")}
    if sub and sub != old.submodules.get(pin.MATCHA_PATH) and matcha_files:
        if not matcha_repo:
            raise UsageError(f"the new commit moves {pin.MATCHA_PATH} to {sub}: its files need hashing",
                             hint="pass --matcha-source (a Matcha-TTS bundle or mirror)")
        mrepo = workdir / "matcha"
        if not mrepo.exists():
            _git(workdir, "clone", "--quiet", "--no-checkout", matcha_repo, str(mrepo))
        matcha_files = {}
        for p in old.files:
            if p.startswith(pin.MATCHA_PATH + "/"):
                rel = p[len(pin.MATCHA_PATH) + 1:]
                got = _git(mrepo, "cat-file", "-e", f"{sub}:{rel}", check=False)
                if got.returncode == 0:
                    matcha_files[p] = FileHash.of(_git_bytes(mrepo, "show", f"{sub}:{rel}"))
    files.update(matcha_files)
    return files


def _families(repo: Path, onto: str) -> list[str]:
    """The model families a commit can train: whose LLM class its llm.py defines."""
    text = _git_bytes(repo, "show", f"{onto}:cosyvoice/llm/llm.py").decode("utf-8", errors="replace")
    out = []
    for fam in families.FAMILIES.values():
        cls = fam.classes["llm"][0].rsplit(".", 1)[-1]
        if re.search(rf"^class {cls}\b", text, re.M):
            out.append(fam.name)
    return out


def _finish(workdir: Path, state: State) -> Result:
    from .lockfile import load

    lock = load(Path(state.lock_path))
    repo = workdir / "repo"
    old = lock.resolve(state.from_name)
    patches_root = Path(state.patches_root)
    out = patches_root / state.name
    commits = _git(repo, "rev-list", "--reverse", f"{state.onto}..HEAD").stdout.split()
    subjects = [_git(repo, "show", "-s", "--format=%s", c).stdout.strip() for c in commits]
    headers = {t["name"]: t["header"] for t in state.todo}
    staging = Path(tempfile.mkdtemp(prefix=f".{state.name}.rebase-", dir=patches_root))
    notes = [f"dropped {n}: upstream {state.onto[:12]} already has its change" for n in state.dropped]
    try:
        names = []
        for c, subject in zip(commits, subjects):
            text = _refresh_header(headers[subject], state.last_update) + _diff(repo, c + "~1", c)
            (staging / subject).write_text(text, encoding="utf-8")
            names.append(subject)
        replayed = sum(1 for t in state.todo if "commit" in t and t["name"] in names)
        added = "; the rest were written for this commit" if replayed < len(names) else ""
        series = (f"# Patch series for upstream {state.name} ({state.onto[:12]}), applied in this order by "
                  "`cosyext apply-patches`; one concern per patch (DEP-3 headers).\n"
                  f"# `cosyext rebase --from {state.from_name}` wrote the first {replayed} from that series{added}.\n"
                  ) + "".join(f"{n}\n" for n in names)
        (staging / "series").write_text(series, encoding="utf-8")
        resolutions = {n: state.resolved[n] for n in names if n in state.resolved}
        if resolutions:
            (staging / RESOLUTIONS).mkdir()
            for n, r in resolutions.items():
                (staging / RESOLUTIONS / f"{n}.diff").write_text(r, encoding="utf-8")
        patches = [Patch(n, staging / n) for n in names]
        # a refresh (onto the series' own commit) keeps that commit's files and wheel; onto another commit
        # the locked files follow the source commit's set, so a file locked there is locked here too
        existing = next((c for c in lock.commits if c.commit == state.onto), None)
        refresh = old.commit == state.onto
        files = old.files if refresh else _locked_files(repo, old, state.onto, state.matcha, workdir)
        touched = sorted({f for p in patches for f in p.touched()})
        pristine = {f: _git_bytes(repo, "show", f"{state.onto}:{f}") for f in touched}
        staged = stage_series(pristine, patches, Path(f"upstream {state.onto[:12]}"))
        final = {f: _git_bytes(repo, "show", f"HEAD:{f}") for f in touched}
        if staged != final:
            raise PatchConflict("the written series does not reproduce the rebased tree (a bug in cosyext rebase)",
                                hint=f"the work dir {workdir} is kept for inspection")
        subs = dict(old.submodules)
        for line in _git(repo, "ls-tree", state.onto, pin.MATCHA_PATH).stdout.splitlines():
            subs[pin.MATCHA_PATH] = line.split()[2]
        commit = Commit(name=state.name, commit=state.onto,
                        date=_git(repo, "show", "-s", "--format=%cs", state.onto).stdout.strip(),
                        families=_families(repo, state.onto), patches_dir=state.name, submodules=subs,
                        pypi=existing.pypi if existing else None,
                        files=files, series=[{"name": p.name, "sha256": p.sha256} for p in patches],
                        patched={f: FileHash.of(d) for f, d in staged.items()},
                        rebased_from=(existing.rebased_from if existing else None) if old.commit == state.onto
                        else old.name)
        # move the new series into place, then record the commit in the lock
        backup = None
        if out.exists():
            backup = out.with_name(f".{out.name}.replaced")
            shutil.rmtree(backup, ignore_errors=True)
            out.rename(backup)
        staging.rename(out)
        if backup is not None:
            shutil.rmtree(backup)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    lock.replace_commit(commit)
    lock.write(Path(state.lock_path))
    shutil.rmtree(workdir)
    return Result(commit, out, notes)
