"""The HTTP API, OpenAI's audio endpoints on FastAPI: /v1/audio/transcriptions (streamed with
stream=true, sse.py), /v1/audio/translations, /v1/models, adapters added and removed at run time
(adapter_admin.py), /health, /ready and /metrics (metrics.py), and the demo page at /.

Every error is a JSON body in OpenAI's shape ({"error": {"message", "type", "param", "code"}}) with a
4xx status for the client's mistakes (not audio, empty, too large, unknown model, bad option), so
a bad upload never takes the server down. The model runs on the worker thread (worker.py).
With API keys (auth.py) every /v1/ request needs one; while draining (SIGTERM) /v1/ answers 503.
"""

import asyncio
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from ..assets_dir import DEMO_CLIP
from ..data.audio import SAMPLE_RATE
from ..errors import UserError
from ..adapter_bank.bank import BASE
from ..text.languages import LANGUAGES
from .adapter_admin import add_admin_routes
from .api_error import ApiError, error_body
from .auth import Keys
from .metrics import Metrics, Observed
from .sse import stream_transcription
from .worker import AdapterGone, CallOptions, ServerBusy, Worker, fallback_temperatures

STATIC = Path(__file__).resolve().parent / "static"
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
BASE_ALIASES = ("whisper-1",)  # what OpenAI clients send by default names the base model


@dataclass
class Limits:
    max_upload_mb: float = 25.0  # OpenAI's own limit
    max_seconds: float = 2 * 3600.0

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


