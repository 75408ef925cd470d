#!/usr/bin/env bash
# Ensure the cached training environment exists and holds this checkout; print its python path.
# The venv lives outside the clone (COSYEXT_CACHE, default ~/.cache/cosyext) keyed by a hash of
# requirements/ so CI clones and new sessions reuse it; only `pip install -e .` runs per checkout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${COSYEXT_CACHE:-$HOME/.cache/cosyext}"
py="${PYTHON:-python3}"
key=$( (cat "$here"/requirements/*.txt; "$py" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
venv="$cache/env-$key"
log() { echo "[env] $*" >&2; }

if ! command -v ffmpeg >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "ffmpeg missing (torchaudio needs it to decode WAV bytes): installing it with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg; } >&2
  else
    log "ffmpeg is missing: torchaudio cannot decode audio without it."
    log "Install it (e.g. 'sudo apt-get install ffmpeg') and run this again."
    exit 2
  fi
fi

# the web page test of `cosyext serve` drives a real headless browser: Debian's chromium + chromium-driver
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "chromium/chromedriver missing (the serve web page test needs them): installing them with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >&2
  else
    log "chromium and chromedriver are missing: the serve web page test will fail saying so."
    log "Install them (e.g. 'sudo apt-get install chromium chromium-driver') for the full test suite."
  fi
fi

if [ ! -f "$venv/.complete" ]; then
  log "creating training environment $venv (first run only, a few minutes)"
  rm -rf "$venv"
  mkdir -p "$cache"
  "$py" -m venv "$venv"
  pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
  "${pip[@]}" install -U "pip>=24" wheel >&2
  "${pip[@]}" install -r "$here/requirements/train-env.txt" >&2
  # deepspeed ships only an sdist whose setup.py imports torch: build against the env's torch.
  DS_BUILD_OPS=0 "${pip[@]}" install --no-build-isolation -r "$here/requirements/deepspeed.txt" >&2
  touch "$venv/.complete"
fi
# this checkout into the env (seconds); setuptools' deprecation chatter is shown only if the install fails
if ! out=$("$venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps --no-build-isolation -e "$here" 2>&1); then
  echo "$out" >&2
  log "installing $here into $venv failed (see above)"
  exit 2
fi
echo "$venv/bin/python"
