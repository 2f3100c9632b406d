"""What an operator watches: Prometheus metrics (prometheus-client) and one access-log line per request.

Both come from one ASGI middleware (`Observed`) that sees every response's status and last byte,
so a streamed transcription is logged and timed when its last event is sent, not when it starts.
Routes put what they know about a request (model, response format, audio and decode seconds) in
`request.state`; the middleware reads it from the scope. Metric labels come only from checked
values (`state["labels"]`, set once model and format are known good), else "unknown". Each app has
its own registry, so two servers in one process (tests) do not share counters.
"""

from __future__ import annotations

import json
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

ACCESS_LOG = logging.getLogger("mlx_whisper_lora.access")
PREFIX = "mlx_whisper_lora"
SECONDS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
AUDIO_SECONDS = (1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200)


class Metrics:
    """The server's metrics in their own registry; `exposition()` is the /metrics body."""

    def __init__(self, worker):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(f"{PREFIX}_requests", "Audio API requests answered, by model, HTTP status and "
                                "response format", ["model", "status", "response_format"], registry=r)
        self.latency = Histogram(f"{PREFIX}_request_seconds", "Time from a request's arrival to its last byte",
                                 ["model"], buckets=SECONDS, registry=r)
        self.decode = Histogram(f"{PREFIX}_decode_seconds", "Time from queueing a request's audio to its result",
                                ["model"], buckets=SECONDS, registry=r)
        self.audio = Histogram(f"{PREFIX}_audio_seconds", "Duration of the audio transcribed", ["model"],
                               buckets=AUDIO_SECONDS, registry=r)
        self.in_progress = Gauge(f"{PREFIX}_requests_in_progress", "Audio API requests being answered", registry=r)
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "Requests decoded together in one batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        queue = Gauge(f"{PREFIX}_queue_depth", "Requests waiting for the model", registry=r)
        queue.set_function(lambda: worker.pending)
        adapters = Gauge(f"{PREFIX}_adapters_loaded", "Adapters loaded on the base model", registry=r)
        adapters.set_function(lambda: len(worker.bank.adapters) if worker.bank is not None else 0)
        worker.batch_listeners.append(self.batch_size.observe)

    def exposition(self):
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Observed:
    """ASGI middleware: times each HTTP request, counts audio requests, writes the access-log line."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        start = time.perf_counter()
        status = {"code": 500}
        audio = scope["path"].startswith("/v1/audio/")
        if audio:
            self.metrics.in_progress.inc()

        async def observed_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.finish(scope, state, status["code"], time.perf_counter() - start, audio)
                audio_done.append(True)

        audio_done = []
        try:
            await self.app(scope, receive, observed_send)
        finally:
            if not audio_done:  # the client left or the app failed before the last byte
                self.finish(scope, state, status["code"] if status["code"] != 500 else 499, time.perf_counter() - start,
                            audio)

    def finish(self, scope, state: dict, status: int, seconds: float, audio: bool) -> None:
        # labels only from checked values (a served model, a known format): a client's made-up model names
        # must not grow the number of series without bound
        model, response_format = state.get("labels") or ("unknown", "unknown")
        if audio:
            self.metrics.in_progress.dec()
            self.metrics.requests.labels(model, str(status), response_format).inc()
            self.metrics.latency.labels(model).observe(seconds)
            if status < 400 and state.get("audio_seconds") is not None:
                self.metrics.audio.labels(model).observe(state["audio_seconds"])
            if state.get("decode_seconds") is not None:
                self.metrics.decode.labels(model).observe(state["decode_seconds"])
        line = {"method": scope.get("method"), "path": scope["path"], "status": status, "model": state.get("model"),
                "response_format": state.get("response_format"), "stream": state.get("stream"),
                "audio_seconds": _round(state.get("audio_seconds")), "decode_seconds": _round(state.get("decode_seconds")),
                "seconds": round(seconds, 3), "client": (scope.get("client") or [None])[0]}
        ACCESS_LOG.info(json.dumps({k: v for k, v in line.items() if v is not None}))


def _round(value):
    return None if value is None else round(float(value), 3)
