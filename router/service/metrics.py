"""Prometheus metrics for the service: what was routed where, what escalated and why, and how long it took.

Named by the Prometheus conventions (https://prometheus.io/docs/practices/naming/): the `slm_router_` prefix,
base units in the name (`_seconds`), `_total` on counters (the client appends it), and label values from
bounded sets only: configured route names (a multi-intent combination is `multi`), agent and node names,
reason codes, error kinds. The process's own metrics (`process_*`: RSS, CPU seconds, open fds; `python_*`:
GC, version) are on the same registry, and `slm_router_build_info{version}` says what runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
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


MULTI_ROUTE = "multi"
"""The route label of a multi-intent result, whose route is its routes joined ("sentiment+extract")."""


def currency_unit(currency: str) -> str:
    """The policy's `pricing.currency` as a metric-name unit: "USD" -> "usd"."""
    return re.sub(r"[^a-z0-9]+", "_", currency.lower()).strip("_") or "currency"


def _package_version() -> str:
    try:
        return version("slm-router")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class Metrics:
    """One registry per app (tests build several apps in one process).

    Cost is `slm_router_cost_<currency>_total`, e.g. `slm_router_cost_usd_total`: the unit in the name, as
    the naming conventions ask of every metric and as OpenMetrics declares it (`# UNIT ... usd`), rather
    than `slm_router_cost_total{currency="USD"}`, where `sum()` over the label would add dollars to euros
    and a query that forgets the label silently does so. One process has one currency (the policy's
    `pricing.currency`), so the name is fixed for its lifetime; a dashboard names the currency it shows.
    """

    def __init__(
        self,
        queue_depth: Callable[[], dict[str, int]],
        fallback: Callable[[], dict[str, Any] | None] = lambda: None,
        routes: Collection[str] = (),
        currency: str = "USD",
    ) -> None:
        self.registry = CollectorRegistry()
        self.routes = frozenset(routes)
        self.currency = currency
        self.requests = Counter(
            "slm_router_requests",
            "Routed requests, by the route chosen, what answered (action) and who",
            ["route", "action", "answered_by"],
            registry=self.registry,
        )
        self.escalations = Counter(
            "slm_router_escalations",
            "Requests sent to the fallback, by reason code",
            ["route", "reason"],
            registry=self.registry,
        )
        self.cost = Counter(
            "slm_router_cost",
            f"Estimated cost of the models called, in {currency} (policy pricing.currency)",
            ["answered_by"],
            unit=currency_unit(currency),
            registry=self.registry,
        )
        self.budget_exceeded = Counter(
            "slm_router_budget_exceeded",
            "Escalations held back because the escalation budget was spent",
            ["route"],
            registry=self.registry,
        )
        self.degraded = Counter(
            "slm_router_degraded",
            "Requests answered by a weaker answer because the fallback failed (reason fallback_failed)",
            ["route"],
            registry=self.registry,
        )
        self.errors = Counter(
            "slm_router_errors", "Error answers (4xx/5xx), by error type", ["type"], registry=self.registry
        )
        self.node_duration = Histogram(
            "slm_router_node_duration_seconds",
            "Time per controller node",
            ["node"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "slm_router_request_duration_seconds",
            "Time per routed request, end to end, by endpoint",
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
        Info("slm_router_build", "The slm-router version serving", registry=self.registry).info(
            {"version": _package_version()}
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(_QueueDepth(queue_depth))
        self._live = _Live(fallback)
        self.registry.register(self._live)

    def watch_admission(self, admission: Any) -> None:
        self._live.admission = admission

    def route_label(self, route: str) -> str:
        """A configured route's name, else `multi`: the one way a result's route is not configured is a
        multi-intent combination, and those would grow the label set with every pair of routes."""
        if route in self.routes or (not self.routes and "+" not in route):
            return route
        return MULTI_ROUTE

    def observe(self, result: RouteResult) -> None:
        route = self.route_label(result.route)
        self.requests.labels(route, result.action, result.answered_by).inc()
        if result.escalated:
            self.escalations.labels(route, result.reason_code).inc()
        if result.cost:
            self.cost.labels(result.answered_by).inc(result.cost)
        if result.budget_exceeded:
            self.budget_exceeded.labels(route).inc()
        if result.degraded:
            self.degraded.labels(route).inc()
        for step in result.trace:
            self.node_duration.labels(step.node).observe(step.ms / 1000)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition and its content type: OpenMetrics when the scraper's `Accept` asks for it
        (Prometheus does, by default), else the classic text format."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
