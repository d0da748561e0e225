"""Tenancy raises the platform's error kinds (`tramontane.errors`); this module names
a missing object the same way everywhere and renders the kinds on an app that
tenancy guards without the rest of the platform (the deployments router, tests)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse

from ..errors import APIError, NotFound, TramontaneError, as_api_error


def not_found(what: str, ident: str, *, code: str | None = None, param: str | None = None) -> NotFound:
    """"No <what> with id '<ident>'"; the code defaults to `<what>_not_found`."""
    code = code or f"{what.lower().replace(' ', '_').replace('-', '_')}_not_found"
    return NotFound(f"No {what} with id '{ident}'", code=code, param=param)


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    return as_api_error(exc).response()


def install_error_handler(app: FastAPI) -> None:
    for kind in (TramontaneError, APIError):
        app.add_exception_handler(kind, _handle)
