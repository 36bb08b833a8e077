"""Every escalation rule, as pure functions of what is known so far, so every boundary is unit-testable.

`escalation(evidence, policy)` is the one decision: graph nodes and flow steps gather evidence (the
router's scores, the specialist's answer, the budget's and the fallback's refusals), ask it, and act on
the `Verdict`. `decide` (the router's rules) and `check_specialist` (the specialist's) are its first two
rungs, public because evaluation asks them alone.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from slm_router.policies import Policy
from slm_router.policies.schema import FlowStep
from slm_router.router.core.index import RouteScores
from slm_router.router.errors import UnknownRouteError

Action = Literal["specialist", "fallback", "reject"]
ReasonCode = Literal[
    "forced",
    "multi_intent",
    "language",
    "ood",
    "fallback_route",
    "low_confidence",
    "low_margin",
    "confident",
    "specialist_unsupported",
    "specialist_low_confidence",
    "specialist_failed",
    "fallback_failed",
    "budget_exceeded",
]
"""A stable label per reason, for metrics and logs; `reason` says the same in words with the numbers."""


class Decision(BaseModel):
    action: Action
    route: str
    code: ReasonCode
    reason: str


class Escalation(BaseModel):
    code: ReasonCode
    reason: str


def decide(
    scores: RouteScores,
    policy: Policy,
    language: str | None = None,
    language_confidence: float = 0.0,
    forced_route: str | None = None,
    translated: bool = False,
) -> Decision:
    """Pick the specialist, the fallback or a rejection, and say why in words.

    `translated`: `scores` are those of the message's translation into the first native language
    (languages.non_native translate_then_route), so its language no longer decides the route.
    """
    if forced_route is not None:
        if forced_route not in policy.routes:
            raise UnknownRouteError(f"unknown route {forced_route!r}; routes are {sorted(policy.routes)}")
        return _serve(forced_route, policy, "forced", f"route {forced_route} was requested explicitly")

    langs = policy.languages
    if (
        langs.non_native_route
        and not translated
        and language
        and language not in langs.native
        and language_confidence >= langs.min_detection_confidence
    ):
        untranslated = "; it was not translated" if langs.non_native == "translate_then_route" else ""
        return _serve(
            langs.non_native_route,
            policy,
            "language",
            f"language {language} ({language_confidence:.4g}) is not in {langs.native}{untranslated}",
        )

    if scores.ood:
        return _serve(policy.router.ood_route, policy, "ood", _out_of_scope(scores, policy))

    route = scores.top
    threshold = policy.threshold(route)
    if scores.confidence < threshold:
        return _escalate(
            route,
            policy,
            "low_confidence",
            f"confidence {scores.confidence:.4g} < threshold {threshold:.4g} for route {route}",
        )
    margin = policy.margin(route)
    if scores.margin < margin:
        return _escalate(
            route,
            policy,
            "low_margin",
            f"margin {scores.margin:.4g} < {margin:.4g} between {route} and {scores.runner_up}",
        )
    return _serve(
        route,
        policy,
        "confident",
        f"confidence {scores.confidence:.4g} >= threshold {threshold:.4g} for route {route}",
    )


def _out_of_scope(scores: RouteScores, policy: Policy) -> str:
    if scores.in_scope_p is not None:
        return (
            f"out of scope: {scores.in_scope_p:.2%} of held-out route examples look this unusual "
            f"< {policy.router.ood_false_alarm:.4g}"
        )
    best, threshold = scores.max_similarity, policy.router.ood_threshold
    return f"out of distribution: best similarity {best:.4g} < {threshold:.4g}"


def _serve(route: str, policy: Policy, code: ReasonCode, why: str) -> Decision:
    if policy.routes[route].agent is None and policy.routes[route].flow is None:
        return _escalate(route, policy, "fallback_route", f"{why}; route {route} is served by the fallback")
    return Decision(action="specialist", route=route, code=code, reason=why)


def _escalate(route: str, policy: Policy, code: ReasonCode, why: str) -> Decision:
    if not policy.fallback.enabled:
        return Decision(action="reject", route=route, code=code, reason=f"{why}; fallback disabled")
    return Decision(action="fallback", route=route, code=code, reason=why)


def check_specialist(
    confidence: float, supported: bool, note: str | None, minimum: float | None, where: str
) -> Escalation | None:
    """After a specialist: why to escalate its answer, or None to keep it. `where` names the route/step."""
    if not supported:
        return Escalation(
            code="specialist_unsupported",
            reason=f"specialist cannot serve this request: {note or 'unsupported'}",
        )
    if minimum is not None and confidence < minimum:
        extra = f" ({note})" if note else ""
        return Escalation(
            code="specialist_low_confidence",
            reason=f"specialist confidence {confidence:.4g} < {minimum:.4g} for {where}{extra}",
        )
    return None


Next = Literal["specialist", "fallback", "local", "reject", "fail"]
"""What a verdict asks for: the specialist's answer (asked for first when it has none yet: a request's
route, or a best guess once the fallback is out of reach), the fallback, the local answer flagged
(`Verdict.flag`), no answer, or a `FallbackError`."""


class MultiIntentRoute(BaseModel):
    """A multi-intent request's combined route ("translate+sentiment") and its clauses in words."""

    route: str
    reason: str


