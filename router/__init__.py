"""slm-router: route each request to the cheapest model that can answer it well."""

from slm_router.router.errors import (
    EmptyInputError,
    FallbackError,
    InputTooLargeError,
    InvalidEncodingError,
    InvalidInputError,
    ModelLoadError,
    SlmRouterError,
    UnknownRouteError,
)
from slm_router.router.result import RouteRequest, RouteResult, TraceStep, Translation
from slm_router.router.runnable import Explanation, Router

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
    "Translation",
    "UnknownRouteError",
]
