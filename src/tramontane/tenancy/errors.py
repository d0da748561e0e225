"""The errors tenancy raises, rendered as OpenAI error bodies.

Kept apart from the server's own error type so that this package (and the CLI
built on it) imports without the inference engine."""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}


class TenancyError(Exception):
    """An HTTP-shaped failure: status, message, and OpenAI's `code`/`param`."""

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
        return _TYPES.get(self.status, "invalid_request_error")

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


class NotFound(TenancyError):
    def __init__(self, what: str, ident: str):
        super().__init__(404, f"No {what} with id '{ident}'", code=f"{what.lower().replace(' ', '_')}_not_found")


class Conflict(TenancyError):
    def __init__(self, message: str):
        super().__init__(409, message, code="conflict")


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TenancyError)
    return exc.response()


def install_error_handler(app: FastAPI) -> None:
    app.add_exception_handler(TenancyError, _handle)
