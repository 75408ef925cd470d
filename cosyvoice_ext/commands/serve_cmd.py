"""`cosyext serve`: the voices of a speaker_config.json behind OpenAI's speech API (the arguments only;
the work is in :mod:`cosyvoice_ext.serve`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ._common import UPSTREAM_ENV

API_KEY_ENV = "COSYEXT_API_KEY"
EXAMPLES = f"""\
examples:
  # every active voice of the config; LoRA voices share one loaded base per pretrained dir
  cosyext serve speaker_config.json --upstream ~/CosyVoice --pretrained pretrained_models/CosyVoice2-0.5B
  curl -s localhost:8000/v1/audio/speech -H 'Content-Type: application/json' \\
      -d '{{"model": "cosyext", "input": "Hello there.", "voice": "alice", "response_format": "wav"}}' -o hello.wav
  # refuse to start when any entry is broken; open no file outside /srv/tts; want a bearer token
  {API_KEY_ENV}=secret cosyext serve /srv/tts/speaker_config.json --strict --root /srv/tts --port 8080
  curl -X POST localhost:8080/v1/reload -H 'Authorization: Bearer secret'   # after editing the config

The config format, the API and the design (one base, many adapters; one synthesis at a time) are in
docs/serve.md. The page at http://HOST:PORT/ lists the voices and plays what you type.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a speaker_config.json's voices (OpenAI /v1/audio/speech, one base + LoRA adapters)",
        description="Serve the voices of CONFIG (a speaker_config.json) over HTTP: POST /v1/audio/speech in "
        "OpenAI's shape, GET /v1/voices, GET /healthz, POST /v1/reload and a page at /. LoRA voices on the same "
        "pretrained dir share one loaded model; their adapters are switched per request.\n\n" + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", metavar="CONFIG.json", type=Path, help="speaker_config.json (paths in it are relative "
                   "to it)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--upstream", metavar="DIR", type=Path,
                   help=f"upstream CosyVoice tree (default: ${UPSTREAM_ENV}, else the current directory)")
    p.add_argument("--lock", metavar="FILE", type=Path, help="vendor.lock to use (default: the installed one)")
    p.add_argument("--pretrained", metavar="DIR", type=Path,
                   help="base model dir of lora voices whose entry and config name none")
    p.add_argument("--root", metavar="DIR", type=Path,
                   help="open no path outside DIR (the config and every file it names, links resolved)")
    p.add_argument("--strict", action="store_true",
                   help="refuse to start (and to reload) when any entry is broken, instead of skipping it")
    p.add_argument("--api-key", metavar="KEY", default=os.environ.get(API_KEY_ENV),
                   help=f"require 'Authorization: Bearer KEY' on /v1/ (default: ${API_KEY_ENV}; unset: no auth)")
    p.add_argument("--max-chars", type=int, default=4096, metavar="N",
                   help="longest input text accepted (default 4096, OpenAI's limit)")
    p.add_argument("--max-queue", type=int, default=256, metavar="N",
                   help="requests waiting at most; more get 503 (default 256)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads (default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ._common import upstream_root

    if not 0 <= args.port < 65536:
        raise UsageError(f"--port {args.port} is not a port number", hint="cosyext serve CONFIG --port 8000")
    if args.max_chars < 1 or args.max_queue < 1 or args.threads < 1:
        raise UsageError("--max-chars, --max-queue and --threads must be at least 1",
                         hint="the defaults: --max-chars 4096 --max-queue 256 --threads 1")
    if args.root is not None and not args.root.is_dir():
        raise UsageError(f"--root {args.root} is not a directory", hint="pass the directory voices must stay in")
    upstream = upstream_root(args)
    from ..serve import config as serve_config

    first = serve_config.load(args.config, root=args.root, pretrained=args.pretrained)  # before torch and upstream
    if args.strict and first.problems:
        raise serve_config.refusal(args.config, first.problems)
    import torch

    torch.set_num_threads(args.threads)
    from ..serve.server import serve

    progress = lambda msg: print(f"[serve] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    return serve(args.config, upstream, host=args.host, port=args.port, root=args.root, strict=args.strict,
                 pretrained=args.pretrained, lock_path=args.lock, api_key=args.api_key or None,
                 max_chars=args.max_chars, max_queue=args.max_queue, verbose=args.verbose, progress=progress)
