"""Error bodies and the exception handlers that produce them.

Every error is `{"error": {"message", "type", "param", "code"}}`, the shape both
SDKs read, except request validation, which keeps FastAPI's 422 `{"detail": [...]}`
because the Mistral SDK parses exactly that.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from ..engine.errors import EngineDeadError, EngineOverloadedError, InvalidRequestError
from ..errors import APIError

logger = logging.getLogger("tramontane.server")

def model_not_found(name: str) -> APIError:
    return APIError(404, f"The model '{name}' does not exist", code="model_not_found", param="model")


def from_engine_error(exc: Exception) -> APIError:
    """Maps the engine's errors (and anything unexpected) to an API error."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidRequestError):
        return APIError(400, str(exc), param=exc.param, code="invalid_request")
    if isinstance(exc, EngineOverloadedError):
        return APIError(503, str(exc), code="engine_overloaded", retry_after_s=exc.retry_after_s)
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc), code="engine_dead")
    logger.exception("unhandled error", exc_info=exc)
    return APIError(500, "Internal server error", code="internal_error")


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    return from_engine_error(exc).response()


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
    for exc_type in (APIError, InvalidRequestError, EngineOverloadedError, EngineDeadError):
        app.add_exception_handler(exc_type, _api_error)
