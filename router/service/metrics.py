"""Prometheus metrics for the service: what was routed where, what escalated and why, and how long it took."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from slm_router.router.result import RouteResult

# Milliseconds matter for the specialists, seconds for the fallback: one bucket set covers both.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _QueueDepth(Collector):
    """Reads the pool's queues at scrape time, so the gauge is never stale."""

    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "slm_router_agent_queue_depth", "Items waiting or in flight per agent", labels=["agent"]
        )
        for agent, depth in sorted(self.read().items()):
            family.add_metric([agent], depth)
        yield family


_BREAKER = {"closed": 0, "half_open": 1, "open": 2}


class _Live(Collector):
    """Gauges read at scrape time from their owners: the fallback's breaker and the admission queue."""

    def __init__(self, fallback: Callable[[], dict[str, Any] | None]) -> None:
        self.fallback = fallback
        self.admission: Any = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = self.fallback()
        if status is not None:
            yield GaugeMetricFamily(
                "slm_router_fallback_breaker_state",
                "Fallback circuit breaker: 0 closed, 1 half-open, 2 open",
                value=_BREAKER.get(str(status.get("breaker")), 2),
            )
            yield GaugeMetricFamily(
                "slm_router_fallback_in_flight", "Fallback calls running", value=status.get("in_flight", 0)
            )
        if self.admission is not None:
            yield GaugeMetricFamily(
                "slm_router_admission_waiting",
                "Requests waiting for an admission slot",
                value=self.admission.waiting,
            )


class Metrics:
    """One registry per app (tests build several apps in one process)."""

    def __init__(
        self,
        queue_depth: Callable[[], dict[str, int]],
        fallback: Callable[[], dict[str, Any] | None] = lambda: None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "slm_router_requests",
            "Routed requests",
            ["route", "action", "answered_by"],
            registry=self.registry,
        )
        self.escalations = Counter(
            "slm_router_escalations",
            "Requests sent to the fallback",
            ["route", "reason"],
            registry=self.registry,
        )
        self.cost = Counter(
            "slm_router_cost",
            "Estimated cost of the models called (policy pricing.currency)",
            ["answered_by"],
            registry=self.registry,
        )
        self.budget_exceeded = Counter(
            "slm_router_budget_exceeded",
            "Escalations held back because the escalation budget was spent",
            ["route"],
            registry=self.registry,
        )
        self.errors = Counter("slm_router_errors", "Requests that failed", ["type"], registry=self.registry)
        self.node_latency = Histogram(
            "slm_router_node_latency_seconds",
            "Time per controller node",
            ["node"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "slm_router_request_latency_seconds",
            "Time per routed request, end to end",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "slm_router_in_flight_requests", "Requests being handled", registry=self.registry
        )
        self.shed = Counter(
            "slm_router_shed",
            "Requests refused by admission control (429 queue_full, 503 queue_timeout)",
            ["reason"],
            registry=self.registry,
        )
        self.cancelled = Counter(
            "slm_router_cancelled",
            "Requests whose client went away before the answer; their work was cancelled",
            registry=self.registry,
        )
        self.registry.register(_QueueDepth(queue_depth))
        self._live = _Live(fallback)
        self.registry.register(self._live)

    def watch_admission(self, admission: Any) -> None:
        self._live.admission = admission

    def observe(self, result: RouteResult) -> None:
        self.requests.labels(result.route, result.action, result.answered_by).inc()
        if result.escalated:
            self.escalations.labels(result.route, result.reason_code).inc()
        if result.cost:
            self.cost.labels(result.answered_by).inc(result.cost)
        if result.budget_exceeded:
            self.budget_exceeded.labels(result.route).inc()
        for step in result.trace:
            self.node_latency.labels(step.node).observe(step.ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
