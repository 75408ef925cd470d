"""Small helpers for tests (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root: 'byte-identical' means these dicts are equal."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_cosyext(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess (exit codes, stderr as a user sees them)."""
    return subprocess.run([sys.executable, "-m", "cosyvoice_ext.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def default_signals() -> None:
    """`preexec_fn` for a child a test sends SIGINT/SIGTERM to: a shell's background job starts with SIGINT
    ignored (and Python then never installs its KeyboardInterrupt handler), so reset both to the default."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
