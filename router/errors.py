"""Typed errors of the Python API; the CLI and the HTTP layer map each to a clear message."""

from __future__ import annotations

# An extra is not installed: defined beside the extras table (slm_router/extras.py) for agents too.
from slm_router.extras import MissingExtraError as MissingExtraError


class SlmRouterError(Exception):
    """Base class: catch this to handle every slm-router failure."""


class InvalidInputError(SlmRouterError, ValueError):
    """The request text cannot be routed (empty, too long, not UTF-8)."""


class EmptyInputError(InvalidInputError):
    pass


class InputTooLargeError(InvalidInputError):
    pass


class InvalidEncodingError(InvalidInputError):
    pass


class UnknownRouteError(SlmRouterError, KeyError):
    """A forced or configured route that the policy does not define."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown route"


class ModelLoadError(SlmRouterError, RuntimeError):
    """A model file or package is missing or unreadable."""


class FallbackError(SlmRouterError, RuntimeError):
    """The fallback model was needed and could not answer (down, timed out, misconfigured).

    `retry_after_s` is set when it is known when to try again (the circuit breaker's cooldown).
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OverloadedError(SlmRouterError, RuntimeError):
    """Refused at once because the service (or an agent pool) is full; try again after `retry_after_s`."""

    def __init__(
        self, message: str, retry_after_s: float = 1.0, status: int = 503, reason: str = "overloaded"
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.status = status
        self.reason = reason


class RequestTimeoutError(SlmRouterError, TimeoutError):
    """The request ran past its deadline (`limits.request_timeout_s`); its work was cancelled."""
