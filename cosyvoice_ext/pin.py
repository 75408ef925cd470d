"""Where upstream comes from. The hashes themselves live in vendor.lock (generated, verified)."""

from __future__ import annotations

import hashlib

UPSTREAM_URL = "https://github.com/FunAudioLLM/CosyVoice.git"
MATCHA_PATH = "third_party/Matcha-TTS"
MATCHA_URL = "https://github.com/shivammehta25/Matcha-TTS.git"

#: The PyPI wheel that redistributes upstream's training code byte-for-byte at the pin.
PYPI_NAME = "cosyvoice-minicpmo"
PYPI_VERSION = "0.1.0"


def wheel_path_for(upstream_path: str) -> str:
    """Path inside the wheel that carries an upstream file (``matcha/`` sits at the wheel's top)."""
    prefix = MATCHA_PATH + "/"
    return upstream_path[len(prefix):] if upstream_path.startswith(prefix) else upstream_path


def git_blob_id(data: bytes) -> str:
    """git's object id for a blob: sha1 over 'blob <size>\\0' + content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
