"""The HTTP edge's exception handlers: every error leaves as
`{"error": {"message", "type", "param", "code"}}`, the shape both SDKs read, with
its status from the one table in `tramontane.errors` (`as_api_error`).

Request validation keeps FastAPI's 422 `{"detail": [...]}` because the Mistral SDK
parses exactly that.
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from ..errors import APIError, TramontaneError, as_api_error


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    return as_api_error(exc).response()


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method, body too large while read)."""
    assert isinstance(exc, HTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    message = exc.detail if isinstance(exc.detail, str) else phrase
    code = "request_too_large" if exc.status_code == 413 else phrase.lower().replace(" ", "_")
    error = APIError(exc.status_code, message, code=code)
    response = error.response()
    response.headers.update(exc.headers or {})
    return response


def install_error_handlers(app: FastAPI) -> None:
    # RequestValidationError keeps FastAPI's own handler (the 422 `detail` shape).
    app.add_exception_handler(HTTPException, _http_error)
    # Anything else is turned into a 500 by RequestContextMiddleware.
    for exc_type in (APIError, TramontaneError):
        app.add_exception_handler(exc_type, _api_error)
