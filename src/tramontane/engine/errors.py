"""Errors the engine raises; the server maps each to an HTTP status."""


class EngineError(Exception):
    """Base class for every error the engine reports to callers."""


class InvalidRequestError(EngineError, ValueError):
    """The request can never succeed as sent (maps to 400)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class EngineOverloadedError(EngineError):
    """The engine is full right now; the client should retry later (maps to 503)."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelLoadError(EngineError):
    """A model path is missing, unreadable, corrupt or of an unsupported architecture."""


class EngineDeadError(EngineError):
    """The engine loop crashed; requests cannot be served until it is restarted."""
