"""Running the app until SIGTERM or Ctrl-C, then draining: uvicorn's own graceful shutdown.

On the signal the app is marked draining (new /v1/ requests get 503, /ready 503), uvicorn stops
accepting connections and waits up to `drain_seconds` for the requests in flight, then the worker
finishes what is queued. The process then exits 0: uvicorn re-raises the signal it caught once it
has shut down, and the handler installed here makes that re-raise a no-op instead of a kill.
"""

from __future__ import annotations

import logging
import signal
import sys

from .metrics import ACCESS_LOG


def log_access_to_stderr(level: str = "info") -> None:
    """One JSON line per request on stderr (the server's log), beside uvicorn's own lines."""
    if not ACCESS_LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s access %(message)s"))
        ACCESS_LOG.addHandler(handler)
        ACCESS_LOG.propagate = False
    ACCESS_LOG.setLevel(logging.INFO if level in ("info", "debug") else logging.WARNING)


def serve(app, host: str, port: int, log_level: str = "info", drain_seconds: float = 30.0) -> None:
    """Serve `app` until SIGTERM/SIGINT, then drain (see the module's docstring); returns after the drain."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if not app.state.draining:
                app.state.draining = True
                print(f"received {signal.Signals(sig).name}: draining (up to {drain_seconds:g} s for requests in "
                      "flight)", file=sys.stderr, flush=True)
            super().handle_exit(sig, frame)

    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                timeout_graceful_shutdown=drain_seconds)
        DrainingServer(config).run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def exit_now(code: int = 0) -> None:
    """End the process once the drain is done, skipping the interpreter's teardown: MLX used on a thread other
    than the main one (the worker's) can abort that teardown ("terminate called without an active exception",
    exit code -6; 5 of 15 runs of a script doing 50 products on a thread, MLX 0.32.4), which would turn a clean drain into
    a crash for the supervisor. Everything is answered, logged and flushed by then."""
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
