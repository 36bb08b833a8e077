"""slm-router: route each request to the cheapest model that can answer it well.

Names resolve on first use (PEP 562), as in the front door: the command line and the HTTP service's
modules live under this package, and `slm-router --help` must not pay for loading the router's libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOMES = {
    **dict.fromkeys(
        [
            "EmptyInputError",
            "FallbackError",
            "InputTooLargeError",
            "InvalidEncodingError",
            "InvalidInputError",
            "ModelLoadError",
            "SlmRouterError",
            "UnknownRouteError",
        ],
        "slm_router.router.errors",
    ),
    **dict.fromkeys(["RouteRequest", "RouteResult", "TraceStep", "Translation"], "slm_router.router.result"),
    **dict.fromkeys(["Explanation", "Router"], "slm_router.router.runnable"),
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
