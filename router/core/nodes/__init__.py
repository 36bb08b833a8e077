"""The graph's nodes: plain functions of (state, components) that return the keys they set."""

from slm_router.router.core.nodes.answer import afallback, check, decide, fallback, specialist
from slm_router.router.core.nodes.flow import fan_out, flow_join, flow_step
from slm_router.router.core.nodes.intake import classify, guard, normalise
from slm_router.router.core.nodes.respond import respond

__all__ = [
    "afallback",
    "check",
    "classify",
    "decide",
    "fallback",
    "fan_out",
    "flow_join",
    "flow_step",
    "guard",
    "normalise",
    "respond",
    "specialist",
]
