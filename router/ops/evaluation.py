"""Evaluate the router on labelled data and tune its thresholds: one scoring pass, then pure numpy.

Rows are JSONL: `{"text": ..., "route": ...}` (also accepted: `expected_route`, `intent`), with the route
`oos` for out-of-scope. "Escalated" means the router would not send the request to its route's specialist:
below the route's threshold, out of distribution, or a route served by the fallback (the `ood_route`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel

from slm_router.policies import Policy
from slm_router.router.core.calibration import expected_calibration_error
from slm_router.router.core.embedder import Embedder
from slm_router.router.core.index import RouteIndex
from slm_router.router.ops.training import read_labelled
from slm_router.router.ops.tuning import OOD, Operating, ScoredSet, Target, TuningResult, evaluate

OOS_LABELS = {"oos", "out_of_scope", "ood"}


class RouteScore(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int


class EvalReport(BaseModel):
    rows: int
    in_scope_accuracy: float
    oos_recall: float | None
    in_scope_false_escalation: float | None
    escalation_rate: float
    routed_accuracy: float
    ece: float
    escalation_rate_by_reason: dict[str, float]
    per_route: dict[str, RouteScore]


def read_rows(path: Path) -> tuple[list[str], list[str]]:
    """Texts and expected routes; a bad line is an error naming the line."""
    rows = read_labelled(path, ("route", "expected_route", "intent"))
    return [text for text, _ in rows], [route for _, route in rows]


def score(
    texts: list[str],
    routes: list[str],
    policy: Policy,
    index: RouteIndex,
    embedder: Embedder,
    show_progress: bool = True,
) -> ScoredSet:
    """The one model pass: embeddings (cached by content) -> calibrated probabilities and similarities."""
    unknown = sorted({r for r in routes if r not in index.routes and r.lower() not in OOS_LABELS})
    if unknown:
        raise ValueError(f"routes not in the policy: {unknown[:10]}; the policy has {index.routes[:10]}...")
    vectors = embedder.encode_cached(texts, "eval", show_progress)
    scored = index.score_many(vectors)
    probs = np.array([[s.probabilities[r] for r in index.routes] for s in scored])
    labels = np.array([OOD if r.lower() in OOS_LABELS else index.routes.index(r) for r in routes])
    servable = np.array([r != policy.router.ood_route for r in index.routes])
    if index.classifier == "linear":
        signal = np.array([s.in_scope_p for s in scored], dtype=float)
        return ScoredSet(index.routes, probs, signal, labels, servable, ood_key="ood_false_alarm")
    signal = np.array([s.max_similarity for s in scored], dtype=float)
    return ScoredSet(index.routes, probs, signal, labels, servable, ood_key="ood_threshold")


def policy_thresholds(policy: Policy, routes: list[str]) -> dict[str, float]:
    return {r: policy.threshold(r) for r in routes}


def policy_ood_threshold(policy: Policy, data: ScoredSet) -> float:
    """The policy's threshold on the signal `data` was scored with (kNN similarity or linear p-value)."""
    return float(getattr(policy.router, data.ood_key))


def escalation_reasons(
    data: ScoredSet, thresholds: dict[str, float], ood_threshold: float
) -> dict[str, float]:
    """Share of all rows escalated for each reason, checked in the order the router checks them."""
    pred = data.probs.argmax(axis=1)
    t = np.array([thresholds.get(r, 0.0) for r in data.routes])
    ood = data.in_scope < ood_threshold
    fallback_route = ~ood & ~data.servable[pred]
    low = ~ood & ~fallback_route & (data.probs.max(axis=1) < t[pred])
    shares = {"ood": ood.mean(), "fallback_route": fallback_route.mean(), "low_confidence": low.mean()}
    return {reason: round(float(share), 4) for reason, share in shares.items() if share > 0}


def report(data: ScoredSet, policy: Policy) -> tuple[EvalReport, Operating]:
    from sklearn.metrics import precision_recall_fscore_support

    thresholds = policy_thresholds(policy, data.routes)
    ood_threshold = policy_ood_threshold(policy, data)
    point = evaluate(data, thresholds, ood_threshold, Target("max_escalation", 1))
    pred = data.probs.argmax(axis=1)
    in_scope = data.labels != OOD
    correct = pred == data.labels
    precision, recall, f1, support = precision_recall_fscore_support(
        data.labels, pred, labels=range(len(data.routes)), zero_division=0.0
    )
    per_route = {
        name: RouteScore(
            precision=round(float(precision[r]), 4),
            recall=round(float(recall[r]), 4),
            f1=round(float(f1[r]), 4),
            support=int(support[r]),
        )
        for r, name in enumerate(data.routes)
    }
    result = EvalReport(
        rows=len(data.labels),
        in_scope_accuracy=round(float(correct[in_scope].mean()), 4) if in_scope.any() else 0.0,
        oos_recall=None if point.oos_recall is None else round(point.oos_recall, 4),
        in_scope_false_escalation=(
            None if point.in_scope_false_escalation is None else round(point.in_scope_false_escalation, 4)
        ),
        escalation_rate=round(point.escalation_rate, 4),
        routed_accuracy=round(point.routed_accuracy, 4),
        ece=round(
            expected_calibration_error(data.probs.max(axis=1)[in_scope], correct[in_scope].astype(float)), 4
        ),
        escalation_rate_by_reason=escalation_reasons(data, thresholds, ood_threshold),
        per_route=per_route,
    )
    return result, point


def split(data: ScoredSet, seed: int = 0, tuning_share: float = 0.5) -> tuple[ScoredSet, ScoredSet]:
    """A tuning split and a report split (stratified by label), so the reported numbers are honest.

    Written out rather than `train_test_split(stratify=...)`, which refuses a label with a single row: a
    user's labelled file often has a route with one example (here it lands in one of the two)."""
    rng = np.random.default_rng(seed)
    tuning = np.zeros(len(data.labels), dtype=bool)
    for label in np.unique(data.labels):
        members = np.flatnonzero(data.labels == label)
        rng.shuffle(members)
        tuning[members[: round(len(members) * tuning_share)]] = True
    return _subset(data, tuning), _subset(data, ~tuning)


def _subset(data: ScoredSet, mask: np.ndarray) -> ScoredSet:
    return ScoredSet(
        data.routes, data.probs[mask], data.in_scope[mask], data.labels[mask], data.servable, data.ood_key
    )


def tuned_policy(policy: Policy, result: TuningResult, ood_key: str) -> dict[str, object]:
    """The policy as YAML-ready data with the chosen thresholds; its example files become absolute paths, so
    the new file can live anywhere."""
    data = policy.portable_data()
    for route, value in result.chosen.thresholds.items():
        data["routes"][route]["threshold"] = round(value, 4)
    data["router"][ood_key] = round(result.chosen.ood_threshold, 4)
    return data
