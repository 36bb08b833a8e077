"""A custom specialist registered in a few lines is routed to, in the local pool and in the Ray pool."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from slm_router.agents.base import AgentInput, AgentResult, GenericOutput
from slm_router.agents.registry import register_agent, registered_agents, unregister_agent
from slm_router.policies import Policy
from slm_router.router.runnable import Router
from tests.conftest import policy_with

REFUND_UTTERANCES = [
    "I want a refund for my order",
    "Please give me my money back",
    "How do I get refunded for a damaged item?",
    "Refund order 5531 please",
    "I returned the parcel, where is my refund?",
    "Can I get a refund on my subscription?",
]


class RefundAgent:
    """A toy refunds specialist: module level, so Ray pickles it by reference."""

    name = "refunds"

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        results = []
        for item in items:
            order = re.search(r"\b\d{4,}\b", item.text)
            data = {"order": order.group(0) if order else None, "eligible": order is not None}
            results.append(
                AgentResult(
                    agent=self.name,
                    output=f"refund request for order {data['order']}",
                    details=GenericOutput(data=data),
                    confidence=0.9 if order else 0.3,
                )
            )
        return results


@pytest.fixture
def refunds() -> Iterator[None]:
    register_agent("refunds", utterances=REFUND_UTTERANCES, threshold=0.5, min_confidence=0.5)(RefundAgent)
    yield
    unregister_agent("refunds")


def test_registered_agent_gets_a_route_and_answers(
    default_policy: Policy, router: Router, refunds: None
) -> None:
    custom = Router(default_policy, embedder=router.embedder)
    assert "refunds" in custom.routes and "refunds" in custom.pool.names()
    result = custom.invoke("I would like a refund for order 88120, the blender is broken")
    assert (result.route, result.answered_by, result.escalated) == ("refunds", "refunds", False)
    assert result.details is not None and result.details.kind == "generic"
    assert result.details.data == {"order": "88120", "eligible": True}


def test_registered_agent_escalates_like_a_built_in(
    default_policy: Policy, router: Router, refunds: None
) -> None:
    custom = Router(default_policy, embedder=router.embedder)
    result = custom.invoke({"text": "I want my money back", "route": "refunds"})
    assert result.escalated and result.reason_code == "specialist_low_confidence"


def test_bad_names_and_factories(refunds: None) -> None:
    with pytest.raises(ValueError, match="must be a word"):
        register_agent("no spaces")(RefundAgent)
    assert registered_agents()["refunds"].factory is RefundAgent


@pytest.mark.ray
def test_registered_agent_is_routed_to_in_the_ray_pool(
    ray_cluster: None, default_policy: Policy, router: Router, refunds: None
) -> None:
    small = {name: {"num_cpus": 0.25} for name in ("sentiment", "extract", "translate", "refunds")}
    policy = policy_with(default_policy, **{"hosting.backend": "ray", "hosting.deployments": small})
    on_ray = Router(policy, embedder=router.embedder)
    try:
        assert type(on_ray.pool).__name__ == "RayPool" and "refunds" in on_ray.pool.names()
        result = on_ray.invoke("I would like a refund for order 77123, it never arrived")
        assert (result.route, result.answered_by) == ("refunds", "refunds")
        assert result.output == "refund request for order 77123"
    finally:
        on_ray.close()
