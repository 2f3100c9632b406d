"""Adding and removing adapters while the server runs: POST /v1/adapters, DELETE /v1/adapters/{name}.

Guarded by the admin key (none given: the routes answer 403), and confined to --adapter-root: the
folder asked for, and every file in it, must resolve (symlinks followed) inside that root, so a
client cannot make the server read anything else. Loading runs on the worker thread between
batches (worker.py), so requests in flight never see a half-loaded adapter; a bad adapter (another
base model, unreadable or NaN weights) is a 4xx naming why and leaves the bank as it was.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request

from ..errors import UserError
from .api_error import ApiError
from .auth import Keys
from .worker import Worker

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def confined(root: Optional[Path], asked: str) -> Path:
    """The folder `asked` (relative to `root`, or absolute) resolved, refused unless it and every file in it
    lie inside `root` once symlinks are followed."""
    if root is None:
        raise ApiError(403, "adding adapters needs --adapter-root DIR on the server (folders are read only under it)",
                       "path", "adapter_root_unset")
    root = root.resolve()
    folder = (root / asked).resolve()
    if not folder.is_relative_to(root):
        raise ApiError(403, f"{asked!r} is outside the server's --adapter-root", "path", "outside_adapter_root")
    if not folder.is_dir():
        raise ApiError(404, f"{asked!r}: no such adapter folder under --adapter-root", "path", "adapter_not_found")
    for entry in folder.iterdir():
        if not entry.resolve().is_relative_to(root):
            raise ApiError(403, f"{asked!r}: {entry.name} links outside the server's --adapter-root", "path",
                           "outside_adapter_root")
    return folder


def add_admin_routes(app: FastAPI, worker: Worker, keys: Keys, adapter_root: Optional[Path], reserved) -> None:
    """The two admin routes on `app`; `reserved` holds the names that mean the base model."""

    def authorize(request: Request) -> None:
        if not keys.admin:
            raise ApiError(403, "adapter administration is disabled: start the server with --admin-key KEY",
                           None, "admin_disabled")
        if not keys.admin_allows(request.headers.get("authorization")):
            raise ApiError(401, "adapter administration needs the admin key (Authorization: Bearer ADMIN_KEY)",
                           None, "invalid_api_key")

    @app.post("/v1/adapters", status_code=201)
    async def add_adapter(request: Request):
        authorize(request)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ApiError(400, 'send JSON: {"name": NAME, "path": FOLDER under --adapter-root}')
        name, asked = body.get("name"), body.get("path", body.get("folder"))
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ApiError(400, f"name {name!r}: use 1-64 letters, digits, '.', '_', ':' or '-'", "name")
        if name in reserved:
            raise ApiError(409, f"name {name!r} names the base model; give the adapter another name", "name",
                           "name_taken")
        if name in worker.bank.adapters:
            raise ApiError(409, f"an adapter named {name!r} is already loaded; DELETE it first", "name", "name_taken")
        if not isinstance(asked, str) or not asked:
            raise ApiError(400, "path: the adapter folder, relative to --adapter-root", "path")
        folder = confined(adapter_root, asked)
        try:
            adapter = await asyncio.wrap_future(worker.run_on_thread(lambda: worker.bank.add(name, folder)))
        except UserError as e:
            raise ApiError(422 if "already" not in str(e) else 409, f"cannot load {asked!r}: {e}", "path",
                           "invalid_adapter") from None
        except (OSError, ValueError, KeyError) as e:
            raise ApiError(422, f"cannot load {asked!r}: {type(e).__name__}: {e}", "path", "invalid_adapter") from None
        return {"id": name, "object": "model", "adapter": {"fine_tune_type": adapter.config.fine_tune_type,
                                                             "rank": adapter.config.rank, "bytes": adapter.size_bytes}}

    @app.delete("/v1/adapters/{name}")
    async def remove_adapter(name: str, request: Request):
        authorize(request)
        if name not in worker.bank.adapters:
            raise ApiError(404, f"no adapter named {name!r} is loaded", "name", "model_not_found")
        try:
            await asyncio.wrap_future(worker.run_on_thread(lambda: worker.bank.remove(name)))
        except UserError as e:  # removed by another call meanwhile
            raise ApiError(404, str(e), "name", "model_not_found") from None
        return {"id": name, "object": "model", "deleted": True}
