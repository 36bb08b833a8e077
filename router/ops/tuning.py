"""Choose per-route thresholds and the out-of-distribution threshold from recorded router scores.

Pure numpy on one scoring pass (calibrated route probabilities, best similarity, the expected route), so
tuning 10k examples takes well under a second and never loads a model. Three targets, one at a time:

- `max_escalation`: the most routed accuracy while sending at most this share to the fallback;
- `min_accuracy`: the least escalation while local answers are right at least this often;
- `budget`: the most quality while the average cost per request stays within the budget.

Within an OOD threshold, each route escalates its least confident examples first, and routes take turns by
how many mistakes their next escalations remove (the slopes of each route's upper concave hull of
cumulative errors), so a threshold moves up where it buys the most accuracy. The OOD threshold is chosen
from a grid of similarity quantiles. Quality counts an escalated request as answered correctly (the large
model is the reference), as in RouteLLM's and FrugalGPT's cost-quality curves.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

OOD = -1  # expected label of an out-of-scope example


class TuningError(ValueError):
    """The data cannot be tuned on, or the target cannot be met (the message says why, and what is)."""


@dataclass(frozen=True)
class ScoredSet:
    """Recorded scores: `probs` (n, R) calibrated route probabilities, `max_sim` (n,) best cosine similarity,
    `labels` (n,) expected route index or OOD, `servable` (R,) routes answered locally (agent or flow)."""

    routes: list[str]
    probs: np.ndarray
    max_sim: np.ndarray
    labels: np.ndarray
    servable: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.labels)
        if n == 0:
            raise TuningError("no examples to tune on")
        if self.probs.shape != (n, len(self.routes)) or self.max_sim.shape != (n,):
            raise TuningError(
                f"shapes disagree: probs {self.probs.shape}, max_sim {self.max_sim.shape}, {n} labels"
            )


TargetKind = Literal["max_escalation", "min_accuracy", "budget"]


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    value: float
    fallback_cost: float = 1.0  # per request, any unit (e.g. USD per 1k requests)
    local_cost: float = 0.0


@dataclass
class Operating:
    """One setting and what it does on a data set."""

    thresholds: dict[str, float]
    ood_threshold: float
    escalation_rate: float
    routed_accuracy: float
    quality: float
    oos_recall: float | None
    in_scope_false_escalation: float | None
    cost_per_request: float


@dataclass
class TuningResult:
    chosen: Operating
    curve: list[tuple[float, float]] = field(
        default_factory=list
    )  # (escalation rate, quality) at the chosen OOD


def escalated(data: ScoredSet, thresholds: dict[str, float], ood_threshold: float) -> np.ndarray:
    """Which rows a setting sends to the fallback: out of distribution, a fallback-only route, or below
    the top route's threshold."""
    pred = data.probs.argmax(axis=1)
    t = np.array([thresholds.get(r, 0.0) for r in data.routes])
    return np.asarray(
        (data.max_sim < ood_threshold) | ~data.servable[pred] | (data.probs.max(axis=1) < t[pred])
    )


def evaluate(
    data: ScoredSet, thresholds: dict[str, float], ood_threshold: float, target: Target
) -> Operating:
    """What a setting does on `data` (used on the tuning split and, unchanged, on the report split)."""
    pred = data.probs.argmax(axis=1)
    return _operating(
        data, pred, escalated(data, thresholds, ood_threshold), thresholds, ood_threshold, target
    )


