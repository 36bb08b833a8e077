"""What-if: what a route's threshold would do to escalation, accuracy and cost, from recorded decisions.

"Escalated" means not answered locally: sent to the fallback, or rejected when the fallback is off.
Each logged decision keeps the router's calibrated route probabilities, so a threshold can be replayed
without a model: rows the thresholds decide (codes `confident`, `low_confidence`, `low_margin`) are
re-decided with `tuning.escalated` (and the policy's margin rule); the rest keep what happened (forced,
out of scope, another language, a specialist that escalated on its own, the budget). Accuracy counts, on
operator-labelled rows, an escalated request as right (the large model is the reference, as in tuning)
and a local answer as right when its route is the labelled one. Cost uses the recorded costs: the mean
fallback call (or the policy's estimate when none is logged) and the mean local answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from slm_router.policies import Policy
from slm_router.router.core.costs import fallback_request_cost
from slm_router.router.ops.decision_log import DecisionLog
from slm_router.router.ops.tuning import OOD, ScoredSet, escalated

THRESHOLD_CODES = ("confident", "low_confidence", "low_margin")
ROWS = 20_000  # the most recent decisions replayed


class WhatIfPoint(BaseModel):
    threshold: float
    escalation_rate: float
    accuracy: float | None
    labelled: int
    cost_per_1k: float


@dataclass(frozen=True)
class _Replay:
    data: ScoredSet
    decided: np.ndarray  # rows the thresholds decide
    fixed: np.ndarray  # what happened to the other rows (escalated or not)
    margin: np.ndarray
    fallback_cost: float
    local_cost: float


def _fallback_estimate(policy: Policy) -> float:
    """No fallback call logged yet: the policy's price for one (the prompt in, max_tokens out); a
    disabled fallback rejects, for free."""
    return fallback_request_cost(policy, []) if policy.fallback.enabled else 0.0


def _replay(log: DecisionLog, policy: Policy, rows: int) -> _Replay | None:
    records = log.query(
        "SELECT d.route, d.action, d.escalated, d.reason_code, d.margin, d.scores_json, d.cost, "
        "l.decision_id AS labelled, l.route AS label FROM decisions d "
        "LEFT JOIN labels l ON l.decision_id = d.id ORDER BY d.id DESC LIMIT ?",
        (rows,),
    )
    if not records:
        return None
    routes = list(policy.routes)
    column = {r: i for i, r in enumerate(routes)}
    probs = np.zeros((len(records), len(routes)))
    labels = np.full(len(records), OOD - 1)  # unlabelled
    for i, r in enumerate(records):
        for route, p in json.loads(r["scores_json"]).items():
            if route in column:
                probs[i, column[route]] = p
        if r["labelled"] is not None:
            labels[i] = column.get(r["label"], OOD) if r["label"] is not None else OOD
    code = np.array([r["reason_code"] for r in records])
    cost = np.array([r["cost"] for r in records], dtype=float)
    fallback = np.array([r["action"] == "fallback" for r in records])
    servable = np.array(
        [policy.routes[r].agent is not None or policy.routes[r].flow is not None for r in routes]
    )
    data = ScoredSet(
        routes=routes,
        probs=probs,
        in_scope=(code != "ood").astype(float),  # out of scope stays out of scope: thresholds don't move it
        labels=labels,
        servable=servable,
    )
    spent = fallback & (cost > 0)
    local = np.array([r["action"] in ("specialist", "flow") for r in records])
    return _Replay(
        data=data,
        decided=np.isin(code, THRESHOLD_CODES),
        fixed=np.array([bool(r["escalated"]) or r["action"] == "reject" for r in records]),
        margin=np.array([np.inf if r["margin"] is None else r["margin"] for r in records], dtype=float),
        fallback_cost=float(cost[spent].mean()) if spent.any() else _fallback_estimate(policy),
        local_cost=float(cost[local].mean()) if local.any() else 0.0,
    )


def curve(
    log: DecisionLog, policy: Policy, route: str | None, thresholds: list[float], rows: int = ROWS
) -> list[WhatIfPoint]:
    """For each threshold (of `route`, or of every route when None; the others keep the policy's), the
    predicted escalation rate, accuracy on labelled rows (None without labels) and cost per 1k requests
    over the most recent `rows` decisions. Nothing is written."""
    if route is not None and route not in policy.routes:
        raise ValueError(f"route {route!r} is not in the policy; routes are {sorted(policy.routes)}")
    if not log.path.is_file():
        return []
    replay = _replay(log, policy, rows)
    if replay is None:
        return []
    data = replay.data
    pred = data.probs.argmax(axis=1)
    margins = np.array([policy.margin(r) for r in data.routes])
    labelled = data.labels >= OOD
    points = []
    for t in thresholds:
        setting = {r: policy.threshold(r) for r in data.routes}
        setting.update({r: t for r in data.routes if route is None or r == route})
        decided = escalated(data, setting, 0.5) | (replay.margin < margins[pred])
        esc = np.where(replay.decided, decided, replay.fixed)
        rate = float(esc.mean())
        right = esc | (pred == data.labels)
        points.append(
            WhatIfPoint(
                threshold=t,
                escalation_rate=rate,
                accuracy=float(right[labelled].mean()) if labelled.any() else None,
                labelled=int(labelled.sum()),
                cost_per_1k=1000 * (rate * replay.fallback_cost + (1 - rate) * replay.local_cost),
            )
        )
    return points
