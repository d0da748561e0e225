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
from ..errors import (
    APIError, Conflict, Forbidden, Invalid, Limited, NotFound, TooLarge, TramontaneError, Unauthorized, Unavailable,
)

logger = logging.getLogger("tramontane.server")

def model_not_found(name: str) -> APIError:
    return APIError(404, f"The model '{name}' does not exist", code="model_not_found", param="model")


# The one table from a domain error's kind to its HTTP status; the most specific
# kind comes first (TooLarge before Invalid).
STATUS_OF_KIND: tuple[tuple[type[TramontaneError], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (TooLarge, 413),
    (Invalid, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (Limited, 429),
    (Unavailable, 503),
)


def from_domain_error(exc: TramontaneError) -> APIError:
    status = next((status for kind, status in STATUS_OF_KIND if isinstance(exc, kind)), 500)
    return APIError(status, exc.message, code=exc.code, param=exc.param, retry_after_s=exc.retry_after_s)


def from_engine_error(exc: Exception) -> APIError:
    """Maps domain and engine errors (and anything unexpected) to an API error."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, TramontaneError):
        return from_domain_error(exc)
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
    for exc_type in (APIError, TramontaneError, InvalidRequestError, EngineOverloadedError, EngineDeadError):
        app.add_exception_handler(exc_type, _api_error)
