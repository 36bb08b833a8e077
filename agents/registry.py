"""Custom specialists: register one in a few lines and both pools (local and Ray) host it.

    @register_agent("refunds", utterances=["I want my money back", "refund order 123"])
    class RefundAgent:
        name = "refunds"
        def predict_batch(self, items): ...

Packages can also register through the entry-point group `slm_router.agents` (the entry point is imported,
which runs its decorator; a plain factory is registered under the entry point's name).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TypeVar

from slm_router.agents.base import Agent

ENTRY_POINT_GROUP = "slm_router.agents"
F = TypeVar("F", bound=Callable[[], Agent])


@dataclass(frozen=True)
class Registration:
    """A factory (a class or a zero-argument function) plus the route that leads to it."""

    name: str
    factory: Callable[[], Agent]
    utterances: tuple[str, ...] = ()
    threshold: float | None = None
    min_confidence: float | None = None
    fallback_prompt: str | None = None


_registry: dict[str, Registration] = {}
_lock = threading.Lock()
_entry_points_loaded = False


def register_agent(
    name: str,
    *,
    utterances: Sequence[str] = (),
    threshold: float | None = None,
    min_confidence: float | None = None,
    fallback_prompt: str | None = None,
) -> Callable[[F], F]:
    """Register a specialist. With `utterances`, a route of the same name is added to every policy that has
    no route for this agent yet; the factory must be picklable (module level) for the Ray pool."""
    if not name or not name.replace("-", "_").isidentifier():
        raise ValueError(f"agent name {name!r} must be a word (letters, digits, '_' or '-')")

    def decorate(factory: F) -> F:
        with _lock:
            _registry[name] = Registration(
                name, factory, tuple(utterances), threshold, min_confidence, fallback_prompt
            )
        return factory

    return decorate


def unregister_agent(name: str) -> None:
    with _lock:
        _registry.pop(name, None)


def registered_agents() -> dict[str, Registration]:
    """Everything registered so far, entry points included (loaded once)."""
    _load_entry_points()
    with _lock:
        return dict(_registry)


def _load_entry_points() -> None:
    global _entry_points_loaded
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
        found = list(entry_points(group=ENTRY_POINT_GROUP))
    for ep in found:
        loaded = ep.load()  # importing the module runs its @register_agent
        with _lock:
            if ep.name not in _registry and callable(loaded):
                _registry[ep.name] = Registration(ep.name, loaded)
