"""Errors the engine raises, each of the platform's kinds (`tramontane.errors`); the
HTTP edge alone gives them a status."""

from ..errors import Invalid, TramontaneError, Unavailable


class EngineError(TramontaneError):
    """Base class for every error the engine reports to callers. One of no more
    specific kind (a model that cannot load) is the platform's fault, not the request's."""


class InvalidRequestError(EngineError, Invalid, ValueError):
    """The request can never succeed as sent."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, code="invalid_request", param=param)


class EngineOverloadedError(EngineError, Unavailable):
    """The engine is full right now; the client should retry later."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message, code="engine_overloaded", retry_after_s=retry_after_s)


class ModelLoadError(EngineError):
    """A model path is missing, unreadable, corrupt or of an unsupported architecture."""


class EngineDeadError(EngineError, Unavailable):
    """The engine loop crashed; requests cannot be served until it is restarted."""

    def __init__(self, message: str):
        super().__init__(message, code="engine_dead")
