"""The platform's errors, in two kinds.

Domain errors say what went wrong in the domain's words; the layer that finds the
problem raises one, and the HTTP edge (`server/errors.py`) alone turns its kind into a
status and an OpenAI/Mistral error body:

    TramontaneError       a domain error: message, code, param, retry_after_s
     +-- NotFound         no such object, or one the caller may not see (404)
     +-- Conflict         the object's state forbids the operation now (409)
     +-- Invalid          a malformed or out-of-range request; `param` names the field (400)
     |    +-- TooLarge    a body, file, image or output over its size limit (413)
     |    +-- Unprocessable  a body that fails its schema, outside FastAPI's own validation (422)
     +-- Unauthorized     no valid credential (401)
     +-- Forbidden        a valid credential without the right (403)
     +-- Limited          one of the caller's quotas or rate limits (429, Retry-After)
     +-- Unavailable      the platform cannot do it now: overloaded, starting, draining (503)
     +-- UpstreamFailed   a process serving the request for the platform failed mid-way (502)
     +-- ClientGone       the client closed the request before its answer (499, for logs and metrics)

`APIError` is an error already in HTTP's terms. `as_api_error` is the edge's one table
from a kind to its status (`STATUS_OF_KIND`); anything that is not a domain error
becomes a logged 500 whose body says nothing of its cause. The HTTP handlers that send
these bodies are installed by `server/errors.py`.

Light on purpose (no engine, no torch, no web framework at import), so every layer,
the engine and the CLI included, can raise them."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.responses import JSONResponse

__all__ = [
    "STATUS_OF_KIND", "APIError", "ClientGone", "Conflict", "Forbidden", "Invalid", "Limited", "NotFound", "TooLarge",
    "TramontaneError", "Unauthorized", "Unavailable", "Unprocessable", "UpstreamFailed", "as_api_error", "of_status",
]

log = logging.getLogger("tramontane.errors")


class TramontaneError(Exception):
    """A domain error. `code` is a stable machine-readable word; `param` the request
    field at fault; `retry_after_s` when trying again later can succeed."""

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.retry_after_s = retry_after_s


class NotFound(TramontaneError):
    default_code = "not_found"


class Conflict(TramontaneError):
    default_code = "conflict"


class Invalid(TramontaneError):
    default_code = "invalid_request"


class TooLarge(Invalid):
    default_code = "too_large"


class Unprocessable(Invalid):
    """A body that parses but fails its schema where FastAPI does not validate it (a
    batch line): 422, the status the same body gets from the live endpoint."""

    default_code = "invalid_request"


class Unauthorized(TramontaneError):
    default_code = "unauthorized"


class Forbidden(TramontaneError):
    default_code = "forbidden"


class Limited(TramontaneError):
    default_code = "rate_limited"


class Unavailable(TramontaneError):
    default_code = "unavailable"


class UpstreamFailed(TramontaneError):
    default_code = "upstream_failed"


class ClientGone(TramontaneError):
    """The client closed the request; no one reads the answer, but logs and metrics
    count it apart from the platform's own failures."""

    default_code = "client_closed_request"


# OpenAI's error types, by status.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}


class APIError(Exception):
    """An error to send back as-is; raise it from routes and helpers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after_s = retry_after_s

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if self.retry_after_s is not None:
            # Whole seconds, rounded up: retrying at the advertised time must succeed.
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers

    def response(self) -> JSONResponse:
        from starlette.responses import JSONResponse

        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())


# The one table from a domain error's kind to its HTTP status; the most specific
# kind comes first (TooLarge before Invalid).
STATUS_OF_KIND: tuple[tuple[type[TramontaneError], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (TooLarge, 413),
    (Unprocessable, 422),
    (Invalid, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (Limited, 429),
    (Unavailable, 503),
    (UpstreamFailed, 502),
    (ClientGone, 499),  # nginx's "client closed request"
)


def of_status(status: int, message: str) -> TramontaneError:
    """The domain error that `as_api_error` shows with `status`: for an error that
    crossed a boundary as a status only (a run's in-band error event). A status of
    no kind is an error of no kind, shown as the generic 500."""
    kind = next((kind for kind, mapped in STATUS_OF_KIND if mapped == status), TramontaneError)
    return kind(message)


def as_api_error(exc: BaseException) -> APIError:
    """`exc` in HTTP's terms: a domain error by its kind; an unexpected error (or a
    domain error of no kind) as a logged 500 that tells the client nothing of it."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, TramontaneError):
        status = next((status for kind, status in STATUS_OF_KIND if isinstance(exc, kind)), None)
        if status is not None:
            return APIError(status, exc.message, code=exc.code, param=exc.param, retry_after_s=exc.retry_after_s)
    log.error("unhandled error", exc_info=exc)
    return APIError(500, "Internal server error", code="internal_error")
