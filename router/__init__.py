"""slm-router: route each request to the cheapest model that can answer it well."""

from router.api import Explanation, Router
from router.errors import (
    EmptyInputError,
    FallbackError,
    InputTooLargeError,
    InvalidEncodingError,
    InvalidInputError,
    ModelLoadError,
    SlmRouterError,
    UnknownRouteError,
)
from router.result import RouteRequest, RouteResult, TraceStep

__all__ = [
    "EmptyInputError",
    "Explanation",
    "FallbackError",
    "InputTooLargeError",
    "InvalidEncodingError",
    "InvalidInputError",
    "ModelLoadError",
    "RouteRequest",
    "RouteResult",
    "Router",
    "SlmRouterError",
    "TraceStep",
    "UnknownRouteError",
]
