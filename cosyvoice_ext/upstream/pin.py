"""Content identities of upstream files. Which commits, URLs and packages are pinned lives only in
vendor.lock (generated, verified); this module only knows how to hash and where the submodule sits."""

from __future__ import annotations

import hashlib

#: where upstream's Matcha-TTS submodule lives in a CosyVoice checkout (the wheel has `matcha/` at its top)
MATCHA_PATH = "third_party/Matcha-TTS"


def wheel_path_for(upstream_path: str) -> str:
    """Path inside the wheel that carries an upstream file (``matcha/`` sits at the wheel's top)."""
    prefix = MATCHA_PATH + "/"
    return upstream_path[len(prefix):] if upstream_path.startswith(prefix) else upstream_path


def git_blob_id(data: bytes) -> str:
    """git's object id for a blob: sha1 over 'blob <size>\\0' + content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