def create_app(worker: Worker, base_name: str, limits: Limits = Limits(), keys: Keys = Keys(),
               adapter_root: Optional[Path] = None):
    """The FastAPI app over a started worker; `base_name` is the id the base model is served under.
    `app.state.draining = True` (lifecycle.py sets it on SIGTERM) refuses new /v1/ requests with 503.
    (No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations.)"""

    app = FastAPI(title="mlx-whisper-lora", description="OpenAI-compatible Whisper transcription with LoRA adapters")
    app.state.draining = False
    created = int(time.time())
    metrics = Metrics(worker)

    @app.middleware("http")
    async def gate(request: Request, call_next):
        path = request.url.path
        if path.startswith("/v1/") and app.state.draining:
            return error_body(503, "the server is shutting down; retry on another instance", None, "shutting_down")
        if path.startswith("/v1/") and not path.startswith("/v1/adapters") \
                and not keys.allows(request.headers.get("authorization")):
            return error_body(401, "a valid API key is needed: send Authorization: Bearer KEY (the server's "
                                   "--api-key)", None, "invalid_api_key")
        return await call_next(request)

    app.add_middleware(Observed, metrics=metrics)  # outermost: 401s and 503s are logged and counted too

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_body(e.status, e.message, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return error_body(400, f"{where or 'request'}: {first.get('msg', 'invalid request')}", where)

    def adapter_for(model: Optional[str]) -> Optional[str]:
        if not model or model == base_name or model in BASE_ALIASES:
            return BASE
        if model in worker.bank.adapters:
            return model
        served = ", ".join([base_name] + sorted(worker.bank.adapters))
        raise ApiError(404, f"model {model!r} is not served here; use one of: {served}", "model", "model_not_found")

    async def read_upload(file: UploadFile) -> bytes:
        data = await file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise ApiError(413, f"the file is larger than the server's limit of {limits.max_upload_mb:g} MB "
                                "(--max-upload-mb)", "file", "file_too_large")
        if not data:
            raise ApiError(400, "the uploaded file is empty", "file", "empty_file")
        return data

    def decode_audio(data: bytes, filename: str):
        from ..data.audio import load_audio

        suffix = Path(filename or "upload").suffix[:16] or ".audio"
        with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
            tmp.write(data)
            tmp.flush()
            try:
                audio = load_audio(tmp.name)
            except UserError as e:
                message = str(e).replace(tmp.name, filename or "the upload")
                raise ApiError(400, f"not audio this server can read: {message}", "file", "invalid_audio") from None
        if audio.size == 0:
            raise ApiError(400, "the uploaded audio holds no samples", "file", "empty_audio")
        if audio.size / SAMPLE_RATE > limits.max_seconds:
            raise ApiError(413, f"the audio lasts {audio.size / SAMPLE_RATE / 60:.0f} min, over the server's limit of "
                                f"{limits.max_seconds / 60:.0f} min (--max-minutes)", "file", "audio_too_long")
        return audio

    async def handle(request: Request, task: str, file: UploadFile, model: Optional[str], language: Optional[str],
                     prompt: Optional[str], response_format: str, temperature: float, granularities: List[str],
                     hotwords: Optional[str] = None, stream: bool = False):
        request.state.model = model or base_name
        request.state.response_format = response_format
        request.state.stream = stream or None
        if response_format not in RESPONSE_FORMATS:
            raise ApiError(400, f"response_format {response_format!r}: use one of {', '.join(RESPONSE_FORMATS)}",
                           "response_format")
        if not 0.0 <= temperature <= 1.0:
            raise ApiError(400, f"temperature {temperature}: use a value from 0 to 1", "temperature")
        bad = sorted(set(granularities) - {"word", "segment"})
        if bad:
            raise ApiError(400, f"timestamp_granularities {bad[0]!r}: use word and/or segment", "timestamp_granularities")
        words = "word" in granularities
        if words and response_format != "verbose_json":
            raise ApiError(400, "word timestamps need response_format verbose_json", "timestamp_granularities")
        adapter = adapter_for(model)
        request.state.labels = (model or base_name, response_format)  # checked: safe as metric labels
        if language:
            from ..text.languages import language_code

            try:
                language = language_code(language)
            except ValueError as e:
                raise ApiError(400, str(e), "language") from None
        audio = await run_in_threadpool(decode_audio, await read_upload(file), file.filename)
        request.state.audio_seconds = audio.size / SAMPLE_RATE
        options = CallOptions(task=task, language=language, initial_prompt=prompt or None,
                              temperature=fallback_temperatures(temperature), word_timestamps=words,
                              hotwords=(hotwords or "").strip() or None)

        def submit(on_segments=None):
            try:
                return worker.submit(audio, adapter, options, on_segments)
            except ServerBusy as e:
                raise ApiError(429, str(e), None, "server_busy") from None
            except UserError as e:  # the adapter was removed since adapter_for looked
                raise ApiError(404, str(e), "model", "model_not_found") from None

        if stream:
            return stream_transcription(submit, request.scope.setdefault("state", {}))
        started = time.perf_counter()
        try:
            result = await asyncio.wrap_future(submit())
        except AdapterGone as e:
            raise ApiError(404, str(e), "model", "model_not_found") from None
        except UserError as e:
            raise ApiError(400, str(e)) from None
        finally:
            request.state.decode_seconds = time.perf_counter() - started
        return render(result, response_format, task, audio.size / SAMPLE_RATE, words)

    def render(result: dict, response_format: str, task: str, duration: float, words: bool):
        from ..formats.transcript_writers import write_srt, write_vtt

        if response_format == "json":
            return JSONResponse({"text": result["text"]})
        if response_format == "text":
            return PlainTextResponse(result["text"])
        if response_format in ("srt", "vtt"):
            out = io.StringIO()
            (write_srt if response_format == "srt" else write_vtt)(result, out)
            return PlainTextResponse(out.getvalue(), media_type="text/vtt" if response_format == "vtt" else "text/plain")
        segments = [{k: s[k] for k in ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                                       "compression_ratio", "no_speech_prob")} for s in result["segments"]]
        language = LANGUAGES.get(result["language"], result["language"])  # OpenAI names it: "english"
        body = {"task": task, "language": language, "duration": round(duration, 3), "text": result["text"],
                "segments": segments}
        if words:
            body["words"] = [{"word": w["word"], "start": w["start"], "end": w["end"], "probability": w["probability"]}
                             for s in result["segments"] for w in s.get("words", [])]
        return JSONResponse(body)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request, file: UploadFile = File(...), model: Optional[str] = Form(None),
                             language: Optional[str] = Form(None), prompt: Optional[str] = Form(None),
                             response_format: str = Form("json"), temperature: float = Form(0.0),
                             timestamp_granularities: List[str] = Form([], alias="timestamp_granularities[]"),
                             timestamp_granularities_plain: List[str] = Form([], alias="timestamp_granularities"),
                             hotwords: Optional[str] = Form(None), stream: bool = Form(False)):
        return await handle(request, "transcribe", file, model, language, prompt, response_format, temperature,
                            timestamp_granularities + timestamp_granularities_plain, hotwords, stream)

    @app.post("/v1/audio/translations")
    async def translations(request: Request, file: UploadFile = File(...), model: Optional[str] = Form(None),
                           prompt: Optional[str] = Form(None), response_format: str = Form("json"),
                           temperature: float = Form(0.0), hotwords: Optional[str] = Form(None)):
        if not worker.bank.model.is_multilingual:
            raise ApiError(400, f"{base_name} is English-only; translation needs a multilingual model", "model")
        return await handle(request, "translate", file, model, None, prompt, response_format, temperature, [],
                            hotwords)

    @app.get("/v1/models")
    async def models():
        data = [{"id": base_name, "object": "model", "created": created, "owned_by": "mlx-whisper-lora"}]
        for name, adapter in sorted(worker.bank.adapters.items()):
            data.append({"id": name, "object": "model", "created": created, "owned_by": "mlx-whisper-lora",
                         "root": base_name, "adapter": {"fine_tune_type": adapter.config.fine_tune_type,
                                                        "rank": adapter.config.rank, "bytes": adapter.size_bytes}})
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health():
        """Alive: the process answers (a load balancer's liveness probe)."""
        return {"status": "ok", "base": base_name, "adapters": sorted(worker.bank.adapters)}

    @app.get("/ready")
    async def ready():
        """Ready for traffic: the model is loaded, the queue has room, and the server is not draining."""
        why = ("draining" if app.state.draining else "model not loaded" if not worker.ready
               else "queue full" if worker.pending >= worker.max_pending else None)
        body = {"status": why or "ready", "queue_depth": worker.pending, "max_pending": worker.max_pending}
        return JSONResponse(body, status_code=503 if why else 200)

    @app.get("/metrics")
    async def prometheus_metrics():
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    add_admin_routes(app, worker, keys, adapter_root, {base_name, *BASE_ALIASES})

    @app.get("/")
    async def demo_page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/demo.flac")
    async def demo_clip():
        return FileResponse(DEMO_CLIP, media_type="audio/flac")

    return app
