"""One exception hierarchy so the CLI can turn any failure into a message, a hint and an exit code."""

from __future__ import annotations


class CosyextError(Exception):
    """Base error. `hint` is the next command or action for the user; `exit_code` follows the CLI contract."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(CosyextError):
    """Bad arguments or a missing input path."""


class EnvironmentProblem(CosyextError):
    """Something outside our control is missing (a package, ffmpeg, network, a tool)."""


class LockError(CosyextError):
    """vendor.lock is missing, malformed, or stale against patches/."""


class VerificationError(CosyextError):
    """An upstream tree or download does not match the hashes pinned in vendor.lock."""

    exit_code = 1


class PatchConflict(CosyextError):
    """A patch does not apply (upstream drifted, or the user edited a patched file)."""

    exit_code = 1


class PluginError(CosyextError):
    """A plugin contributed something invalid (duplicate lint code, malformed registration)."""


class ConfigError(CosyextError):
    """The `cosyext:` section of a training config is invalid.

    ``key`` is the dotted path of the bad key when known, so lint can point at its line.
    """

    def __init__(self, message: str, hint: str | None = None, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message, hint=hint)
        self.key = key


class CheckpointError(CosyextError):
    """A checkpoint cannot be loaded safely or does not match the model."""
