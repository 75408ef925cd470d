"""One cosyext command at a time per upstream tree: an exclusive `flock` on the tree's root directory.

Why the directory itself: no lock file is created (a reverted tree stays byte-identical to
upstream), a read-only tree can still be locked, and the kernel drops the lock when its holder
dies, even by `kill -9`, so there is never a stale lock to clean up. A second command waits for the
first (it says so once on stderr) and gives up with a clear error after `WAIT_S` seconds.

The lock is re-entrant within a process: `apply_series` takes it again under a command that
already holds it (flock locks belong to an open file, so a second open would wait on itself).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import EnvironmentProblem

try:
    import fcntl
except ImportError:  # not a POSIX system: commands run unlocked (see _acquire)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("cosyvoice_ext")

#: how long a second command waits for the first before giving up
WAIT_S = 120.0
_POLL_S = 0.05
#: filesystems that cannot lock (some network mounts) answer with one of these: we go on without
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL}

_held: dict[str, list[int]] = {}  # realpath -> [fd, depth]


@contextmanager
def locked(root: Path, wait: float = WAIT_S, what: str = "cosyext") -> Iterator[None]:
    """Hold the tree lock on `root` for the block; wait up to `wait` seconds for another holder."""
    key = os.path.realpath(root)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    fd = _acquire(Path(key), wait, what)
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        del _held[key]
        if fd >= 0:
            os.close(fd)  # closing drops the flock


def _acquire(root: Path, wait: float, what: str) -> int:
    if fcntl is None:
        log.warning("cosyext: this system cannot lock %s; make sure no other cosyext command works on it", root)
        return -1
    try:
        fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise EnvironmentProblem(f"cannot open {root} to lock it: {exc.strerror}",
                                 hint="check that the directory exists and is readable") from None
    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:
                log.warning("cosyext: %s cannot be locked (%s); make sure no other cosyext command works on it",
                            root, exc.strerror)
                os.close(fd)
                return -1
            os.close(fd)
            raise
        if time.monotonic() >= deadline:
            os.close(fd)
            raise EnvironmentProblem(
                f"another cosyext command is still working on {root} after {wait:.0f} s; nothing was changed",
                hint=f"wait for it to finish (or stop it), then run '{what}' again")
        if not said:
            log.warning("cosyext: another cosyext command is working on %s; waiting for it (up to %.0f s)", root, wait)
            said = True
        time.sleep(_POLL_S)


def is_locked(root: Path) -> bool:
    """True when some process (this one included) holds the lock on `root` right now (or when this
    system cannot tell, so that nothing in use is ever taken for a leftover)."""
    key = os.path.realpath(root)
    if key in _held:
        return True
    if fcntl is None:
        return True  # cannot tell: treat it as in use
    fd = os.open(key, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
