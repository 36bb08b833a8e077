"""A run starts from its declared input alone: nothing of an earlier turn leaks into the next one."""

from __future__ import annotations

import time
from typing import Any, get_type_hints

import pytest

from slm_router.agents.base import AgentResult
from slm_router.policies import Policy
from slm_router.router.core.conversations import ConversationStore, Turn
from slm_router.router.core.flows import StepResult
from slm_router.router.core.rules import Escalation
from slm_router.router.core.state import GraphInput, GraphOutput, RouterState, fresh_state
from slm_router.router.result import RouteRequest, RouteResult, TraceStep
from slm_router.router.runnable import Router
from tests.conftest import policy_with

PLAIN = "Order #A12345 was charged $49.99 twice, please refund me"  # confident: extract
UNSURE = "not sure how I feel about this order"  # low confidence: escalates
PT_COMPLAINT = "Estou muito irritado! O meu pedido 48213 chegou danificado."


def _same(a: RouteResult, b: RouteResult) -> None:
    """Equal in everything but timings."""
    assert a.model_dump(exclude={"trace", "total_ms"}) == b.model_dump(exclude={"trace", "total_ms"})
    assert [(t.node, t.info) for t in a.trace] == [(t.node, t.info) for t in b.trace]


def test_the_graph_takes_only_the_declared_input_and_keeps_nothing(router: Router) -> None:
    graph = router.graph
    assert graph.builder.input_schema is GraphInput and graph.builder.output_schema is GraphOutput
    assert set(graph.builder.schemas[GraphInput]) == set(GraphInput.__annotations__)
    assert graph.checkpointer is None
    assert set(GraphInput.__annotations__) | set(GraphOutput.__annotations__) <= set(
        RouterState.__annotations__
    )
    assert get_type_hints(ConversationStore.save)["turns"] == list[Turn]
    assert set(Turn.model_fields) == {"text", "route", "output"}


def test_injected_state_keys_are_ignored(router: Router) -> None:
    clean = router.graph.invoke(fresh_state(RouteRequest(text=PLAIN), time.monotonic() + 30))
    leaked = AgentResult(agent="fallback", output="from an earlier turn", confidence=1.0)
    dirty: dict[str, Any] = {
        **fresh_state(RouteRequest(text=PLAIN), time.monotonic() + 30),
        "escalation": Escalation(code="fallback_failed", reason="an earlier turn's"),
        "flow_steps": [StepResult(agent="translate", stage=0, result=leaked, escalated=True, ms=1.0)],
        "answer": leaked,
        "degraded": True,
        "budget_exceeded": True,
        "trace": [TraceStep(node="earlier", ms=1.0)],
    }
    out = router.graph.invoke(dirty)
    assert set(out) == {"result", "history"}
    _same(out["result"], clean["result"])
    assert out["result"].action == "specialist" and out["result"].reason_code == "confident"


@pytest.fixture(scope="module")
def spent(router: Router, default_policy: Policy) -> Router:
    """Every escalation hits the budget: a first turn that comes back flagged `budget_exceeded`."""
    conf = policy_with(
        default_policy,
        **{"escalation.budget": {"max_share": 0.0, "min_requests": 1}, "decision_log.enabled": False},
    )
    r = Router(conf, embedder=router.embedder, pool=router.pool)
    r.invoke(PLAIN)
    return r


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        ({"text": PT_COMPLAINT, "route": "triage"}, "flow"),
        ({"text": "What is the best way to grow tomatoes on a balcony?"}, "escalated"),
        ({"text": UNSURE}, "budget_exceeded"),
    ],
)
def test_a_turn_carries_nothing_of_the_one_before(
    router: Router, spent: Router, first: dict[str, str], kind: str
) -> None:
    r = spent if kind == "budget_exceeded" else router
    conversation = f"leak-{kind}"
    turn1 = r.invoke({**first, "conversation_id": conversation})
    assert {"flow": turn1.action == "flow", "escalated": turn1.escalated}.get(kind, turn1.budget_exceeded)
    alone = r.invoke(PLAIN)
    turn2 = r.invoke({"text": PLAIN, "conversation_id": conversation})
    _same(turn2, alone)
    assert [t.node for t in turn2.trace] == ["guard", "classify", "decide", "specialist", "check"]
    assert not (turn2.escalated or turn2.degraded or turn2.budget_exceeded)
    assert [t.text for t in r.conversations.load("default", conversation)] == [first["text"], PLAIN]