class RoutingEvidence(BaseModel):
    """What the router knows of a request before any agent runs."""

    scores: RouteScores
    language: str | None = None
    language_confidence: float = 0.0
    forced_route: str | None = None
    translated: bool = Field(
        default=False, description="`scores` are of the message's translation into a native language."
    )
    multi_intent: MultiIntentRoute | None = None


class SpecialistOutcome(BaseModel):
    """A specialist's answer as the rules see it, or (`error`) why it gave none."""

    confidence: float = 0.0
    supported: bool = True
    note: str | None = None
    error: str | None = None


class FlowStepRef(BaseModel):
    """A step of a flow: its agent is given, so only that agent's answer and the fallback side count."""

    flow: str
    step: FlowStep


class Evidence(BaseModel):
    """What is known so far about one request (`routing`) or one flow step (`step`)."""

    routing: RoutingEvidence | None = None
    step: FlowStepRef | None = None
    specialist: SpecialistOutcome | None = Field(default=None, description="None until it was asked.")
    has_fallback: bool = True
    over_budget: str | None = Field(
        default=None, description="Why the escalation budget withholds the fallback; asked when escalating."
    )
    fallback_error: str | None = Field(default=None, description="Why the fallback could not answer.")
    best_guess: SpecialistOutcome | None = Field(
        default=None, description="The specialist, asked once the fallback was out of reach."
    )
    time_left: bool = Field(default=True, description="The request's deadline has not passed.")

    @model_validator(mode="after")
    def _one_subject(self) -> Evidence:
        if (self.routing is None) == (self.step is None):
            raise ValueError("evidence is about a request (`routing`) or a flow step (`step`): exactly one")
        return self


class Verdict(BaseModel):
    """What to do next, and why: `escalation` is what the result reports (None: the decision's reason)."""

    action: Next
    decision: Decision | None = Field(default=None, description="The router's; None for a flow step.")
    escalation: Escalation | None = None
    flag: Literal["budget_exceeded", "degraded"] | None = None
    kept_despite: str | None = Field(
        default=None, description="A doubt with no fallback to act on: the specialist's answer stands."
    )
    error: str | None = Field(default=None, description="A flow step's error, or the FallbackError message.")


