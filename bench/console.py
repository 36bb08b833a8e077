"""The console's data layer on a large decision log: 100k decisions over the last 24 hours.

    .venv/bin/python -m bench.console            # 100k decisions, 5 runs per call, median and max
    .venv/bin/python -m bench.console --smoke    # 5k decisions, 2 runs

The log is written the way the router writes it (`DecisionLog.record` creates the file and its schema;
the rest are bulk inserts of rows shaped like real ones: five routes' probabilities, six graph nodes,
a fifth escalated, 2% shadow-compared, 500 labelled). Timed: `overview.stats` per console window (the
page's target: under a second for 100k decisions), `overview.quality`, the review queue and an 11-point
what-if curve; each on a freshly opened log (`cold`: new connection) and again on the open one.
Writes bench/results/console.json.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.section import section_main
from slm_router.policies import DEFAULT_POLICY, load_policy
from slm_router.router.ops import overview, review, whatif
from slm_router.router.ops.decision_log import COLUMNS, DecisionLog, margin_of
from slm_router.router.result import RouteResult, TraceStep

RESULTS = Path(__file__).resolve().parent / "results"
ROUTES = ["translate", "sentiment", "extract", "triage", "other"]
NODES = ["language", "embed", "classify", "decide", "specialist", "respond"]
REASONS = ["low_confidence", "ood", "fallback_route", "low_margin", "specialist_low_confidence"]


def _row(rng: random.Random, ts: float) -> tuple[Any, ...]:
    """One decision as the log stores it (columns after `id`)."""
    top = rng.choice(ROUTES)
    confidence = rng.betavariate(5, 1.5)
    others = {r: rng.random() for r in ROUTES if r != top}
    scores = {top: confidence, **{r: (1 - confidence) * w / sum(others.values()) for r, w in others.items()}}
    escalated = rng.random() < 0.2
    action = "fallback" if escalated else ("flow" if top == "triage" else "specialist")
    nodes = {n: round(rng.lognormvariate(1.5 if n != "specialist" else 3.0, 0.5), 2) for n in NODES}
    return (
        ts,
        top,
        action,
        "fallback" if escalated else top,
        int(escalated),
        rng.choice(REASONS) if escalated else "confident",
        "confidence 0.41 < threshold 0.5 for route extract" if escalated else "confident",
        confidence,
        None,
        sum(nodes.values()),
        "en",
        None,
        f"{rng.getrandbits(256):064x}",
        json.dumps(nodes),
        json.dumps(scores),
        f"conv-{rng.randrange(10_000)}",
        0.0004 if escalated else 0.0,
        0,
        "default",
        None,
        margin_of(scores),
    )


def build(path: Path, n: int, seed: int = 0) -> DecisionLog:
    """A log of `n` decisions spread over the last 24 hours, with shadow rows and labels."""
    policy = load_policy(DEFAULT_POLICY)
    log = DecisionLog(path)
    first = RouteResult(
        route="sentiment",
        action="specialist",
        output="positive",
        answered_by="sentiment",
        confidence=0.9,
        escalated=False,
        reason="confident",
        reason_code="confident",
        language="en",
        trace=[TraceStep(node="classify", ms=1.0, info={"probabilities": {"sentiment": 0.9, "other": 0.1}})],
        total_ms=5.0,
    )
    log.record(first, "great service", log_text=False, tenant="default")
    log.close()
    rng = random.Random(seed)
    now = time.time()
    stamps = sorted(now - rng.random() * 86400 for _ in range(n - 1))
    with sqlite3.connect(path) as conn:
        conn.executemany(
            f"INSERT INTO decisions ({', '.join(COLUMNS[1:])}) VALUES ({', '.join('?' * (len(COLUMNS) - 1))})",  # noqa: E501
            (_row(rng, ts) for ts in stamps),
        )
        ids = [r[0] for r in conn.execute("SELECT id, route FROM decisions WHERE id % 50 = 0")]
        conn.executemany(
            "INSERT INTO shadow VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (i, now - rng.random() * 86400, rng.choice(ROUTES), "a", rng.random(), 300.0, 0.0004)
                for i in ids
            ),
        )
    log = DecisionLog(path)
    for decision_id in rng.sample(range(1, n + 1), min(500, n)):
        review.save_label(
            log, review.Label(decision_id=decision_id, route=rng.choice(ROUTES)), "bench", ROUTES
        )
    assert list(policy.routes) == ROUTES
    return log


def _timed(runs: int, fn: Callable[[], object]) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def measure(data: Path | None, smoke: bool, threads: int = 2) -> dict[str, Any]:
    """`data` and `threads` are unused (the shared section options)."""
    n = 5_000 if smoke else 100_000
    runs = 2 if smoke else 5
    policy = load_policy(DEFAULT_POLICY)
    out: dict[str, Any] = {
        "decisions": n,
        "runs": runs,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "sqlite": sqlite3.sqlite_version,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decisions.db"
        start = time.perf_counter()
        build(path, n).close()
        out["build_s"] = round(time.perf_counter() - start, 2)
        out["file_mb"] = round(path.stat().st_size / 1e6, 1)
        until = time.time() + 1
        calls: dict[str, Callable[[DecisionLog], object]] = {
            **{
                f"overview_{name}": (
                    lambda log, s=seconds: overview.stats(
                        log, until - s, until, overview.bucket_for(s), policy.escalation.budget
                    )
                )
                for name, seconds in overview.WINDOWS.items()
            },
            "quality_24h": lambda log: overview.quality(log, until - 86400, until, 3600),
            "review_queue_50": lambda log: review.queue(log, limit=50),
            "whatif_11_thresholds": lambda log: whatif.curve(
                log, policy, "extract", [i / 10 for i in range(11)]
            ),
        }
        for name, call in calls.items():
            cold: list[float] = []
            for _ in range(runs):
                log = DecisionLog(path)
                cold += _timed(1, partial(call, log))
                log.close()
            log = DecisionLog(path)
            warm = _timed(runs, partial(call, log))
            log.close()
            out[name] = {
                "cold_median_s": round(statistics.median(cold), 4),
                "cold_max_s": round(max(cold), 4),
                "warm_median_s": round(statistics.median(warm), 4),
                "warm_max_s": round(max(warm), 4),
            }
    windows = [out[f"overview_{w}"]["cold_max_s"] for w in overview.WINDOWS]
    out["overview_under_1s"] = max(windows) < 1.0
    return out


def main() -> None:
    section_main(measure, __doc__, RESULTS / "console.json", "unused")


if __name__ == "__main__":
    main()
