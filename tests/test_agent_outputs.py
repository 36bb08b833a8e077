"""A custom agent's own output type survives the graph, the HTTP response (JSON) and the Ray pool; built-in
outputs keep their JSON shape; a kind this process does not know is kept as data."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import pytest
from pydantic import ValidationError

from slm_router.agents.base import (
    AgentInput,
    AgentOutput,
    AgentResult,
    FallbackOutput,
    SentimentOutput,
    UnknownOutput,
    output_types,
)
from slm_router.agents.registry import register_agent, unregister_agent
from slm_router.policies import Policy
from slm_router.router.core.outputs import FlowOutput, StepOutput, TriageOutput
from slm_router.router.result import RouteResult
from slm_router.router.runnable import Router
from slm_router.router.service.app import create_app
from tests.conftest import policy_with, serving

KEY = "outputs-key"
AGENT = "refund_desk"


class RefundOutput(AgentOutput):
    """A custom agent's typed output (module level, so Ray pickles it by reference)."""

    kind: Literal["refund_decision"] = "refund_decision"
    order: str | None
    eligible: bool
    amount: float | None = None


class RefundDesk:
    name = AGENT

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        results = []
        for item in items:
            order = re.search(r"\b\d{4,}\b", item.text)
            amount = re.search(r"\$(\d+(?:\.\d+)?)", item.text)
            details = RefundOutput(
                order=order.group(0) if order else None,
                eligible=order is not None,
                amount=float(amount.group(1)) if amount else None,
            )
            results.append(AgentResult(agent=self.name, output="refund", details=details, confidence=0.95))
        return results


EXPECTED = RefundOutput(order="88120", eligible=True, amount=49.99)
TEXT = "Refund order 88120 please, I paid $49.99 for a broken blender"


# --- the type itself, without models ----------------------------------------------------------------


def test_custom_output_comes_back_from_json_as_its_own_type() -> None:
    result = AgentResult(agent=AGENT, output="refund", details=EXPECTED, confidence=0.95)
    data = result.model_dump(mode="json")
    assert data["details"] == {"kind": "refund_decision", "order": "88120", "eligible": True, "amount": 49.99}
    again = AgentResult.model_validate_json(result.model_dump_json())
    assert type(again.details) is RefundOutput and again.details == EXPECTED
    assert output_types()["refund_decision"] is RefundOutput


def test_a_registered_kind_is_validated_as_its_type() -> None:
    with pytest.raises(ValidationError) as caught:
        AgentResult.model_validate(
            {
                "agent": AGENT,
                "output": "",
                "confidence": 1,
                "details": {"kind": "refund_decision", "order": 5},
            }
        )
    assert {e["loc"] for e in caught.value.errors()} == {("details", "order"), ("details", "eligible")}
    with pytest.raises(ValidationError, match=r"details\.kind"):
        AgentResult.model_validate({"agent": AGENT, "output": "", "confidence": 1, "details": {"order": "1"}})


def test_an_unknown_kind_is_kept_as_data() -> None:
    """A client without the agent's code still reads every field, and writes them back unchanged."""
    details = {"kind": "not_installed_here", "score": 3, "tags": ["a", "b"], "nested": {"x": None}}
    result = AgentResult.model_validate({"agent": "x", "output": "", "confidence": 1, "details": details})
    assert isinstance(result.details, UnknownOutput)
    assert result.details.kind == "not_installed_here" and result.details.model_extra == {
        "score": 3,
        "tags": ["a", "b"],
        "nested": {"x": None},
    }
    assert result.model_dump(mode="json")["details"] == details
    assert "not_installed_here" not in output_types()


def test_built_in_outputs_keep_their_json_shape() -> None:
    sentiment = SentimentOutput(label="negative", probabilities={"negative": 0.9, "positive": 0.1})
    fallback = FallbackOutput(model="smollm2", redacted=True, redactions=2)
    flow = FlowOutput(
        flow="f", steps=[StepOutput(agent="sentiment", output="negative", confidence=0.9, escalated=False)]
    )
    dumped = [
        AgentResult(agent="a", output="", details=d, confidence=1).model_dump(mode="json")["details"]
        for d in (sentiment, fallback, flow)
    ]
    assert [list(d) for d in dumped] == [
        ["kind", "label", "probabilities"],
        [
            "kind",
            "model",
            "redacted",
            "redactions",
            "input_chars",
            "output_chars",
            "input_tokens",
            "output_tokens",
        ],
        ["kind", "flow", "steps"],
    ]
    assert dumped[2]["steps"] == [
        {"agent": "sentiment", "output": "negative", "confidence": 0.9, "escalated": False, "reason": None}
    ]
    assert [
        type(AgentResult.model_validate({"agent": "a", "output": "", "confidence": 1, "details": d}).details)
        for d in dumped
    ] == [SentimentOutput, FallbackOutput, FlowOutput]


