"""Start-up of `cosyext serve`: load the voices (saying what was skipped and why), then uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

Progress = Callable[[str], None]


def serve(config: Path, upstream: Path, *, host: str = "127.0.0.1", port: int = 8000, root: Path | None = None,
          strict: bool = False, pretrained: Path | None = None, lock_path: Path | None = None,
          api_key: str | None = None, max_chars: int = 4096, max_queue: int = 256, verbose: bool = False,
          progress: Progress = lambda _: None) -> int:
    """Run until interrupted; UsageError (exit 2) before binding when the config cannot be served."""
    import uvicorn

    from ..errors import UsageError
    from .app import create_app
    from .service import Service

    service = Service(config, upstream, root=root, strict=strict, pretrained=pretrained, lock_path=lock_path,
                      max_queue=max_queue, max_chars=max_chars, verbose=verbose, progress=progress)
    try:
        report = service.start()
        table = service.table
        if not table.voices:
            raise UsageError(f"{config} has no voice that can be served"
                             + (f" ({len(report.problems)} skipped, reasons above)" if report.problems else ""),
                             hint="fix the entries (docs/serve.md), then start again")
        auth = "; bearer token required on /v1/" if api_key else ""
        progress(f"{len(table.voices)} voice(s) ready ({', '.join(sorted(table.voices))}), {len(table.problems)} "
                 f"skipped, {len(table.inactive)} inactive; {len(service.models.instances)} model(s) loaded")
        progress(f"listening on http://{host}:{port}/ (POST /v1/audio/speech, GET /v1/voices, POST /v1/reload){auth}")
        server = uvicorn.Server(uvicorn.Config(create_app(service, api_key=api_key), host=host, port=port,
                                               log_level="warning", access_log=False, lifespan="off"))
        server.run()
    finally:
        service.close()
    return 0
