"""Flows on the real models: the support-triage record, per-step escalation, real parallel branches."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from slm_router.agents.base import AgentInput, AgentResult
from slm_router.agents.registry import register_agent, unregister_agent
from slm_router.policies import Policy, PolicyError, policy_from_dict
from slm_router.router.runnable import Router
from tests.conftest import policy_with

PT_COMPLAINT = (
    "Estou muito irritado! O meu pedido 48213 chegou danificado e paguei R$ 150,00 pelo envio expresso."
)


def test_portuguese_complaint_is_triaged_locally(router: Router) -> None:
    result = router.invoke({"text": PT_COMPLAINT, "route": "triage"})
    record = result.details
    assert record is not None and record.kind == "triage"
    assert result.action == "flow" and result.answered_by == "flow:support-triage"
    assert not result.escalated and record.escalated_steps == []
    assert record.language == "pt" and "order 48213" in record.english_text.lower()
    assert record.sentiment == "negative" and record.sentiment_confidence is not None
    assert {("ORDER_ID", "48213"), ("MONEY", "R$ 150.00")} <= {(e.label, e.text) for e in record.entities}
    assert (record.priority, record.queue) == ("high", "billing")
    assert [t.node for t in result.trace][-3:] == ["flow:translate", "flow:sentiment", "flow:extract"]


def test_german_escalates_the_translation_and_keeps_the_ids(router: Router) -> None:
    """No local de→en model: the translation escalates, the order id is still found locally. The English
    sentiment model reads the untranslated German with little confidence, so it may escalate too."""
    result = router.invoke(
        {"text": "Ich bin sehr verärgert, meine Bestellung 55120 ist beschädigt!", "route": "triage"}
    )
    record = result.details
    assert record is not None and record.kind == "triage"
    assert record.escalated_steps[0] == "translate" and result.escalated
    assert result.reason_code == "specialist_unsupported" and "no local model for de→en" in result.reason
    steps = {t.node: t.info for t in result.trace if t.node.startswith("flow:")}
    assert steps["flow:translate"]["escalated"] is True and steps["flow:extract"]["escalated"] is False
    assert ("ORDER_ID", "55120") in {(e.label, e.text) for e in record.entities}


class _Sleepy:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name, self.fail = name, fail

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        time.sleep(0.6)
        if self.fail:
            raise RuntimeError("branch exploded")
        return [AgentResult(agent=self.name, output=f"{self.name} done", confidence=0.9) for _ in items]


@pytest.fixture
def slow_agents() -> Iterator[None]:
    register_agent("slow_a")(lambda: _Sleepy("slow_a"))
    register_agent("slow_b")(lambda: _Sleepy("slow_b"))
    register_agent("broken")(lambda: _Sleepy("broken", fail=True))
    yield
    for name in ("slow_a", "slow_b", "broken"):
        unregister_agent(name)


def _flow_router(base: Policy, router: Router, agents: list[str], fallback: bool) -> Router:
    flows = {**base.model_dump()["flows"], "pair": {"stages": [agents]}}
    routes = {**base.model_dump()["routes"], "pair": {"flow": "pair", "utterances": ["run the pair"]}}
    policy = policy_with(base, flows=flows, routes=routes, **{"fallback.enabled": fallback})
    return Router(policy, embedder=router.embedder)


def test_parallel_branches_really_overlap(default_policy: Policy, router: Router, slow_agents: None) -> None:
    pair = _flow_router(default_policy, router, ["slow_a", "slow_b"], fallback=False)
    start = time.perf_counter()
    result = pair.invoke({"text": "run the pair please", "route": "pair"})
    wall = time.perf_counter() - start
    branch_ms = [t.ms for t in result.trace if t.node.startswith("flow:")]
    assert len(branch_ms) == 2 and all(ms >= 600 for ms in branch_ms)
    assert wall < sum(branch_ms) / 1000 * 0.9, (wall, branch_ms)
    assert result.details is not None and result.details.kind == "flow"
    assert [s.output for s in result.details.steps] == ["slow_a done", "slow_b done"]


def test_failing_branch_keeps_the_others(default_policy: Policy, router: Router, slow_agents: None) -> None:
    pair = _flow_router(default_policy, router, ["slow_a", "broken"], fallback=False)
    result = pair.invoke({"text": "run the pair please", "route": "pair"})
    assert result.details is not None and result.details.kind == "flow"
    steps = {s.agent: s for s in result.details.steps}
    assert steps["slow_a"].output == "slow_a done"
    assert steps["broken"].output == "" and "branch exploded" in (steps["broken"].reason or "")
    assert result.degraded and "broken" in result.reason


def test_failing_branch_escalates_when_a_fallback_exists(
    default_policy: Policy, router: Router, slow_agents: None
) -> None:
    pair = _flow_router(default_policy, router, ["slow_a", "broken"], fallback=True)
    result = pair.invoke({"text": "run the pair please", "route": "pair"})
    assert result.details is not None and result.details.kind == "flow"
    steps = {s.agent: s for s in result.details.steps}
    assert steps["broken"].escalated and steps["broken"].output  # answered by the real local fallback model
    assert steps["slow_a"].output == "slow_a done" and result.reason_code == "specialist_failed"


def test_flow_policy_errors(default_policy: Policy) -> None:
    data = default_policy.model_dump()
    data["routes"]["triage"]["flow"] = "nope"
    with pytest.raises(PolicyError, match=r"routes\.triage\.flow: unknown flow 'nope'"):
        policy_from_dict(data)
    data = default_policy.model_dump()
    data["flows"]["support-triage"]["stages"].append([])
    with pytest.raises(PolicyError, match="every stage needs at least one step"):
        policy_from_dict(data)
    data = default_policy.model_dump()
    data["routes"]["triage"]["agent"] = "sentiment"
    with pytest.raises(PolicyError, match="not both"):
        policy_from_dict(data)