def test_a_kind_belongs_to_one_type() -> None:
    with pytest.raises(TypeError, match=r"'sentiment' of .*Impostor is already taken by .*SentimentOutput"):

        class Impostor(AgentOutput):
            kind: Literal["sentiment"] = "sentiment"

    assert output_types()["sentiment"] is SentimentOutput


def test_the_same_type_defined_again_replaces_itself() -> None:
    """As when a module is reloaded, or Ray unpickles a class by value in a replica."""

    def define() -> type[AgentOutput]:
        class Redefined(AgentOutput):
            kind: Literal["redefined_in_test"] = "redefined_in_test"

        return Redefined

    define()
    latest = define()
    assert output_types()["redefined_in_test"] is latest


def test_an_open_base_is_not_registered() -> None:
    class Ticket(AgentOutput):
        """A base for other outputs: its kind is left to them."""

        priority: int

    assert Ticket not in output_types().values()


def test_a_client_importing_only_the_result_knows_the_router_outputs() -> None:
    """A flow's triage record read back by `RouteResult` alone, in a fresh interpreter."""
    triage = TriageOutput(
        flow="triage",
        language="pt",
        english_text="where is my order?",
        sentiment=None,
        sentiment_confidence=None,
        entities=[],
        priority="low",
        queue="general",
        escalated_steps=[],
        steps=[],
    )
    result = RouteResult(
        route="triage",
        action="flow",
        output="priority low",
        details=triage,
        answered_by="flow:triage",
        confidence=1.0,
        escalated=False,
        reason="",
        reason_code="confident",
        language="pt",
        trace=[],
        total_ms=0.0,
    )
    code = (
        "import sys\n"
        "from slm_router.router.result import RouteResult\n"
        "print(type(RouteResult.model_validate_json(sys.stdin.read()).details).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=result.model_dump_json(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "TriageOutput"


# --- through the graph and the HTTP service ---------------------------------------------------------


@pytest.fixture(scope="module")
def refund_router(default_policy: Policy, router: Router) -> Iterator[Router]:
    """A router whose policy names a route for the custom agent, registered for this module only."""
    register_agent(AGENT)(RefundDesk)
    route = {"agent": AGENT, "utterances": ["I want a refund for order 1234", "Please refund my money"]}
    try:
        custom = Router(policy_with(default_policy, **{f"routes.{AGENT}": route}), embedder=router.embedder)
        yield custom
        custom.close()
    finally:
        unregister_agent(AGENT)


def _route(router: Router) -> RouteResult:
    return router.invoke({"text": TEXT, "route": AGENT})


def test_custom_output_survives_the_graph(refund_router: Router) -> None:
    result = _route(refund_router)
    assert (result.route, result.answered_by, result.escalated) == (AGENT, AGENT, False)
    assert type(result.details) is RefundOutput and result.details == EXPECTED
    assert RouteResult.model_validate(result.model_dump(mode="json")).details == EXPECTED


def test_custom_output_survives_the_http_response(refund_router: Router) -> None:
    with (
        serving(create_app(refund_router, refund_router.policy.server, {KEY})) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client,
    ):
        answer = client.post("/v1/route", json={"text": TEXT, "route": AGENT})
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "slm-router", "messages": [{"role": "user", "content": TEXT}]},
        )
        spec = client.get("/openapi.json").json()
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert body["details"] == EXPECTED.model_dump(mode="json")
    client_side = RouteResult.model_validate(body)
    assert type(client_side.details) is RefundOutput and client_side.details == EXPECTED
    assert chat.status_code == 200 and chat.json()["slm_router"]["details"]["kind"] == "refund_decision"
    schemas = spec["components"]["schemas"]
    assert {"RefundOutput", "SentimentOutput", "TriageOutput", "UnknownOutput"} <= set(schemas)
    documented = schemas["RouteResult"]["properties"]["details"]["anyOf"]
    assert {"$ref": "#/components/schemas/RefundOutput"} in documented


# --- through the Ray pool ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0


@dataclass(frozen=True)
class Deployment:
    num_replicas: int = 1
    autoscaling: Autoscaling | None = field(default_factory=Autoscaling)
    max_ongoing_requests: int = 8
    max_queued_requests: int = -1
    num_cpus: float = 0.25


@dataclass(frozen=True)
class Hosting:
    """Plain settings, not the policy's: hosting reads attributes and never imports `policies`."""

    ray_address: str | None = None
    max_batch_size: int = 4
    batch_wait_timeout_s: float = 0.01

    def deployment(self, agent: str) -> Deployment:
        return Deployment()


@pytest.mark.ray
def test_custom_output_survives_the_ray_pool(ray_cluster: None) -> None:
    from slm_router.agents.hosting.ray_serve import RayPool

    pool = RayPool({AGENT: RefundDesk}, Hosting(), timeout_s=60.0)
    try:
        [result] = pool.run(AGENT, [AgentInput(text=TEXT)])
    finally:
        pool.close()
    assert type(result.details) is RefundOutput and result.details == EXPECTED