def escalation(evidence: Evidence, policy: Policy) -> Verdict:
    """Every escalation rule, in the order a request meets them.

    The router's rules pick the route, the specialist's judge its answer, then the fallback side decides:
    none configured, the escalation budget spent, the fallback failing. A flow step is judged like a
    request's specialist but never fails the request: without the fallback it keeps what it has, flagged.
    """
    decision, why = _doubt(evidence, policy)
    if decision is not None and decision.action == "reject":
        return Verdict(action="reject", decision=decision, escalation=why)
    if why is None:
        return Verdict(action="specialist", decision=decision)
    if not evidence.has_fallback:
        if decision is None:
            return Verdict(
                action="local",
                escalation=why,
                flag="degraded",
                error=f"{why.reason}; no fallback to escalate to",
            )
        if evidence.specialist is not None and evidence.specialist.error is None:
            return Verdict(action="specialist", decision=decision, kept_despite=why.reason)
        return Verdict(action="reject", decision=decision, escalation=why)
    if evidence.over_budget is not None:
        spent = Escalation(code="budget_exceeded", reason=f"{why.reason}; {evidence.over_budget}")
        if decision is None:
            return Verdict(action="local", escalation=spent, flag="budget_exceeded")
        refused = Verdict(action="reject", decision=decision, escalation=spent, flag="budget_exceeded")
        if policy.escalation.budget.when_exceeded == "reject":
            return refused
        local = Verdict(action="local", decision=decision, escalation=spent, flag="budget_exceeded")
        return _without_fallback(evidence, policy, local, otherwise=refused)
    if evidence.fallback_error is None:
        return Verdict(action="fallback", decision=decision, escalation=why)
    if decision is None:
        return Verdict(
            action="local", escalation=why, flag="degraded", error=f"{why.reason}; {evidence.fallback_error}"
        )
    failed = Escalation(code="fallback_failed", reason=f"{why.reason}; {evidence.fallback_error}")
    local = Verdict(action="local", decision=decision, escalation=failed, flag="degraded")
    error = f"{evidence.fallback_error} (needed because: {why.reason})"
    fail = Verdict(action="fail", decision=decision, escalation=failed, error=error)
    return _without_fallback(evidence, policy, local, otherwise=fail)


def _doubt(evidence: Evidence, policy: Policy) -> tuple[Decision | None, Escalation | None]:
    """The router's decision (None for a flow step) and what wants the fallback, if anything yet."""
    if evidence.step is not None:
        ref = evidence.step
        where = f"step {ref.step.agent} of flow {ref.flow}"
        return None, _specialist_doubt(evidence.specialist, ref.step.min_confidence, where)
    assert evidence.routing is not None  # the validator allows nothing else
    decision = _decision(evidence.routing, policy, evidence.has_fallback)
    if decision.action != "specialist":
        return decision, Escalation(code=decision.code, reason=decision.reason)
    if evidence.specialist is None:  # not asked yet (a flow's steps are judged one by one)
        return decision, None
    minimum = policy.routes[decision.route].min_confidence
    return decision, _specialist_doubt(evidence.specialist, minimum, f"route {decision.route}")


def _decision(routing: RoutingEvidence, policy: Policy, has_fallback: bool) -> Decision:
    """`decide`, then: nothing to escalate to means no answer; several intents are served by a flow."""
    decision = decide(
        routing.scores,
        policy,
        routing.language,
        routing.language_confidence,
        routing.forced_route,
        routing.translated,
    )
    if decision.action == "fallback" and not has_fallback:
        decision = decision.model_copy(
            update={"action": "reject", "reason": f"{decision.reason}; no fallback"}
        )
    multi = routing.multi_intent
    if multi is not None and decision.action != "reject":
        return Decision(action="specialist", route=multi.route, code="multi_intent", reason=multi.reason)
    return decision


def _specialist_doubt(
    outcome: SpecialistOutcome | None, minimum: float | None, where: str
) -> Escalation | None:
    if outcome is None:
        return None
    if outcome.error is not None:
        return Escalation(code="specialist_failed", reason=f"specialist failed: {outcome.error}")
    return check_specialist(outcome.confidence, outcome.supported, outcome.note, minimum, where)


def _without_fallback(evidence: Evidence, policy: Policy, answer: Verdict, otherwise: Verdict) -> Verdict:
    """Without the fallback: the specialist's answer, else a best guess asked for now, else `otherwise`."""
    if any(o is not None and o.error is None for o in (evidence.specialist, evidence.best_guess)):
        return answer
    route = policy.routes[answer.decision.route] if answer.decision else None
    if evidence.best_guess is None and evidence.time_left and route is not None and route.agent:
        return answer.model_copy(update={"action": "specialist"})
    return otherwise