def tune(
    data: ScoredSet, target: Target, ood_grid: int = 21, curve_points: int = 41, min_support: int = 30
) -> TuningResult:
    """The best setting for `target` on `data`; raises TuningError with the reachable range if it cannot.

    A route gets its own threshold only with at least `min_support` examples predicted for it; the others
    share one, since a threshold fit on a handful of examples does not hold on new data.
    """
    if target.kind in ("max_escalation", "min_accuracy") and not 0.0 <= target.value <= 1.0:
        raise TuningError(f"{target.kind} must be between 0 and 1, got {target.value}")
    max_escalation = _escalation_allowed(target)
    pred = data.probs.argmax(axis=1)
    conf = data.probs.max(axis=1)
    wrong = pred != data.labels  # OOD examples are always wrong when answered locally
    support = np.bincount(pred, minlength=len(data.routes))
    group = np.where(support[pred] >= min_support, pred, -1)  # -1: the shared threshold
    candidates = np.unique(np.quantile(data.max_sim, np.linspace(0.0, 0.5, ood_grid)))
    best: tuple[tuple[float, ...], Operating] | None = None
    least_base = 1.0
    for tau in np.concatenate([[0.0], candidates]):
        base = (data.max_sim < tau) | ~data.servable[pred]
        least_base = min(least_base, float(base.mean()))
        order = _escalation_order(group, conf, wrong, ~base)
        k = _choose_k(data, wrong, base, order, target, max_escalation)
        if k is None:
            continue
        escalated = base.copy()
        escalated[order[:k]] = True
        point = _operating(
            data, pred, escalated, _thresholds(data, pred, group, conf, escalated, base), float(tau), target
        )
        key = _objective(point, target)
        if best is None or key > best[0]:
            best = (key, point)
    if best is None:
        raise TuningError(_unreachable(target, least_base, data))
    chosen = best[1]
    return TuningResult(chosen=chosen, curve=_curve(data, pred, group, conf, wrong, chosen, curve_points))


def _escalation_allowed(target: Target) -> float:
    if target.kind == "max_escalation":
        return target.value
    if target.kind == "budget":
        if target.fallback_cost <= target.local_cost:
            return 1.0
        share = (target.value - target.local_cost) / (target.fallback_cost - target.local_cost)
        if share < 0:
            raise TuningError(
                f"budget {target.value:g} per request is below the cost of answering locally "
                f"({target.local_cost:g}); no setting can meet it"
            )
        return min(share, 1.0)
    return 1.0


def _escalation_order(
    group: np.ndarray, conf: np.ndarray, wrong: np.ndarray, open_: np.ndarray
) -> np.ndarray:
    """Indices of the not-yet-escalated examples, in the order that removes the most mistakes first."""
    index, slope = [], []
    for g in np.unique(group[open_]):
        members = np.flatnonzero(open_ & (group == g))
        members = members[np.argsort(conf[members], kind="stable")]
        index.append(members)
        slope.append(_hull_slopes(wrong[members].astype(float)))
    if not index:
        return np.zeros(0, dtype=int)
    items, slopes = np.concatenate(index), np.concatenate(slope)
    # Highest slope first; within a route the hull keeps the least-confident-first order (stable sort).
    return items[np.argsort(-slopes, kind="stable")]


