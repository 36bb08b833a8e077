"""Typed errors of the Python API; the CLI and the HTTP layer map each to a clear message."""

from __future__ import annotations


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
    """The fallback model was needed and could not answer (down, timed out, misconfigured)."""
