"""Serve Whisper and its adapters over OpenAI's audio API (FastAPI + uvicorn).

    python -m mlx_whisper_lora.serve [--model M] [--adapter NAME=PATH ...] [--host 127.0.0.1] [--port 8000]
                                     [--backend mlx|torch] [--quantize int8] [--api-key KEY ...]
                                     [--admin-key KEY --adapter-root DIR] [--drain-seconds 30]

One base model is loaded once; every adapter is applied to it per request (`model` = the adapter's
name, or the base's), so one process serves many voices, languages or customers. Requests that
arrive together are decoded as one batch, adapters mixed (adapter_bank/bank.py). The demo page
is at http://HOST:PORT/. With no --adapter, the bundled demo adapter is served as "demo".
docs/serving.md lists the endpoints (/v1/..., /health, /ready, /metrics) and what each flag guards.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional

from .errors import UserError, cli_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_whisper_lora.serve", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None,
                   help="base model: folder, hub id, .pt file or short name (default: the first adapter's base, "
                        "else tiny.en)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                   help="an adapter folder served as model NAME (repeat for more; default: the bundled demo adapter "
                        "as 'demo')")
    p.add_argument("--no-demo-adapter", action="store_true", help="with no --adapter: serve the base model alone")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", default=None, choices=["mlx", "torch"],
                   help="default: mlx where installed; torch with --quantize or without MLX")
    p.add_argument("--quantize", default=None, choices=["int8"],
                   help="int8 base products on an x86 CPU (torch back end); adapters stay in float32 beside them")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="torch back end device")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--max-batch", type=int, default=8, help="most requests decoded together (default: 8)")
    p.add_argument("--max-pending", type=int, default=64,
                   help="most requests waiting; more get HTTP 429 (default: 64)")
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest upload accepted (default: 25, as OpenAI)")
    p.add_argument("--max-minutes", type=float, default=120.0, help="longest audio accepted (default: 120)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="every /v1/ request needs Authorization: Bearer KEY (repeat for more keys; also "
                        "MLX_WHISPER_LORA_API_KEY, comma-separated)")
    p.add_argument("--allow-no-auth", action="store_true",
                   help="serve a non-loopback --host with no API key (refused otherwise)")
    p.add_argument("--admin-key", action="append", default=[], metavar="KEY",
                   help="enables POST /v1/adapters and DELETE /v1/adapters/NAME for this key (also "
                        "MLX_WHISPER_LORA_ADMIN_KEY); without it they answer 403")
    p.add_argument("--adapter-root", default=None, metavar="DIR",
                   help="the only folder adapters may be added from at run time (POST /v1/adapters)")
    p.add_argument("--drain-seconds", type=float, default=30.0,
                   help="on SIGTERM: how long requests in flight may take to finish (default: 30)")
    return p


def model_name(model: Optional[str], adapters: Dict) -> str:
    from .formats.adapter_files import read_adapter_config

    if model:
        return model
    for path in adapters.values():
        base = read_adapter_config(path).base_model
        if base:
            return base
    return "tiny.en"


def start_worker(model: str, adapters: Dict, backend: str = "mlx", dtype: str = "float32", device=None,
                 max_batch: int = 8, max_pending: int = 64, quantize: Optional[str] = None):
    """A started worker holding `model` and `adapters` ({name: path}); load errors are raised here."""
    from .adapter_bank.bank import AdapterBank
    from .serving.worker import Worker
    from .load import load_for_inference

    def load():
        bank = AdapterBank(load_for_inference(model, None, dtype, backend, device, quantize=quantize), backend)
        for name, path in adapters.items():
            bank.add(name, path)
        return bank

    return Worker(load, max_batch=max_batch, max_pending=max_pending).start()


def check_port(host: str, port: int) -> None:
    """Fail in one line, before loading the model, when the address cannot be bound."""
    import socket

    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: use 0-65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: {e.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}; pass another --port") from None


@cli_entry
def main(argv=None):
    from .adapter_bank.bank import adapter_paths
    from .assets_dir import DEMO_ADAPTER

    args = build_parser().parse_args(argv)
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (uploads)
        import prometheus_client  # noqa: F401  (/metrics)
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise UserError(f"serving needs {e.name.replace('_', '-')}: pip install 'mlx-whisper-lora[serve]'") from None
    from .serving.auth import ADMIN_KEY_ENV, API_KEY_ENV, Keys, check_exposure, keys_from

    keys = Keys(keys_from(args.api_key, API_KEY_ENV), keys_from(args.admin_key, ADMIN_KEY_ENV))
    check_exposure(args.host, keys.api, args.allow_no_auth)
    adapter_root = None
    if args.adapter_root:
        adapter_root = Path(args.adapter_root).resolve()
        if not adapter_root.is_dir():
            raise UserError(f"--adapter-root {args.adapter_root}: no such folder")
    if keys.admin and adapter_root is None:
        print("note: --admin-key without --adapter-root: adapters can be removed at run time but not added",
              file=sys.stderr)
    if args.drain_seconds < 0:
        raise UserError(f"--drain-seconds {args.drain_seconds:g}: use 0 or more")
    adapters = adapter_paths(args.adapter)
    if not adapters and not args.no_demo_adapter and args.model in (None, "tiny.en"):
        adapters = {"demo": DEMO_ADAPTER}
    check_port(args.host, args.port)
    base = model_name(args.model, adapters)
    from .serving.app import BASE_ALIASES, Limits, create_app

    for name in adapters:
        if name == base or name in BASE_ALIASES:
            raise UserError(f"--adapter {name}=...: {name!r} names the base model here; give the adapter another name")

    print(f"loading {base} with {len(adapters)} adapter(s): {', '.join(adapters) or 'none'}", file=sys.stderr)
    from .load import default_inference_backend

    backend = args.backend or default_inference_backend(args.quantize)
    worker = start_worker(base, adapters, backend, args.dtype, args.device, args.max_batch, args.max_pending,
                          args.quantize)
    limits = Limits(args.max_upload_mb, args.max_minutes * 60)
    app = create_app(worker, base, limits, keys, adapter_root)
    if not keys.api:
        print(f"note: no --api-key: anyone who reaches {args.host}:{args.port} may use the API", file=sys.stderr)
    print(f"serving on http://{args.host}:{args.port}/ (demo page), API at /v1/audio/transcriptions", file=sys.stderr)
    from .serving.lifecycle import exit_now, log_access_to_stderr, serve

    log_access_to_stderr(args.log_level)
    try:
        serve(app, args.host, args.port, args.log_level, args.drain_seconds)
    finally:
        worker.stop(timeout=max(1.0, args.drain_seconds))
    print("stopped", file=sys.stderr)
    exit_now(0)  # (not `return 0`: see exit_now)


if __name__ == "__main__":
    main()
