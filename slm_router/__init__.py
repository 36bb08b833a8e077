"""slm-router: route each request to the cheapest model that can answer it well.

The front door. The three packages install under this one name (`slm_router.router`, `slm_router.agents`,
`slm_router.policies`) so they never collide with other distributions' generic top-level names.

Names resolve on first use (PEP 562): `import slm_router.agents.hosting.isolation` in a child process (the
translation engine, the Ray replicas) must not pay for loading the whole router.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slm_router.agents import register_agent
    from slm_router.extras import MissingExtraError
    from slm_router.policies import Policy, PolicyError, load_policy
    from slm_router.router import (
        EmptyInputError,
        Explanation,
        FallbackError,
        InputTooLargeError,
        InvalidEncodingError,
        InvalidInputError,
        ModelLoadError,
        Router,
        RouteRequest,
        RouteResult,
        SlmRouterError,
        TraceStep,
        UnknownRouteError,
    )

__all__ = [
    "EmptyInputError",
    "Explanation",
    "FallbackError",
    "InputTooLargeError",
    "InvalidEncodingError",
    "InvalidInputError",
    "MissingExtraError",
    "ModelLoadError",
    "Policy",
    "PolicyError",
    "RouteRequest",
    "RouteResult",
    "Router",
    "SlmRouterError",
    "TraceStep",
    "UnknownRouteError",
    "load_policy",
    "register_agent",
]

_ELSEWHERE = {
    "MissingExtraError": "slm_router.extras",
    "register_agent": "slm_router.agents",
    "Policy": "slm_router.policies",
    "PolicyError": "slm_router.policies",
    "load_policy": "slm_router.policies",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'slm_router' has no attribute {name!r}")
    value = getattr(importlib.import_module(_ELSEWHERE.get(name, "slm_router.router")), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
