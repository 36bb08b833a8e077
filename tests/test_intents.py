"""Multi-intent requests are split by clause, and every route they need runs."""

from __future__ import annotations

from slm_router.policies import Policy
from slm_router.router.core.intents import split_request
from slm_router.router.runnable import Router
from tests.conftest import policy_with

TWO_THINGS = (
    "Translate this and tell me how angry the customer is: O produto chegou quebrado e estou furioso!"
)


def test_split_request() -> None:
    clauses, payload = split_request(TWO_THINGS)
    assert clauses == ["Translate this", "tell me how angry the customer is"]
    assert payload == "O produto chegou quebrado e estou furioso!"
    assert split_request("Where is my order?") == (["Where is my order?"], "Where is my order?")


def test_translate_and_sentiment_both_run(router: Router) -> None:
    result = router.invoke(TWO_THINGS)
    assert (result.route, result.action, result.reason_code) == (
        "translate+sentiment",
        "flow",
        "multi_intent",
    )
    assert result.details is not None and result.details.kind == "flow"
    steps = {s.agent: s for s in result.details.steps}
    assert "broken" in steps["translate"].output.lower()
    assert steps["sentiment"].output == "negative"  # read from the English translation
    assert not result.escalated


def test_target_language_comes_from_the_clause(router: Router) -> None:
    result = router.invoke(
        "Please translate this into Portuguese and also extract the order number: my order 55120 is late"
    )
    assert (
        result.route == "translate+extract" and result.details is not None and result.details.kind == "flow"
    )
    steps = {s.agent: s for s in result.details.steps}
    assert "55120" in steps["translate"].output and "order" not in steps["translate"].output.lower()
    assert steps["extract"].output == "ORDER_ID: 55120"  # on the English payload, side by side


def test_multi_intent_can_be_turned_off(default_policy: Policy, router: Router) -> None:
    single = Router(policy_with(default_policy, **{"router.multi_intent": False}), embedder=router.embedder)
    result = single.invoke(TWO_THINGS)
    assert "+" not in result.route and result.reason_code != "multi_intent"