def _hull_slopes(errors: np.ndarray) -> np.ndarray:
    """Per item, the slope of the upper concave hull of cumulative errors (non-increasing along the route)."""
    cum = np.concatenate([[0.0], np.cumsum(errors)])
    hull = [0]
    for i in range(1, len(cum)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (cum[b] - cum[a]) * (i - a) <= (cum[i] - cum[a]) * (b - a):
                hull.pop()
            else:
                break
        hull.append(i)
    slopes = np.empty(len(errors))
    for a, b in itertools.pairwise(hull):
        slopes[a:b] = (cum[b] - cum[a]) / (b - a)
    return slopes


def _choose_k(
    data: ScoredSet,
    wrong: np.ndarray,
    base: np.ndarray,
    order: np.ndarray,
    target: Target,
    max_escalation: float,
) -> int | None:
    n = len(data.labels)
    room = int(np.floor(max_escalation * n + 1e-9)) - int(base.sum())
    if room < 0:
        return None
    # Per k (the first k of `order` escalated): wrong answers left, local answers left.
    wrong_local = int((wrong & ~base).sum()) - np.concatenate([[0], np.cumsum(wrong[order])])
    local = int((~base).sum()) - np.arange(len(order) + 1)
    if target.kind == "min_accuracy":  # the smallest k whose local answers are right often enough
        acc = np.where(local > 0, 1.0 - wrong_local / np.maximum(local, 1), 1.0)
        meets = np.flatnonzero(acc >= target.value - 1e-12)
        return int(meets[0]) if len(meets) else None
    allowed = slice(0, min(room, len(order)) + 1)
    if target.kind == "budget":  # quality only grows with k: the first k where it stops growing
        score = -wrong_local[allowed].astype(float)
    else:  # routed accuracy; escalating nothing more wins ties
        score = np.where(local[allowed] > 0, 1.0 - wrong_local[allowed] / np.maximum(local[allowed], 1), 1.0)
    return int(np.argmax(score >= score.max() - 1e-12))


def _thresholds(
    data: ScoredSet,
    pred: np.ndarray,
    group: np.ndarray,
    conf: np.ndarray,
    escalated: np.ndarray,
    base: np.ndarray,
) -> dict[str, float]:
    """Per threshold group (a route, or the shared one): halfway between its most confident escalated and
    least confident kept example."""
    out = {}
    for r, name in enumerate(data.routes):
        own = (pred == r) & (group == r)
        tuned = ~base & (own if own.any() else group == -1)
        up = conf[tuned & escalated]
        kept = conf[tuned & ~escalated]
        if len(up) == 0:
            out[name] = 0.0
        elif len(kept) == 0:
            out[name] = 1.0
        else:
            out[name] = float(min(1.0, (up.max() + kept.min()) / 2))
    return out


def _operating(
    data: ScoredSet,
    pred: np.ndarray,
    escalated: np.ndarray,
    thresholds: dict[str, float],
    ood_threshold: float,
    target: Target,
) -> Operating:
    local = ~escalated
    correct_local = local & (pred == data.labels)
    oos = data.labels == OOD
    in_scope = ~oos & data.servable[np.maximum(data.labels, 0)]
    rate = float(escalated.mean())
    return Operating(
        thresholds=thresholds,
        ood_threshold=ood_threshold,
        escalation_rate=rate,
        routed_accuracy=float(correct_local.sum() / local.sum()) if local.any() else 1.0,
        quality=float((escalated | correct_local).mean()),
        oos_recall=float(escalated[oos].mean()) if oos.any() else None,
        in_scope_false_escalation=float(escalated[in_scope].mean()) if in_scope.any() else None,
        cost_per_request=rate * target.fallback_cost + (1 - rate) * target.local_cost,
    )


def _objective(point: Operating, target: Target) -> tuple[float, ...]:
    if target.kind == "min_accuracy":
        return (-point.escalation_rate, point.routed_accuracy)
    if target.kind == "budget":
        return (point.quality, -point.cost_per_request)
    return (point.routed_accuracy, -point.escalation_rate)


def _curve(
    data: ScoredSet,
    pred: np.ndarray,
    group: np.ndarray,
    conf: np.ndarray,
    wrong: np.ndarray,
    chosen: Operating,
    points: int,
) -> list[tuple[float, float]]:
    base = (data.max_sim < chosen.ood_threshold) | ~data.servable[pred]
    order = _escalation_order(group, conf, wrong, ~base)
    curve = []
    for k in np.unique(np.linspace(0, len(order), points).astype(int)):
        escalated = base.copy()
        escalated[order[:k]] = True
        curve.append((float(escalated.mean()), float((escalated | (~escalated & ~wrong)).mean())))
    return curve


def _unreachable(target: Target, least_base: float, data: ScoredSet) -> str:
    if target.kind in ("max_escalation", "budget"):
        return (
            f"target {target.kind}={target.value:g} cannot be met: at least {least_base:.1%} of these "
            "examples escalate whatever the thresholds (routes served only by the fallback); "
            f"the lowest reachable escalation rate is {least_base:.3f}"
        )
    return f"target min_accuracy={target.value:g} cannot be met on {len(data.labels)} examples"
