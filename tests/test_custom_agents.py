"""A custom specialist registered in a few lines is routed to, in the local pool and in the Ray pool, by the
policies that ask for it and by no other."""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from slm_router.agents.base import AgentInput, AgentResult, GenericOutput
from slm_router.agents.registry import SharedParts, register_agent, registered_agents, unregister_agent
from slm_router.agents.sentiment import SentimentAgent
from slm_router.policies import Policy
from slm_router.router.cli import app
from slm_router.router.compose import agent_factories, build_agent, hosted_agents, with_agent_routes
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
    register_agent(
        "refunds",
        utterances=REFUND_UTTERANCES,
        threshold=0.5,
        min_confidence=0.5,
        fallback_prompt="Help with a refund.",
    )(RefundAgent)
    yield
    unregister_agent("refunds")


def test_registered_agent_gets_a_route_and_answers(
    default_policy: Policy, router: Router, refunds: None
) -> None:
    custom = Router(default_policy, embedder=router.embedder, agents=["refunds"])
    assert "refunds" in custom.routes and "refunds" in custom.pool.names()
    result = custom.invoke("I would like a refund for order 88120, the blender is broken")
    assert (result.route, result.answered_by, result.escalated) == ("refunds", "refunds", False)
    assert result.details is not None and result.details.kind == "generic"
    assert result.details.data == {"order": "88120", "eligible": True}


def test_registered_agent_escalates_like_a_built_in(
    default_policy: Policy, router: Router, refunds: None
) -> None:
    custom = Router.from_policy(default_policy, embedder=router.embedder, agents=["refunds"])
    result = custom.invoke({"text": "I want my money back", "route": "refunds"})
    assert result.escalated and result.reason_code == "specialist_low_confidence"


def test_registered_agent_is_absent_from_a_policy_that_does_not_ask_for_it(
    default_policy: Policy, router: Router, refunds: None
) -> None:
    assert with_agent_routes(default_policy) is default_policy
    assert "refunds" not in hosted_agents(default_policy)
    plain = Router(default_policy, embedder=router.embedder)
    assert "refunds" not in plain.routes and "refunds" not in plain.pool.names()
    result = plain.invoke("I would like a refund for order 88120, the blender is broken")
    assert result.route != "refunds" and result.answered_by != "refunds"


def test_policy_route_naming_the_agent_takes_its_utterances_and_defaults(
    default_policy: Policy, router: Router, refunds: None
) -> None:
    asking = policy_with(default_policy, **{"routes.refunds": {"agent": "refunds", "threshold": 0.4}})
    route = with_agent_routes(asking).routes["refunds"]
    assert route.utterances == REFUND_UTTERANCES and route.examples == []
    assert (route.threshold, route.min_confidence) == (0.4, 0.5)  # the policy's own value wins
    assert route.fallback_prompt == "Help with a refund."
    assert asking.routes["refunds"].utterances == []  # the policy passed in is left as it was
    by_name = with_agent_routes(default_policy, ["refunds"]).routes["refunds"]
    assert by_name.utterances == REFUND_UTTERANCES and by_name.threshold == 0.5
    result = Router(asking, embedder=router.embedder).invoke("Refund order 44120, it never came")
    assert (result.route, result.answered_by, result.output) == (
        "refunds",
        "refunds",
        "refund request for order 44120",
    )


def test_policy_validate_completes_routes_from_the_registry(
    default_policy: Policy, tmp_path: Path, refunds: None
) -> None:
    data = default_policy.portable_data()
    data["routes"]["refunds"] = {"agent": "refunds"}
    path = tmp_path / "refunds.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["policy", "validate", str(path)])
    assert result.exit_code == 0, result.output
    assert f"refunds ({len(REFUND_UTTERANCES)} examples)" in result.output


def _configured(config: object, parts: SharedParts) -> RefundAgent:
    agent = RefundAgent()
    agent.built_with = (config, parts)  # type: ignore[attr-defined]
    return agent


def test_configured_factory_gets_the_shared_parts(default_policy: Policy, router: Router) -> None:
    register_agent("with-parts", configured=True)(_configured)
    try:
        agent = build_agent(default_policy, "with-parts", router.embedder)
        config, parts = agent.built_with  # type: ignore[attr-defined]
        assert config is None  # custom agents have no section in the policy
        assert parts.encode == router.embedder.encode
        assert parts.timeout_s == default_policy.limits.agent_timeout_s
        assert parts.resolve("x.npz") == default_policy.resolve("x.npz")
    finally:
        unregister_agent("with-parts")


def test_built_ins_are_registrations_and_every_factory_pickles(default_policy: Policy, refunds: None) -> None:
    registry = registered_agents()
    assert all(registry[name].configured for name in ("sentiment", "extract", "translate"))
    policy = policy_with(default_policy, **{"routes.refunds": {"agent": "refunds"}})
    factories = pickle.loads(pickle.dumps(agent_factories(policy)))  # as Ray ships them to replicas
    assert list(factories) == ["sentiment", "extract", "translate", "refunds"]
    assert isinstance(factories["sentiment"](), SentimentAgent)
    assert isinstance(factories["refunds"](), RefundAgent)


def test_bad_names_and_factories(refunds: None) -> None:
    with pytest.raises(ValueError, match="must be a word"):
        register_agent("no spaces")(RefundAgent)
    assert registered_agents()["refunds"].factory is RefundAgent


@pytest.mark.ray
def test_registered_agent_is_routed_to_in_the_ray_pool(
    ray_cluster: None, default_policy: Policy, router: Router, refunds: None
) -> None:
    small = {name: {"num_cpus": 0.25} for name in ("sentiment", "extract", "translate", "refunds")}
    policy = policy_with(
        default_policy,
        **{"hosting.backend": "ray", "hosting.deployments": small, "routes.refunds": {"agent": "refunds"}},
    )
    on_ray = Router(policy, embedder=router.embedder)
    try:
        assert type(on_ray.pool).__name__ == "RayPool" and "refunds" in on_ray.pool.names()
        result = on_ray.invoke("I would like a refund for order 77123, it never arrived")
        assert (result.route, result.answered_by) == ("refunds", "refunds")
        assert result.output == "refund request for order 77123"
    finally:
        on_ray.close()
