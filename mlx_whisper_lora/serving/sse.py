"""`stream=true`: a transcription as OpenAI's server-sent events, each segment sent as it is decoded.

Events (what OpenAI's clients parse, openai/types/audio/transcription_*_event.py):
`data: {"type": "transcript.text.delta", "delta": TEXT}` per segment, then
`data: {"type": "transcript.text.done", "text": FULL TEXT}`; an error after the stream began is
`data: {"type": "error", "error": {...}}` (OpenAI's client raises it as an APIError).
The worker thread hands each window's segments over through the event loop (thread-safe), so the
first delta leaves while later windows are still being decoded.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator, Callable, List

from fastapi.responses import StreamingResponse

from ..errors import UserError

_DONE = object()


def event(payload: dict) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def stream_transcription(submit: Callable, state: dict) -> StreamingResponse:
    """Start the request with `submit(on_segments) -> Future` and answer with its segments as events.
    `state` (the request's) gets decode_seconds when the result is in, for the access log and metrics."""
    loop = asyncio.get_running_loop()
    queue: "asyncio.Queue" = asyncio.Queue()

    def on_segments(segments: List[dict]) -> None:  # on the worker thread
        loop.call_soon_threadsafe(queue.put_nowait, [s["text"] for s in segments])

    started = time.perf_counter()
    future = submit(on_segments)  # raises (busy, unknown model) before any byte is sent: a JSON error then
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, _DONE))

    async def events() -> AsyncIterator[bytes]:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            for text in item:
                yield event({"type": "transcript.text.delta", "delta": text})
        state["decode_seconds"] = time.perf_counter() - started
        try:
            result = future.result()
        except UserError as e:
            yield event({"type": "error", "error": {"message": str(e), "type": "invalid_request_error",
                                                    "param": None, "code": None}})
            return
        except Exception as e:  # noqa: BLE001 - the stream has begun: the error is its last event
            yield event({"type": "error", "error": {"message": f"{type(e).__name__}: {e}", "type": "server_error",
                                                    "param": None, "code": None}})
            return
        yield event({"type": "transcript.text.done", "text": result["text"]})

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
