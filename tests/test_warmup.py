"""Start-up warm-up: an agent whose first call (its model load) outlasts the agent timeout is retried until
`limits.warmup_timeout_s`, because the load it started goes on after the pool stops waiting."""

from __future__ import annotations

import threading
import time

import pytest

from slm_router.agents.base import AgentInput, AgentResult, AgentTimeout, GenericOutput
from slm_router.agents.hosting.local import LocalPool
from slm_router.policies import Policy
from slm_router.router.runnable import Router
from tests.conftest import policy_with


class LoadsOnFirstCall:
    """Answers after a one-off `load_s` "model load" on its first call, at once afterwards."""

    def __init__(self, name: str, load_s: float) -> None:
        self.name = name
        self.load_s = load_s
        self.calls = 0
        self._loaded = threading.Event()

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        self.calls += 1
        if not self._loaded.is_set():
            time.sleep(self.load_s)
            self._loaded.set()
        return [AgentResult(agent=self.name, output="ok", details=GenericOutput(data={}), confidence=1.0)]


def _router(
    policy: Policy, router: Router, load_s: float, warmup_timeout_s: float
) -> tuple[Router, list[LoadsOnFirstCall]]:
    agents = [LoadsOnFirstCall(name, load_s) for name in router.pool.names()]
    pool = LocalPool({agent.name: agent for agent in agents}, timeout_s=0.2)
    slow = policy_with(policy, **{"fallback.enabled": False, "limits.warmup_timeout_s": warmup_timeout_s})
    return Router(slow, pool=pool, embedder=router.embedder), agents


def test_a_load_longer_than_the_agent_timeout_is_waited_for(default_policy: Policy, router: Router) -> None:
    warming, agents = _router(default_policy, router, load_s=0.7, warmup_timeout_s=30)
    try:
        warming.warmup()
        assert all(agent.calls >= 2 for agent in agents)  # the first try timed out, a later one answered
        assert warming.pool.run(agents[0].name, [AgentInput(text="hi")], timeout_s=0.2)[0].output == "ok"
    finally:
        warming.close()
        warming.pool.close()


def test_an_agent_still_loading_at_the_warmup_timeout_fails_start_up(
    default_policy: Policy, router: Router
) -> None:
    warming, _ = _router(default_policy, router, load_s=3.0, warmup_timeout_s=0.5)
    try:
        with pytest.raises(AgentTimeout, match=r"warmup_timeout_s=0\.5 s"):
            warming.warmup()
    finally:
        warming.close()
        warming.pool.close()
