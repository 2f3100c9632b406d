"""Errors in OpenAI's JSON shape ({"error": {"message", "type", "param", "code"}}), shared by every route."""

from __future__ import annotations

from typing import Optional

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """Raised by a route: answered with `status` and OpenAI's error body, the server goes on serving."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param=None, code=None, kind=None) -> JSONResponse:
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")  # OpenAI's types (401 too)
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param,
                                                               "code": code}})
