"""Choose per-route thresholds and the out-of-scope threshold from recorded router scores.

Pure numpy on one scoring pass (calibrated route probabilities, the out-of-scope signal, the expected
route), so tuning 10k examples takes well under a second and never loads a model. One target at a time:

- `max_escalation`: the most routed accuracy while sending at most this share to the fallback;
- `min_accuracy`: the least escalation while local answers are right at least this often;
- `budget`: the most quality while the average cost per request stays within the budget;
- `max_false_escalation`: the most quality while escalating at most this share of in-scope requests;
- `min_oos_recall`: the least in-scope escalation while escalating at least this share of out-of-scope.

The last two are shares within a class, so they hold when the share of out-of-scope traffic moves between
the tuning file and live traffic. The first three mix both classes; `Target.oos_share` reweights the rows
to the share you expect, so "at most 20% escalated" means 20% of the traffic you will see.

Within an OOS threshold, each route escalates its least confident examples first, and routes take turns by
how much their next escalations buy per unit of the target's constraint (the slopes of each route's upper
concave hull), so a threshold moves up where it buys the most. The OOS threshold is chosen from a grid of
signal quantiles. Quality counts an escalated request as answered correctly (the large model is the
reference), as in RouteLLM's and FrugalGPT's cost-quality curves.
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
    """Recorded scores: `probs` (n, R) calibrated route probabilities, `in_scope` (n,) the out-of-scope
    signal (higher = more in scope: the best cosine similarity for kNN, the p-value for the linear head),
    `labels` (n,) expected route index or OOD, `servable` (R,) routes answered locally (agent or flow),
    `ood_key` the policy key its threshold is written to."""

    routes: list[str]
    probs: np.ndarray
    in_scope: np.ndarray
    labels: np.ndarray
    servable: np.ndarray
    ood_key: str = "ood_threshold"

    def __post_init__(self) -> None:
        n = len(self.labels)
        if n == 0:
            raise TuningError("no examples to tune on")
        if self.probs.shape != (n, len(self.routes)) or self.in_scope.shape != (n,):
            raise TuningError(
                f"shapes disagree: probs {self.probs.shape}, in_scope {self.in_scope.shape}, {n} labels"
            )

    @property
    def oos_share(self) -> float:
        return float((self.labels == OOD).mean())


TargetKind = Literal["max_escalation", "min_accuracy", "budget", "max_false_escalation", "min_oos_recall"]
SHARE_TARGETS = ("max_escalation", "min_accuracy", "max_false_escalation", "min_oos_recall")


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    value: float
    fallback_cost: float = 1.0  # per request, any unit (e.g. USD per 1k requests)
    local_cost: float = 0.0
    oos_share: float | None = None  # expected out-of-scope share of live traffic; None = the data's own


@dataclass
class Operating:
    """One setting and what it does on a data set (at the target's out-of-scope share)."""

    thresholds: dict[str, float]
    ood_threshold: float
    escalation_rate: float
    routed_accuracy: float
    quality: float
    oos_recall: float | None
    in_scope_false_escalation: float | None
    cost_per_request: float


Curve = list[tuple[float, float]]  # (escalation rate, quality) as the thresholds rise


@dataclass
class TuningResult:
    chosen: Operating
    curve: Curve = field(default_factory=list)  # at the chosen OOS threshold, at the target's share
    curves: dict[str, Curve] = field(default_factory=dict)  # labelled: the file's share, the expected one


def weights(data: ScoredSet, oos_share: float | None) -> np.ndarray:
    """Row weights that give out-of-scope rows `oos_share` of the mass (None: every row counts 1, so
    shares of whole rows stay exact)."""
    if oos_share is None:
        return np.ones(len(data.labels))
    if not 0.0 <= oos_share <= 1.0:
        raise TuningError(f"expected out-of-scope share must be between 0 and 1, got {oos_share}")
    oos = data.labels == OOD
    if (oos_share > 0 and not oos.any()) or (oos_share < 1 and oos.all()):
        raise TuningError(
            f"cannot reweight to {oos_share:.0%} out of scope: the data has {int(oos.sum())} out-of-scope "
            f"and {int((~oos).sum())} in-scope rows (label out-of-scope rows `oos`)"
        )
    return np.where(oos, oos_share / max(oos.sum(), 1), (1 - oos_share) / max((~oos).sum(), 1))


def escalated(data: ScoredSet, thresholds: dict[str, float], ood_threshold: float) -> np.ndarray:
    """Which rows a setting sends to the fallback: out of scope, a fallback-only route, or below the top
    route's threshold."""
    pred = data.probs.argmax(axis=1)
    t = np.array([thresholds.get(r, 0.0) for r in data.routes])
    return np.asarray(
        (data.in_scope < ood_threshold) | ~data.servable[pred] | (data.probs.max(axis=1) < t[pred])
    )


def evaluate(
    data: ScoredSet, thresholds: dict[str, float], ood_threshold: float, target: Target
) -> Operating:
    """What a setting does on `data` (used on the tuning split and, unchanged, on the report split)."""
    pred = data.probs.argmax(axis=1)
    w = weights(data, target.oos_share)
    return _operating(
        data, w, pred, escalated(data, thresholds, ood_threshold), thresholds, ood_threshold, target
    )


@dataclass
class _Rows:
    """Per-row quantities of one tuning run: weight, mistake if answered locally, and the target's
    constraint cost and gain of escalating it."""

    w: np.ndarray
    wrong: np.ndarray
    cost: np.ndarray
    gain: np.ndarray


def _rows(data: ScoredSet, target: Target, pred: np.ndarray) -> _Rows:
    w = weights(data, target.oos_share)
    wrong = pred != data.labels  # OOS examples are always wrong when answered locally
    oos = data.labels == OOD
    if target.kind in ("max_false_escalation", "min_oos_recall"):
        if target.kind == "min_oos_recall" and not oos.any():
            raise TuningError("min_oos_recall needs out-of-scope rows (label them `oos`)")
        if target.kind == "max_false_escalation" and oos.all():
            raise TuningError("max_false_escalation needs in-scope rows")
        cost = np.where(oos, 0.0, 1.0 / max((~oos).sum(), 1))  # a share of the in-scope rows
    else:
        cost = w / w.sum()
    share = w / w.sum()
    gain = np.where(oos, 1.0 / max(oos.sum(), 1), 0.0) if target.kind == "min_oos_recall" else share * wrong
    return _Rows(w, wrong, cost, gain)


def tune(
    data: ScoredSet, target: Target, ood_grid: int = 21, curve_points: int = 41, min_support: int = 30
) -> TuningResult:
    """The best setting for `target` on `data`; raises TuningError with the reachable range if it cannot.

    A route gets its own threshold only with at least `min_support` examples predicted for it; the others
    share one, since a threshold fit on a handful of examples does not hold on new data.
    """
    if target.kind in SHARE_TARGETS and not 0.0 <= target.value <= 1.0:
        raise TuningError(f"{target.kind} must be between 0 and 1, got {target.value}")
    allowed = _constraint_allowed(target)
    pred = data.probs.argmax(axis=1)
    conf = data.probs.max(axis=1)
    rows = _rows(data, target, pred)
    support = np.bincount(pred, minlength=len(data.routes))
    group = np.where(support[pred] >= min_support, pred, -1)  # -1: the shared threshold
    candidates = np.unique(np.quantile(data.in_scope, np.linspace(0.0, 0.5, ood_grid)))
    best: tuple[tuple[float, ...], Operating] | None = None
    least_base = 1.0
    for tau in np.concatenate([[-np.inf], candidates]):
        base = (data.in_scope < tau) | ~data.servable[pred]
        least_base = min(least_base, float(rows.cost[base].sum()))
        order = _escalation_order(group, conf, rows, ~base)
        k = _choose_k(rows, base, order, target, allowed)
        if k is None:
            continue
        escalated = base.copy()
        escalated[order[:k]] = True
        thresholds = _thresholds(data, pred, group, conf, escalated, base)
        point = _operating(data, rows.w, pred, escalated, thresholds, _finite(tau), target)
        key = _objective(point, target)
        if best is None or key > best[0]:
            best = (key, point)
    if best is None:
        raise TuningError(_unreachable(target, least_base, data))
    chosen = best[1]
    curve = _curve(data, rows.w, pred, group, conf, rows, chosen, curve_points)
    curves = {
        f"tuning file ({data.oos_share:.0%} out of scope)": _curve(
            data, weights(data, None), pred, group, conf, rows, chosen, curve_points
        )
    }
    if target.oos_share is not None:
        curves[f"expected traffic ({target.oos_share:.0%} out of scope)"] = curve
    return TuningResult(chosen=chosen, curve=curve, curves=curves)


def _finite(tau: float) -> float:
    return 0.0 if not np.isfinite(tau) else float(tau)


def _constraint_allowed(target: Target) -> float:
    """The most constraint mass the target allows (escalation share, or in-scope escalation share)."""
    if target.kind in ("max_escalation", "max_false_escalation"):
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


def _escalation_order(group: np.ndarray, conf: np.ndarray, rows: _Rows, open_: np.ndarray) -> np.ndarray:
    """Indices of the not-yet-escalated examples, in the order that buys the most gain per cost first."""
    index, slope = [], []
    for g in np.unique(group[open_]):
        members = np.flatnonzero(open_ & (group == g))
        members = members[np.argsort(conf[members], kind="stable")]
        index.append(members)
        slope.append(_hull_slopes(rows.gain[members], rows.cost[members]))
    if not index:
        return np.zeros(0, dtype=int)
    items, slopes = np.concatenate(index), np.concatenate(slope)
    # Highest slope first; within a route the hull keeps the least-confident-first order (stable sort).
    return items[np.argsort(-slopes, kind="stable")]


def _hull_slopes(gains: np.ndarray, costs: np.ndarray | None = None) -> np.ndarray:
    """Per item, the slope of the upper concave hull of cumulative gain over cumulative cost (one unit per
    item when no costs are given); non-increasing along the route, so a prefix is always taken."""
    costs = np.ones(len(gains)) if costs is None else costs
    x = np.concatenate([[0.0], np.cumsum(costs)])
    y = np.concatenate([[0.0], np.cumsum(gains)])
    hull = [0]
    for i in range(1, len(x)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (y[b] - y[a]) * (x[i] - x[a]) <= (y[i] - y[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    slopes = np.empty(len(gains))
    for a, b in itertools.pairwise(hull):
        run = x[b] - x[a]
        slopes[a:b] = (y[b] - y[a]) / run if run > 0 else np.inf  # free gains come first
    return slopes


def _per_k(values: np.ndarray, start: np.ndarray, order: np.ndarray, sign: int) -> np.ndarray:
    """Per k = 0..len(order): the sum of `values` over `start`, plus (sign 1) or minus (sign -1) the first
    k of `order` (what escalating them adds to the escalated rows or takes from the local ones)."""
    return float(values[start].sum()) + sign * np.concatenate([[0.0], np.cumsum(values[order])])


def _choose_k(rows: _Rows, base: np.ndarray, order: np.ndarray, target: Target, allowed: float) -> int | None:
    """How many of `order` to escalate (after `base`) for the target; None when it cannot be met."""
    weighted_wrong = rows.w * rows.wrong
    spent = _per_k(rows.cost, base, order, sign=1)
    local = _per_k(rows.w, ~base, order, sign=-1)
    wrong_local = _per_k(weighted_wrong, ~base, order, sign=-1)
    accuracy = np.where(local > 1e-12, 1.0 - wrong_local / np.maximum(local, 1e-12), 1.0)
    if target.kind == "min_accuracy":  # the smallest k whose local answers are right often enough
        meets = np.flatnonzero(accuracy >= target.value - 1e-9)
        return int(meets[0]) if len(meets) else None
    if target.kind == "min_oos_recall":  # the smallest k that escalates enough out-of-scope traffic
        recall = _per_k(rows.gain, base, order, sign=1)
        meets = np.flatnonzero(recall >= target.value - 1e-9)
        return int(meets[0]) if len(meets) else None
    feasible = np.flatnonzero(spent <= allowed + 1e-9)
    if not len(feasible):
        return None
    # budget and max_false_escalation: the most quality; max_escalation: the most routed accuracy.
    score = accuracy[feasible] if target.kind == "max_escalation" else -wrong_local[feasible]
    return int(feasible[np.argmax(score >= score.max() - 1e-12)])  # escalating nothing more wins ties


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
    w: np.ndarray,
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
    total = float(w.sum())
    rate = float(w[escalated].sum()) / total
    local_mass = float(w[local].sum())
    return Operating(
        thresholds=thresholds,
        ood_threshold=ood_threshold,
        escalation_rate=rate,
        routed_accuracy=float(w[correct_local].sum() / local_mass) if local_mass > 0 else 1.0,
        quality=float(w[escalated | correct_local].sum()) / total,
        oos_recall=float(escalated[oos].mean()) if oos.any() else None,
        in_scope_false_escalation=float(escalated[in_scope].mean()) if in_scope.any() else None,
        cost_per_request=rate * target.fallback_cost + (1 - rate) * target.local_cost,
    )


def _objective(point: Operating, target: Target) -> tuple[float, ...]:
    if target.kind == "min_accuracy":
        return (-point.escalation_rate, point.routed_accuracy)
    if target.kind == "budget":
        return (point.quality, -point.cost_per_request)
    if target.kind == "max_false_escalation":
        return (point.quality, -point.escalation_rate)
    if target.kind == "min_oos_recall":
        return (-(point.in_scope_false_escalation or 0.0), point.quality)
    return (point.routed_accuracy, -point.escalation_rate)


def _curve(
    data: ScoredSet,
    w: np.ndarray,
    pred: np.ndarray,
    group: np.ndarray,
    conf: np.ndarray,
    rows: _Rows,
    chosen: Operating,
    points: int,
) -> Curve:
    """Escalation rate and quality as the route thresholds rise, at the chosen OOS threshold, weighted by `w`
    (the escalation order stays the tuned one, so the curves at two shares describe the same settings)."""
    base = (data.in_scope < chosen.ood_threshold) | ~data.servable[pred]
    order = _escalation_order(group, conf, rows, ~base)
    curve = []
    for k in np.unique(np.linspace(0, len(order), points).astype(int)):
        escalated = base.copy()
        escalated[order[:k]] = True
        total = float(w.sum())
        curve.append((float(w[escalated].sum()) / total, float(w[escalated | ~rows.wrong].sum()) / total))
    return curve


def _unreachable(target: Target, least_base: float, data: ScoredSet) -> str:
    if target.kind in ("max_escalation", "budget"):
        return (
            f"target {target.kind}={target.value:g} cannot be met: at least {least_base:.1%} of these "
            "examples escalate whatever the thresholds (routes served only by the fallback); "
            f"the lowest reachable escalation rate is {least_base:.3f}"
        )
    if target.kind == "max_false_escalation":
        return (
            f"target max_false_escalation={target.value:g} cannot be met: at least {least_base:.1%} of the "
            "in-scope examples escalate whatever the thresholds (their top route is served only by the "
            f"fallback); the lowest reachable in-scope escalation is {least_base:.3f}"
        )
    return f"target {target.kind}={target.value:g} cannot be met on {len(data.labels)} examples"
