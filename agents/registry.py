"""Every specialist by name, built-ins and custom alike: register one in a few lines and both pools host it.

    @register_agent("refunds", utterances=["I want my money back", "refund order 123"])
    class RefundAgent:
        name = "refunds"
        def predict_batch(self, items): ...

A policy uses a registered agent by naming it: `routes: {refunds: {agent: refunds}}` (the route takes the
registration's utterances when it has none of its own), or a flow step. Python users can ask for its route
with `Router.from_policy(..., agents=["refunds"])`. Packages can also register through the entry-point group
`slm_router.agents` (the entry point is imported, which runs its decorator; a plain factory is registered
under the entry point's name).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TypeVar

from slm_router.agents.base import Agent
from slm_router.agents.builtins import BUILTIN_FACTORIES
from slm_router.agents.sentiment import Encoder

ENTRY_POINT_GROUP = "slm_router.agents"
F = TypeVar("F", bound=Callable[..., Agent])


@dataclass(frozen=True)
class SharedParts:
    """What a configured factory may use besides its own config section; picklable when `encode` is."""

    encode: Encoder
    """The router's sentence encoder, so an agent on embeddings loads no second model."""
    resolve: Callable[[str], Path]
    """A path from a config section, relative to the policy file."""
    timeout_s: float
    """The pool's per-call agent timeout, for agents that stop their own work."""


@dataclass(frozen=True)
class Registration:
    """A factory plus the route that leads to it.

    A plain factory (a class or a zero-argument function) is called with no arguments; a `configured` one
    as `factory(config, parts)`, with the agent's config section (None when the policy has none) and the
    `SharedParts`.
    """

    name: str
    factory: Callable[..., Agent]
    utterances: tuple[str, ...] = ()
    threshold: float | None = None
    min_confidence: float | None = None
    fallback_prompt: str | None = None
    configured: bool = False

    def build(self, config: object, parts: SharedParts) -> Agent:
        return self.factory(config, parts) if self.configured else self.factory()


BUILTIN_AGENTS = tuple(BUILTIN_FACTORIES)
"""Hosted by every pool, whether or not the policy routes to them."""

_registry: dict[str, Registration] = {
    name: Registration(name, factory, configured=True) for name, factory in BUILTIN_FACTORIES.items()
}
_lock = threading.Lock()
_entry_points_loaded = False


def register_agent(
    name: str,
    *,
    utterances: Sequence[str] = (),
    threshold: float | None = None,
    min_confidence: float | None = None,
    fallback_prompt: str | None = None,
    configured: bool = False,
) -> Callable[[F], F]:
    """Register a specialist (replacing any of the same name). `utterances` and the defaults after them make
    the route of a policy that names the agent without examples of its own. The factory must be picklable
    (module level) for the Ray pool; `configured=True` for one that takes `(config, parts)`."""
    if not name or not name.replace("-", "_").isidentifier():
        raise ValueError(f"agent name {name!r} must be a word (letters, digits, '_' or '-')")

    def decorate(factory: F) -> F:
        with _lock:
            _registry[name] = Registration(
                name, factory, tuple(utterances), threshold, min_confidence, fallback_prompt, configured
            )
        return factory

    return decorate


def unregister_agent(name: str) -> None:
    with _lock:
        _registry.pop(name, None)


def registered_agents() -> dict[str, Registration]:
    """Everything registered so far: the built-ins, decorated agents and entry points (loaded once)."""
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
