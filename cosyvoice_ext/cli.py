"""`cosyext` command line. Each subcommand lives in its own module exposing
``register(subparsers)`` (adds its parser, sets ``func``) so heavy imports stay lazy.

Exit codes: 0 ok, 1 findings or conflict, 2 usage or environment error; 130 after Ctrl-C (SIGINT)
and 143 after SIGTERM, both once every cleanup ran.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

from . import __version__
from .errors import CosyextError

# name -> module under cosyvoice_ext.commands; order is the order shown in --help
COMMAND_MODULES = (
    "vendor_cmd",
    "patch_cmds",
    "lock_cmd",
    "rebase_cmd",
    "plugins_cmd",
    "lint_cmd",
    "export_cmd",
    "prepare_cmd",
    "plot_cmd",
    "synth_cmd",
    "eval_cmd",
    "serve_cmd",
    "demo",
)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt: every `finally`, `except BaseException` and
    `except KeyboardInterrupt` cleanup (vendor's staging dir, the journal's rollback, prepare's
    resumable state) runs for it exactly as for SIGINT, instead of the process dying mid-write."""


_got_sigterm: list[bool] = []


def _raise_terminated(signum, frame) -> None:
    _got_sigterm.append(True)
    raise Terminated()


@contextmanager
def _sigterm_like_sigint() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` while a command runs (unless the parent set SIGTERM to be ignored)."""
    _got_sigterm.clear()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; add the next step
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n(run '{self.prog} --help' for usage)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cosyext",
        description="Patch, lint, train (LoRA) and export upstream CosyVoice with its stock train.py.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cosyext {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in COMMAND_MODULES:
        importlib.import_module(f"cosyvoice_ext.commands.{mod}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with _sigterm_like_sigint():
            rc = args.func(args)
    except CosyextError as exc:
        if args.verbose:
            raise
        print(f"cosyext {args.command}: error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"  next: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print(f"cosyext {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"cosyext {args.command}: interrupted (SIGINT)", file=sys.stderr)
        return 130
    if rc == 130 and _got_sigterm:
        return 143  # a command that handled the interrupt itself (prepare) still reports which signal it was
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
