"""What the router did over a window, for the console's overview and quality pages.

Everything is SQL aggregates over the decision log's ts index (GROUP BY time bucket), so 100k decisions
summarise in well under a second (`python -m bench.console`). Per-node latency lives in each row's JSON,
so its percentiles (and the total's) come from an evenly spaced sample of about `LATENCY_SAMPLE` rows (the
count is reported).
Nothing here returns message text or answers.
"""

from __future__ import annotations

import json
import math

import numpy as np
from pydantic import BaseModel, Field

from slm_router.policies.schema import BudgetConfig
from slm_router.router.ops.decision_log import DecisionLog

WINDOWS = {"15m": 900, "1h": 3600, "24h": 86400, "7d": 7 * 86400}
LATENCY_SAMPLE = 5000
BINS = 10  # confidence histogram and reliability curve: [0, 0.1), ..., [0.9, 1.0]
ANSWERED = {"specialist": "specialist", "flow": "specialist", "fallback": "fallback", "reject": "rejected"}
_BIN = f"MIN(MAX(CAST(confidence * {BINS} AS INTEGER), 0), {BINS - 1})"


def bucket_for(window_s: float, buckets: int = 60) -> int:
    """A round bucket size (1 min, 5 min, 15 min, 1 h, ...) giving about `buckets` points over the window."""
    for size in (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86400):
        if window_s / size <= buckets * 1.5:
            return size
    return 86400


class Latency(BaseModel):
    p50_ms: float
    p95_ms: float
    samples: int


class Totals(BaseModel):
    requests: int = 0
    escalated: int = 0
    escalation_rate: float = 0.0
    rejected: int = 0
    budget_exceeded: int = 0
    cost: float = 0.0
    cost_per_1k_requests: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None


class Overview(BaseModel):
    since: float
    until: float
    bucket_s: int
    buckets: list[float] = Field(description="Start time of each bucket (unix seconds), oldest first.")
    by_route: dict[str, list[int]] = Field(description="Requests per bucket, per chosen route.")
    by_answered: dict[str, list[int]] = Field(
        description="Requests per bucket: specialist/fallback/rejected."
    )
    escalation_rate_by_reason: dict[str, float] = Field(description="Share of all requests, per reason.")
    escalated_by_reason: dict[str, int]
    hours: list[float] = Field(description="Start of each hour of the window.")
    cost_per_hour: list[float]
    cost_cap_per_hour: float | None = Field(description="budget.max_cost_per_hour (null: no cap).")
    latency: dict[str, Latency] = Field(description="p50/p95 per graph node, and `total`.")
    totals: Totals


class ReliabilityBin(BaseModel):
    low: float
    high: float
    mean_confidence: float
    agreement: float
    count: int


class Quality(BaseModel):
    since: float
    until: float
    bucket_s: int
    buckets: list[float]
    confidence_histogram: dict[str, list[int]] = Field(description=f"Per route, {BINS} bins of 0.1.")
    reliability: list[ReliabilityBin] = Field(
        description="Router confidence bin -> mean shadow agreement (only bins with samples)."
    )
    shadow_agreement: dict[str, list[float | None]] = Field(
        description="Mean shadow agreement per route per bucket (null: no samples)."
    )
    shadow_samples: dict[str, int]


def _starts(since: float, until: float, bucket_s: int) -> list[float]:
    first = math.floor(since / bucket_s)
    last = max(math.ceil(until / bucket_s), first + 1)
    return [float(b * bucket_s) for b in range(first, last)]


def _has_data(log: DecisionLog) -> bool:
    return log.path.is_file()


