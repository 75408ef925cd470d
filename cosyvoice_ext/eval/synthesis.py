"""The two systems eval compares, built on `cosyext synth`'s API (cosyvoice_ext.synth)."""

from __future__ import annotations

from ..errors import EnvironmentProblem


def make_synthesizers(args, progress):
    try:
        import cosyvoice_ext.synth  # noqa: F401
    except ImportError as exc:
        raise EnvironmentProblem("synthesis needs cosyvoice_ext.synth, which this install lacks",
                                 hint="score existing wavs with --synth-dir DIR") from exc
    raise EnvironmentProblem("synthesis is not wired yet", hint="score existing wavs with --synth-dir DIR")
