"""The decision at its boundaries: a pure function, so no model is loaded here."""

from __future__ import annotations

import pytest

from slm_router.policies import Policy
from slm_router.router.core.index import RouteScores
from slm_router.router.core.rules import check_specialist, decide
from slm_router.router.errors import UnknownRouteError
from tests.conftest import policy_with


def scores(
    top: str = "sentiment",
    confidence: float = 0.8,
    margin: float = 0.5,
    max_sim: float = 0.7,
    ood: bool = False,
) -> RouteScores:
    others = {"translate": 0.0, "sentiment": 0.0, "extract": 0.0, "other": 0.0}
    others[top] = confidence
    return RouteScores(
        similarities=others,
        probabilities=others,
        top=top,
        confidence=confidence,
        runner_up="extract" if top != "extract" else "sentiment",
        margin=margin,
        max_similarity=max_sim,
        ood=ood,
    )


@pytest.mark.parametrize(
    ("confidence", "action"), [(0.5, "specialist"), (0.4999, "fallback"), (0.51, "specialist")]
)
def test_router_threshold_boundary(default_policy: Policy, confidence: float, action: str) -> None:
    decision = decide(scores(confidence=confidence), default_policy, "en", 0.99)
    assert decision.action == action
    assert decision.code == ("confident" if action == "specialist" else "low_confidence")
    if action == "fallback":
        assert decision.reason == "confidence 0.4999 < threshold 0.5 for route sentiment"


def test_margin_boundary(default_policy: Policy) -> None:
    policy = policy_with(default_policy, **{"routes.sentiment.margin": 0.2})
    assert decide(scores(margin=0.2), policy, "en", 0.99).action == "specialist"
    low = decide(scores(margin=0.19), policy, "en", 0.99)
    assert low.action == "fallback" and low.code == "low_margin" and "margin 0.19 < 0.2" in low.reason


def test_default_threshold_applies_when_route_has_none(default_policy: Policy) -> None:
    policy = policy_with(
        default_policy, **{"routes.extract.threshold": None, "router.default_threshold": 0.9}
    )
    assert decide(scores("extract", confidence=0.89), policy, "en", 0.99).action == "fallback"
    assert decide(scores("extract", confidence=0.9), policy, "en", 0.99).action == "specialist"


def test_out_of_distribution_goes_to_ood_route(default_policy: Policy) -> None:
    decision = decide(scores(ood=True, max_sim=0.12), default_policy, "en", 0.99)
    assert decision.action == "fallback" and decision.route == "other" and decision.code == "fallback_route"
    assert "out of distribution: best similarity 0.12 < 0.3" in decision.reason


def test_route_without_agent_always_escalates(default_policy: Policy) -> None:
    decision = decide(scores("other", confidence=0.99), default_policy, "en", 0.99)
    assert decision.action == "fallback" and "served by the fallback" in decision.reason


def test_non_native_language_goes_to_translate_only_when_sure(default_policy: Policy) -> None:
    assert decide(scores(), default_policy, "pt", 0.9).route == "translate"
    assert decide(scores(), default_policy, "pt", 0.49).route == "sentiment"
    off = policy_with(default_policy, **{"languages.non_native_route": None})
    assert decide(scores(), off, "pt", 0.99).route == "sentiment"


def test_forced_route_and_unknown_route(default_policy: Policy) -> None:
    forced = decide(scores(confidence=0.1), default_policy, "en", 0.99, forced_route="extract")
    assert forced.action == "specialist" and forced.route == "extract"
    with pytest.raises(UnknownRouteError, match="unknown route 'refunds'"):
        decide(scores(), default_policy, "en", 0.99, forced_route="refunds")


def test_fallback_disabled_rejects(default_policy: Policy) -> None:
    policy = policy_with(default_policy, **{"fallback.enabled": False})
    decision = decide(scores(confidence=0.1), policy, "en", 0.99)
    assert decision.action == "reject" and decision.reason.endswith("fallback disabled")


@pytest.mark.parametrize(("confidence", "escalates"), [(0.55, False), (0.5499, True), (0.9, False)])
def test_specialist_min_confidence_boundary(
    default_policy: Policy, confidence: float, escalates: bool
) -> None:
    minimum = default_policy.routes["sentiment"].min_confidence
    escalation = check_specialist(confidence, True, None, minimum, "route sentiment")
    assert (escalation is not None) is escalates
    if escalation is not None:
        assert escalation.code == "specialist_low_confidence"
        assert escalation.reason == "specialist confidence 0.5499 < 0.55 for route sentiment"


def test_unsupported_specialist_always_escalates(default_policy: Policy) -> None:
    escalation = check_specialist(1.0, False, "no local model for en→de", 0.5, "route translate")
    assert escalation is not None and escalation.code == "specialist_unsupported"
    assert escalation.reason == "specialist cannot serve this request: no local model for en→de"
