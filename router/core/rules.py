"""The routing decision as a pure function of (scores, policy), so every boundary is unit-testable."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from slm_router.policies import Policy
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
) -> Decision:
    """Pick the specialist, the fallback or a rejection, and say why in words."""
    if forced_route is not None:
        if forced_route not in policy.routes:
            raise UnknownRouteError(f"unknown route {forced_route!r}; routes are {sorted(policy.routes)}")
        return _serve(forced_route, policy, "forced", f"route {forced_route} was requested explicitly")

    langs = policy.languages
    if (
        langs.non_native_route
        and language
        and language not in langs.native
        and language_confidence >= langs.min_detection_confidence
    ):
        return _serve(
            langs.non_native_route,
            policy,
            "language",
            f"language {language} ({language_confidence:.4g}) is not in {langs.native}",
        )

    if scores.ood:
        return _serve(
            policy.router.ood_route,
            policy,
            "ood",
            f"out of distribution: best similarity {scores.max_similarity:.4g} "
            f"< {policy.router.ood_threshold:.4g}",
        )

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
