"""Every escalation rule at its boundaries: pure functions, so no model is loaded here."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from slm_router.policies import Policy
from slm_router.policies.schema import FlowStep
from slm_router.router.core.index import RouteScores
from slm_router.router.core.rules import (
    Decision,
    Escalation,
    Evidence,
    FlowStepRef,
    MultiIntentRoute,
    RoutingEvidence,
    SpecialistOutcome,
    Verdict,
    check_specialist,
    decide,
    escalation,
)
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


SURE = "confidence 0.8 >= threshold 0.5 for route sentiment"
UNSURE = "confidence 0.3 < threshold 0.5 for route sentiment"
LOW = "specialist confidence 0.3 < 0.55 for route sentiment"
CAP = "escalation budget: cap reached"
DOWN = "fallback timed out"
CONFIDENT = Decision(action="specialist", route="sentiment", code="confident", reason=SURE)
DOUBTFUL = Decision(action="fallback", route="sentiment", code="low_confidence", reason=UNSURE)
OFF_TOPIC = "out of distribution: best similarity 0.12 < 0.3; route other is served by the fallback"
OTHER = Decision(action="fallback", route="other", code="fallback_route", reason=OFF_TOPIC)
ANSWERED = SpecialistOutcome(confidence=0.9)
WEAK = SpecialistOutcome(confidence=0.3)
FAILED = SpecialistOutcome(error="boom")


def request(
    confidence: float = 0.8,
    ood: bool = False,
    multi: MultiIntentRoute | None = None,
    **known: object,
) -> Evidence:
    routing = RoutingEvidence(
        scores=scores(confidence=confidence, max_sim=0.12 if ood else 0.7, ood=ood),
        language="en",
        language_confidence=0.99,
        multi_intent=multi,
    )
    return Evidence.model_validate({"routing": routing, **known})


def step(**known: object) -> Evidence:
    ref = FlowStepRef(flow="support-triage", step=FlowStep(agent="sentiment", min_confidence=0.45))
    return Evidence.model_validate({"step": ref, **known})


def esc(code: str, reason: str) -> Escalation:
    return Escalation.model_validate({"code": code, "reason": reason})


def spent(why: str) -> Escalation:
    return esc("budget_exceeded", f"{why}; {CAP}")


def failed(why: str) -> Escalation:
    return esc("fallback_failed", f"{why}; {DOWN}")


STEP_LOW = "specialist confidence 0.3 < 0.45 for step sentiment of flow support-triage"
CASES: dict[str, tuple[Evidence, Verdict]] = {
    # the router's rules
    "confident: ask the specialist": (request(), Verdict(action="specialist", decision=CONFIDENT)),
    "unsure: ask the fallback": (
        request(confidence=0.3),
        Verdict(action="fallback", decision=DOUBTFUL, escalation=esc("low_confidence", UNSURE)),
    ),
    "unsure, no fallback: reject": (
        request(confidence=0.3, has_fallback=False),
        Verdict(
            action="reject",
            decision=DOUBTFUL.model_copy(update={"action": "reject", "reason": f"{UNSURE}; no fallback"}),
            escalation=esc("low_confidence", f"{UNSURE}; no fallback"),
        ),
    ),
    "out of distribution: the fallback's route": (
        request(ood=True),
        Verdict(action="fallback", decision=OTHER, escalation=esc("fallback_route", OFF_TOPIC)),
    ),
    "several intents: a flow, nothing announced": (
        request(confidence=0.3, multi=MultiIntentRoute(route="translate+sentiment", reason="multi")),
        Verdict(
            action="specialist",
            decision=Decision(
                action="specialist", route="translate+sentiment", code="multi_intent", reason="multi"
            ),
        ),
    ),
    "several intents, unsure and no fallback: reject": (
        request(confidence=0.3, has_fallback=False, multi=MultiIntentRoute(route="a+b", reason="multi")),
        Verdict(
            action="reject",
            decision=DOUBTFUL.model_copy(update={"action": "reject", "reason": f"{UNSURE}; no fallback"}),
            escalation=esc("low_confidence", f"{UNSURE}; no fallback"),
        ),
    ),
    # the specialist's rules
    "specialist sure: keep its answer": (
        request(specialist=ANSWERED),
        Verdict(action="specialist", decision=CONFIDENT),
    ),
    "specialist weak: ask the fallback": (
        request(specialist=WEAK),
        Verdict(action="fallback", decision=CONFIDENT, escalation=esc("specialist_low_confidence", LOW)),
    ),
    "specialist weak, no fallback: its answer stands": (
        request(specialist=WEAK, has_fallback=False),
        Verdict(action="specialist", decision=CONFIDENT, kept_despite=LOW),
    ),
    "unsupported pair: ask the fallback": (
        request(specialist=SpecialistOutcome(confidence=1.0, supported=False, note="no local model")),
        Verdict(
            action="fallback",
            decision=CONFIDENT,
            escalation=esc("specialist_unsupported", "specialist cannot serve this request: no local model"),
        ),
    ),
    "specialist failed: ask the fallback": (
        request(specialist=FAILED),
        Verdict(
            action="fallback",
            decision=CONFIDENT,
            escalation=esc("specialist_failed", "specialist failed: boom"),
        ),
    ),
    "specialist failed, no fallback: reject": (
        request(specialist=FAILED, has_fallback=False),
        Verdict(
            action="reject",
            decision=CONFIDENT,
            escalation=esc("specialist_failed", "specialist failed: boom"),
        ),
    ),
    # the escalation budget
    "budget spent, weak answer: keep it, flagged": (
        request(specialist=WEAK, over_budget=CAP),
        Verdict(action="local", decision=CONFIDENT, escalation=spent(LOW), flag="budget_exceeded"),
    ),
    "budget spent, specialist not asked: ask it for a best guess": (
        request(confidence=0.3, over_budget=CAP),
        Verdict(action="specialist", decision=DOUBTFUL, escalation=spent(UNSURE), flag="budget_exceeded"),
    ),
    "budget spent, specialist failed: ask it once more": (
        request(specialist=FAILED, over_budget=CAP),
        Verdict(
            action="specialist",
            decision=CONFIDENT,
            escalation=spent("specialist failed: boom"),
            flag="budget_exceeded",
        ),
    ),
    "budget spent, best guess answered: keep it, flagged": (
        request(confidence=0.3, over_budget=CAP, best_guess=WEAK),
        Verdict(action="local", decision=DOUBTFUL, escalation=spent(UNSURE), flag="budget_exceeded"),
    ),
    "budget spent, best guess failed: reject": (
        request(confidence=0.3, over_budget=CAP, best_guess=FAILED),
        Verdict(action="reject", decision=DOUBTFUL, escalation=spent(UNSURE), flag="budget_exceeded"),
    ),
    "budget spent, deadline passed: reject": (
        request(confidence=0.3, over_budget=CAP, time_left=False),
        Verdict(action="reject", decision=DOUBTFUL, escalation=spent(UNSURE), flag="budget_exceeded"),
    ),
    "budget spent, no specialist for the route: reject": (
        request(ood=True, over_budget=CAP),
        Verdict(action="reject", decision=OTHER, escalation=spent(OFF_TOPIC), flag="budget_exceeded"),
    ),
    # the fallback's failure
    "fallback failed, weak answer: keep it, degraded": (
        request(specialist=WEAK, fallback_error=DOWN),
        Verdict(action="local", decision=CONFIDENT, escalation=failed(LOW), flag="degraded"),
    ),
    "fallback failed, specialist not asked: ask it for a best guess": (
        request(confidence=0.3, fallback_error=DOWN),
        Verdict(action="specialist", decision=DOUBTFUL, escalation=failed(UNSURE), flag="degraded"),
    ),
    "fallback failed, best guess answered: keep it, degraded": (
        request(confidence=0.3, fallback_error=DOWN, best_guess=ANSWERED),
        Verdict(action="local", decision=DOUBTFUL, escalation=failed(UNSURE), flag="degraded"),
    ),
    "fallback failed, no answer at all: fail": (
        request(ood=True, fallback_error=DOWN),
        Verdict(
            action="fail",
            decision=OTHER,
            escalation=failed(OFF_TOPIC),
            error=f"{DOWN} (needed because: {OFF_TOPIC})",
        ),
    ),
    "fallback failed, best guess failed too: fail": (
        request(specialist=FAILED, fallback_error=DOWN, best_guess=FAILED),
        Verdict(
            action="fail",
            decision=CONFIDENT,
            escalation=failed("specialist failed: boom"),
            error=f"{DOWN} (needed because: specialist failed: boom)",
        ),
    ),
    # a flow step: judged alone, never fails the request
    "step not run yet: run it": (step(), Verdict(action="specialist")),
    "step sure: keep it": (step(specialist=SpecialistOutcome(confidence=0.45)), Verdict(action="specialist")),
    "step weak: ask the fallback for this step": (
        step(specialist=WEAK),
        Verdict(action="fallback", escalation=esc("specialist_low_confidence", STEP_LOW)),
    ),
    "step weak, no fallback: keep it, degraded": (
        step(specialist=WEAK, has_fallback=False),
        Verdict(
            action="local",
            escalation=esc("specialist_low_confidence", STEP_LOW),
            flag="degraded",
            error=f"{STEP_LOW}; no fallback to escalate to",
        ),
    ),
    "step failed, budget spent: flagged, whatever it has": (
        step(specialist=FAILED, over_budget=CAP),
        Verdict(action="local", escalation=spent("specialist failed: boom"), flag="budget_exceeded"),
    ),
    "step weak, fallback failed: keep it, degraded, the step's own reason": (
        step(specialist=WEAK, fallback_error=DOWN),
        Verdict(
            action="local",
            escalation=esc("specialist_low_confidence", STEP_LOW),
            flag="degraded",
            error=f"{STEP_LOW}; {DOWN}",
        ),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_escalation_table(default_policy: Policy, case: str) -> None:
    evidence, expected = CASES[case]
    assert escalation(evidence, default_policy) == expected


def test_budget_reject_policy_rejects_even_a_kept_answer(default_policy: Policy) -> None:
    policy = policy_with(default_policy, **{"escalation.budget.when_exceeded": "reject"})
    verdict = escalation(request(specialist=WEAK, over_budget=CAP), policy)
    assert verdict == Verdict(
        action="reject", decision=CONFIDENT, escalation=spent(LOW), flag="budget_exceeded"
    )


def test_fallback_disabled_in_the_policy_rejects_before_any_agent(default_policy: Policy) -> None:
    policy = policy_with(default_policy, **{"fallback.enabled": False})
    verdict = escalation(request(confidence=0.3, has_fallback=False), policy)
    assert verdict.action == "reject" and verdict.decision is not None
    assert verdict.decision.reason == f"{UNSURE}; fallback disabled"


@pytest.mark.parametrize("confidence", [0.0, 0.3, 0.4999, 0.5, 0.9])
@pytest.mark.parametrize("ood", [False, True])
@pytest.mark.parametrize("language", [("en", 0.99), ("pt", 0.9), ("pt", 0.3)])
def test_the_routing_rung_is_decide(
    default_policy: Policy, confidence: float, ood: bool, language: tuple[str, float]
) -> None:
    """`decide_many` and evaluation ask `decide` alone; the graph must reach the same decision."""
    routing = RoutingEvidence(
        scores=scores(confidence=confidence, ood=ood), language=language[0], language_confidence=language[1]
    )
    verdict = escalation(Evidence(routing=routing), default_policy)
    assert verdict.decision == decide(routing.scores, default_policy, *language)


def test_forced_unknown_route_raises(default_policy: Policy) -> None:
    routing = RoutingEvidence(scores=scores(), forced_route="refunds")
    with pytest.raises(UnknownRouteError):
        escalation(Evidence(routing=routing), default_policy)


def test_evidence_is_about_a_request_or_a_step() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        Evidence()
    ref = FlowStepRef(flow="f", step=FlowStep(agent="sentiment"))
    with pytest.raises(ValidationError, match="exactly one"):
        Evidence(routing=RoutingEvidence(scores=scores()), step=ref)
