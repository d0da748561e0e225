"""The platform's errors, in two kinds.

Domain errors say what went wrong in the domain's words; the layer that finds the
problem raises one, and the HTTP edge (`server/errors.py`) alone turns its kind into a
status and an OpenAI/Mistral error body:

    TramontaneError       a domain error: message, code, param, retry_after_s
     +-- NotFound         no such object, or one the caller may not see (404)
     +-- Conflict         the object's state forbids the operation now (409)
     +-- Invalid          a malformed or out-of-range request; `param` names the field (400)
     |    +-- TooLarge    a body, file, image or output over its size limit (413)
     +-- Unauthorized     no valid credential (401)
     +-- Forbidden        a valid credential without the right (403)
     +-- Limited          one of the caller's quotas or rate limits (429, Retry-After)
     +-- Unavailable      the platform cannot do it now: overloaded, starting, draining (503)

`APIError` is an error already in HTTP's terms, for the edge's own use.

Light on purpose (no engine, no torch), so every package and the CLI can raise them."""

from __future__ import annotations

import math

from starlette.responses import JSONResponse

__all__ = [
    "APIError", "Conflict", "Forbidden", "Invalid", "Limited", "NotFound", "TooLarge",
    "TramontaneError", "Unauthorized", "Unavailable",
]


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


class Unauthorized(TramontaneError):
    default_code = "unauthorized"


class Forbidden(TramontaneError):
    default_code = "forbidden"


class Limited(TramontaneError):
    default_code = "rate_limited"


class Unavailable(TramontaneError):
    default_code = "unavailable"


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
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())
