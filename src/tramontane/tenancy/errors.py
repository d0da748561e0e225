"""The errors tenancy raises, rendered as OpenAI error bodies.

Built on the platform's light `APIError`, so this package (and the CLI built on it)
imports without the inference engine."""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse

from ..errors import APIError


class TenancyError(APIError):
    """An authentication, authorisation, limit or admin failure."""


class NotFound(TenancyError):
    """404 "No <what> with id '<ident>'"; the code defaults to `<what>_not_found`."""

    def __init__(self, what: str, ident: str, *, code: str | None = None, param: str | None = None):
        code = code or f"{what.lower().replace(' ', '_').replace('-', '_')}_not_found"
        super().__init__(404, f"No {what} with id '{ident}'", code=code, param=param)


class Conflict(TenancyError):
    def __init__(self, message: str):
        super().__init__(409, message, code="conflict")


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TenancyError)
    return exc.response()


def install_error_handler(app: FastAPI) -> None:
    app.add_exception_handler(TenancyError, _handle)
