"""The HTTP API of `cosyext serve` (FastAPI): OpenAI's speech endpoint, voices, health, reload, a page.

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: malformed JSON 400,
a bad field (empty text, text over the limit, unknown format, speed out of range) 422, an unknown,
inactive or skipped voice 404 with the served voices in ``error.voices``, a full queue 503, a failed
synthesis 500. With an API key, every ``/v1/`` route wants ``Authorization: Bearer KEY`` (401);
``/healthz`` and the page itself stay open (the page asks for the key).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..errors import CosyextError, EnvironmentProblem, UsageError
from . import audio
from .page import PAGE
from .service import QueueFull, Service, VoiceNotFound

MIN_SPEED, MAX_SPEED = 0.25, 4.0
DEFAULT_FORMAT = "mp3"  # OpenAI's default
_END = object()


class BadField(Exception):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def error(status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
          code: str | None = None, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code, **extra}},
                        status_code=status, headers=headers)


def parse_speech(doc: Any, max_chars: int) -> dict:
    """The request's fields, checked (BadField -> 422)."""
    if not isinstance(doc, dict):
        raise BadField("", "the body must be a JSON object")
    text = doc.get("input")
    if not isinstance(text, str):
        raise BadField("input", "input (the text to say) is required and must be a string")
    if not text.strip():
        raise BadField("input", "input is empty")
    if len(text) > max_chars:
        raise BadField("input", f"input has {len(text)} characters; this server takes at most {max_chars}")
    voice = doc.get("voice")
    if isinstance(voice, dict):  # newer OpenAI clients may send {"id": NAME}
        voice = voice.get("id")
    if voice is not None and not isinstance(voice, str):
        raise BadField("voice", "voice must be a voice name (GET /v1/voices)")
    model = doc.get("model")
    if model is not None and not isinstance(model, str):
        raise BadField("model", "model must be a string")
    fmt = doc.get("response_format") or DEFAULT_FORMAT
    if fmt not in audio.FORMATS:
        raise BadField("response_format", f"response_format {fmt!r} is not one of {', '.join(audio.FORMATS)}")
    if fmt == "mp3" and audio.ffmpeg() is None:
        raise BadField("response_format", "mp3 needs ffmpeg, which this server does not have: ask for wav or pcm")
    speed = doc.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed) \
            or not MIN_SPEED <= speed <= MAX_SPEED:
        raise BadField("speed", f"speed must be a number from {MIN_SPEED} to {MAX_SPEED}, got {speed!r}")
    stream = doc.get("stream", False)
    sf = doc.get("stream_format")
    if sf is not None:
        if sf != "audio":
            raise BadField("stream_format", f"stream_format {sf!r} is not supported (only 'audio': chunked audio)")
        stream = True
    if not isinstance(stream, bool):
        raise BadField("stream", "stream must be true or false")
    if stream and speed != 1.0:
        raise BadField("speed", "upstream changes speed only offline: use speed 1.0 with stream, or stream false")
    seed = doc.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise BadField("seed", "seed must be a non-negative integer")
    return {"text": text, "voice": voice, "format": fmt, "speed": float(speed), "stream": stream, "seed": seed}


def create_app(service: Service, *, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="cosyext serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
                return error(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                             kind="authentication_error", code="invalid_api_key")
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/healthz")
    async def healthz() -> dict:
        return service.health()

    @app.get("/v1/voices")
    async def voices() -> dict:
        return service.describe()

    @app.post("/v1/reload")
    async def reload() -> JSONResponse:
        try:
            report = await run_in_threadpool(service.reload)
        except CosyextError as exc:
            return error(422, str(exc) + (f" (next: {exc.hint})" if exc.hint else ""), code="config_refused")
        return JSONResponse(report.as_dict())

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        body = await request.body()
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return error(400, f"the body is not valid JSON: {exc}", code="malformed_json")
        try:
            req = parse_speech(doc, service.max_chars)
        except BadField as exc:
            return error(422, str(exc), param=exc.param or None, code="invalid_value")
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue = asyncio.Queue()
        emit = (lambda c: loop.call_soon_threadsafe(chunks.put_nowait, c)) if req["stream"] else None
        try:
            voice, fut = service.submit(req["voice"], req["text"], seed=req["seed"], stream=req["stream"],
                                        speed=req["speed"], emit=emit)
        except VoiceNotFound as exc:
            return error(404, str(exc), param="voice", code="voice_not_found", voices=exc.available)
        except QueueFull as exc:
            return error(503, str(exc), kind="server_error", code="queue_full")
        rate = voice.instance.sample_rate
        headers = {"X-Voice": voice.name, "X-Seed": str(req["seed"]), "X-Sample-Rate": str(rate)}
        media = audio.CONTENT_TYPES[req["format"]]
        if not req["stream"]:
            try:
                samples = await asyncio.wrap_future(fut)
                content = await run_in_threadpool(audio.encode, samples, req["format"], rate)
            except Exception as exc:  # noqa: BLE001 - any failure of this request is this request's 500
                return _failed(exc)
            return Response(content, media_type=media, headers=headers)
        fut.add_done_callback(lambda f: loop.call_soon_threadsafe(chunks.put_nowait, _END))
        first = await chunks.get()
        if first is _END:
            exc = fut.exception()
            return _failed(exc) if exc is not None else error(500, "no audio was produced", kind="server_error")

        async def generated():
            item = first
            while item is not _END:
                yield item
                item = await chunks.get()
            exc = fut.exception()
            if exc is not None:  # mid-stream: cut the response short, the client sees an incomplete body
                raise exc

        return StreamingResponse(audio.stream(generated(), req["format"], rate), media_type=media, headers=headers)

    return app


def _failed(exc: BaseException) -> JSONResponse:
    if isinstance(exc, EnvironmentProblem):
        return error(500, f"{exc} ({exc.hint})" if exc.hint else str(exc), kind="server_error", code="encoder_failed")
    if isinstance(exc, UsageError):
        return error(422, str(exc), code="invalid_value")
    return error(500, f"synthesis failed: {exc}", kind="server_error", code="synthesis_failed")


__all__ = ["create_app", "parse_speech"]