def stats(
    log: DecisionLog, since: float, until: float, bucket_s: int = 60, budget: BudgetConfig | None = None
) -> Overview:
    """Requests per bucket by route and by who answered, escalations by reason, cost per hour against the
    budget's hourly cap, latency percentiles per node, and totals, over [since, until). One grouped scan
    of the window (hour x bucket x route x action x escalation reason), summed up here."""
    bucket_s = max(int(bucket_s), 1)
    starts = _starts(since, until, bucket_s)
    hours = _starts(since, until, 3600)
    first, first_hour = int(starts[0] // bucket_s), int(hours[0] // 3600)
    by_route: dict[str, list[int]] = {}
    by_answered: dict[str, list[int]] = {}
    escalated_by_reason: dict[str, int] = {}
    hourly = [0.0] * len(hours)
    totals = Totals()
    groups = (
        log.query(
            f"SELECT CAST(ts / 3600 AS INTEGER) AS h, CAST(ts / {bucket_s} AS INTEGER) AS b, route, action, "
            "CASE WHEN escalated THEN reason_code END AS why, COUNT(*), SUM(cost), SUM(budget_exceeded) "
            "FROM decisions WHERE ts >= ? AND ts < ? GROUP BY h, b, route, action, why",
            (since, until),
        )
        if _has_data(log)
        else []
    )
    for h, b, route, action, why, n, cost, exceeded in groups:
        if 0 <= b - first < len(starts):
            by_route.setdefault(route, [0] * len(starts))[b - first] += n
            who = ANSWERED.get(action, "specialist")
            by_answered.setdefault(who, [0] * len(starts))[b - first] += n
        if 0 <= h - first_hour < len(hours):
            hourly[h - first_hour] += cost
        if why is not None:
            escalated_by_reason[why] = escalated_by_reason.get(why, 0) + n
        totals.requests += n
        totals.rejected += n if action == "reject" else 0
        totals.budget_exceeded += exceeded
        totals.cost += cost
    requests = totals.requests
    totals.escalated = sum(escalated_by_reason.values())
    if requests:
        totals.escalation_rate = totals.escalated / requests
        totals.cost_per_1k_requests = totals.cost / requests * 1000
    latency = _latency(log, since, until) if requests else {}
    if "total" in latency:
        totals.p50_ms, totals.p95_ms = latency["total"].p50_ms, latency["total"].p95_ms
    return Overview(
        since=since,
        until=until,
        bucket_s=bucket_s,
        buckets=starts,
        by_route=dict(sorted(by_route.items())),
        by_answered=dict(sorted(by_answered.items())),
        escalation_rate_by_reason={k: v / requests for k, v in sorted(escalated_by_reason.items())},
        escalated_by_reason=dict(sorted(escalated_by_reason.items())),
        hours=hours,
        cost_per_hour=hourly,
        cost_cap_per_hour=budget.max_cost_per_hour if budget is not None else None,
        latency=latency,
        totals=totals,
    )


def _latency(log: DecisionLog, since: float, until: float) -> dict[str, Latency]:
    """p50/p95 per node and of the total, from at most about `LATENCY_SAMPLE` decisions evenly spaced by
    id over the window (primary-key lookups: the percentiles cost the same for 1k or 1M rows)."""
    low, high = log.query("SELECT MIN(id), MAX(id) FROM decisions WHERE ts >= ? AND ts < ?", (since, until))[
        0
    ]
    if low is None:
        return {}
    stride = max(1, math.ceil((high - low + 1) / LATENCY_SAMPLE))
    sample = log.query(
        "WITH RECURSIVE pick(i) AS (SELECT ? UNION ALL SELECT i + ? FROM pick WHERE i + ? <= ?) "
        "SELECT d.nodes_json, d.total_ms FROM pick JOIN decisions d ON d.id = pick.i "
        "WHERE d.ts >= ? AND d.ts < ?",
        (low, stride, stride, high, since, until),
    )
    per_node: dict[str, list[float]] = {"total": []}
    for nodes_json, total_ms in sample:
        for node, ms in json.loads(nodes_json).items():
            per_node.setdefault(node, []).append(float(ms))
        per_node["total"].append(float(total_ms))
    latency = {}
    for node, values in sorted(per_node.items()):
        if values:
            p50, p95 = np.percentile(values, [50, 95])
            latency[node] = Latency(p50_ms=float(p50), p95_ms=float(p95), samples=len(values))
    return latency


def quality(log: DecisionLog, since: float, until: float, bucket_s: int = 3600) -> Quality:
    """Confidence histograms per route, the reliability curve (router confidence against shadow-mode
    agreement with the fallback) and shadow agreement per route over time, over [since, until)."""
    bucket_s = max(int(bucket_s), 1)
    starts = _starts(since, until, bucket_s)
    first = int(starts[0] // bucket_s)
    if not _has_data(log):
        return Quality(
            since=since,
            until=until,
            bucket_s=bucket_s,
            buckets=starts,
            confidence_histogram={},
            reliability=[],
            shadow_agreement={},
            shadow_samples={},
        )
    window = (since, until)
    hist: dict[str, list[int]] = {}
    for route, b, n in log.query(
        f"SELECT route, {_BIN} AS b, COUNT(*) FROM decisions WHERE ts >= ? AND ts < ? GROUP BY route, b",
        window,
    ):
        hist.setdefault(route, [0] * BINS)[b] = n
    reliability = [
        ReliabilityBin(low=b / BINS, high=(b + 1) / BINS, mean_confidence=conf, agreement=agree, count=n)
        for b, conf, agree, n in log.query(
            f"SELECT {_BIN.replace('confidence', 'd.confidence')} AS b, AVG(d.confidence), AVG(s.agreement), "
            "COUNT(*) FROM shadow s JOIN decisions d ON d.id = s.decision_id "
            "WHERE s.ts >= ? AND s.ts < ? GROUP BY b ORDER BY b",
            window,
        )
    ]
    shadow_rows = log.query(
        f"SELECT CAST(ts / {bucket_s} AS INTEGER) AS b, route, AVG(agreement), COUNT(*) FROM shadow "
        "WHERE ts >= ? AND ts < ? GROUP BY b, route",
        window,
    )
    agreement: dict[str, list[float | None]] = {}
    samples: dict[str, int] = {}
    for b, route, mean, n in shadow_rows:
        series = agreement.setdefault(route, [None] * len(starts))
        if 0 <= b - first < len(starts):
            series[b - first] = round(float(mean), 4)
        samples[route] = samples.get(route, 0) + n
    return Quality(
        since=since,
        until=until,
        bucket_s=bucket_s,
        buckets=starts,
        confidence_histogram=dict(sorted(hist.items())),
        reliability=reliability,
        shadow_agreement=dict(sorted(agreement.items())),
        shadow_samples=dict(sorted(samples.items())),
    )
