"""slm-router: route each request to the cheapest model that can answer it well.

The front door. The three packages install under this one name (`slm_router.router`, `slm_router.agents`,
`slm_router.policies`) so they never collide with other distributions' generic top-level names.
"""

from slm_router.agents import register_agent
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
