"""The Prometheus metrics of a real service (router/service/metrics.py), scraped after real requests: names
and units by the Prometheus conventions, bounded route labels, process metrics; and the Grafana dashboard
(docker/grafana/slm-router.json) queries only what /metrics exposes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from slm_router.policies import Policy
from slm_router.router.runnable import Router
from slm_router.router.service.app import create_app
from slm_router.router.service.metrics import Metrics, currency_unit
from tests.conftest import ROOT, policy_with, serving
from tests.fake_llm import FakeLLM

DASHBOARD = ROOT / "docker" / "grafana" / "slm-router.json"
TWO_THINGS = (
    "Translate this and tell me how angry the customer is: O produto chegou quebrado e estou furioso!"
)
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)")


@pytest.fixture(scope="module")
def scrapes(
    default_policy: Policy, router: Router, _fake_llm_server: FakeLLM
) -> Iterator[dict[str, httpx.Response]]:
    """/metrics of a real app (local pool, fallback a fake OpenAI-compatible server) after one request of
    each kind: a specialist, a multi-intent flow, the fallback, a fallback outage, a 404."""
    _fake_llm_server.reset()
    policy = policy_with(
        default_policy,
        fallback=_fake_llm_server.fallback_config(),
    )
    service = Router(policy, embedder=router.embedder, pool=router.pool)
    with (
        serving(create_app(service, policy.server, None, warmup=False)) as url,
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        for text in [
            "I love this blender",
            TWO_THINGS,
            "What is the best way to grow tomatoes on a balcony?",
        ]:
            assert client.post("/v1/route", json={"text": text}).status_code == 200
        _fake_llm_server.set_mode("error")
        outage = client.post("/v1/route", json={"text": "Who won the world cup in 1998?"})
        assert outage.status_code == 503, outage.text
        _fake_llm_server.reset()
        assert client.get("/v1/nothing-here").status_code == 404
        openmetrics = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
        yield {
            "text": client.get("/metrics"),
            "openmetrics": client.get("/metrics", headers={"Accept": openmetrics}),
        }


@pytest.fixture(scope="module")
def scrape(scrapes: dict[str, httpx.Response]) -> str:
    return scrapes["text"].text


def test_the_exposition_format_is_negotiated(scrapes: dict[str, httpx.Response]) -> None:
    """Prometheus asks for OpenMetrics first; curl and older scrapers get the classic text format."""
    text, openmetrics = scrapes["text"], scrapes["openmetrics"]
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert openmetrics.text.endswith("# EOF\n") and not text.text.endswith("# EOF\n")
    assert "# TYPE slm_router_requests counter" in openmetrics.text  # OpenMetrics names the family
    assert "slm_router_requests_total{" in openmetrics.text


def samples(text: str) -> list[tuple[str, str, float]]:
    found = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            found.append((match[1], match[2] or "", float(match[3])))
    return found


def families(text: str) -> dict[str, str]:
    """Each metric family's exposed name -> its type, from the `# TYPE` lines (present with no sample yet)."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def exposed_names(text: str) -> set[str]:
    names = {name for name, _, _ in samples(text)}
    for name, kind in families(text).items():
        names.add(name)
        if kind in ("histogram", "summary"):
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def test_names_and_units_follow_the_prometheus_conventions(scrape: str) -> None:
    ours = {name: kind for name, kind in families(scrape).items() if name.startswith("slm_router_")}
    assert ours, scrape[:500]
    for name, kind in ours.items():
        assert kind in ("counter", "gauge", "histogram"), name
        assert name.endswith("_total") == (kind == "counter"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        assert not re.search(r"_(ms|millis|milliseconds|latency)(_|$)", name), name
    assert {
        "slm_router_requests_total",
        "slm_router_escalations_total",
        "slm_router_cost_usd_total",
        "slm_router_degraded_total",
        "slm_router_request_duration_seconds",
        "slm_router_node_duration_seconds",
        "slm_router_build_info",
    } <= set(ours)
    assert "# HELP slm_router_cost_usd_total Estimated cost of the models called, in USD" in scrape
    cost = [
        v for n, labels, v in samples(scrape) if n == "slm_router_cost_usd_total" and "fallback" in labels
    ]
    assert cost and 0 < cost[0] < 1  # dollars, not cents or tokens
    # Seconds, not milliseconds: the three routed requests took well under a minute together.
    total = sum(v for n, _, v in samples(scrape) if n == "slm_router_request_duration_seconds_sum")
    assert 0 < total < 60


def test_route_labels_are_configured_routes_or_multi(scrape: str, default_policy: Policy) -> None:
    routes = {value for _, labels, _ in samples(scrape) for value in re.findall(r'\broute="([^"]*)"', labels)}
    assert routes <= set(default_policy.routes) | {"multi"}, routes
    assert {"multi", "sentiment", "other"} <= routes
    requests = [labels_of(by) for name, by, _ in samples(scrape) if name == "slm_router_requests_total"]
    assert {"route": "multi", "action": "flow", "answered_by": "flow:multi-intent"} in requests
    errors = [labels_of(by) for name, by, _ in samples(scrape) if name == "slm_router_errors_total"]
    assert {"type": "fallback_unavailable"} in errors and {"type": "http_error"} in errors


def labels_of(matchers: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', matchers))


def test_process_metrics_are_on_the_service_registry(scrape: str) -> None:
    values = {name: value for name, labels, value in samples(scrape) if not labels}
    assert values["process_resident_memory_bytes"] > 50e6  # the models are loaded
    assert values["process_cpu_seconds_total"] > 0
    assert values["process_open_fds"] > 0
    names = exposed_names(scrape)
    assert {"python_gc_collections_total", "python_info"} <= names
    assert re.search(r'^slm_router_build_info\{version="[^"]+"\} 1\.0$', scrape, re.M)


def test_route_label_and_currency_unit() -> None:
    metrics = Metrics(dict, routes=["sentiment", "translate", "other"], currency="EUR")
    assert [metrics.route_label(r) for r in ("sentiment", "translate+sentiment", "other")] == [
        "sentiment",
        "multi",
        "other",
    ]
    assert "slm_router_cost_eur_total" in metrics.render()[0].decode()
    assert currency_unit("USD") == "usd" and currency_unit("€") == "currency"


def _expressions(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


# PromQL words that are not metric names: functions are followed by "(" and dropped separately.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or Grafana's label_values(...)) reads."""
    label_values = re.fullmatch(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)", expr)
    if label_values:
        return {label_values[1]}
    bare = re.sub(r'"[^"]*"', "", expr)  # label values
    bare = re.sub(r"\{[^}]*\}", "", bare)  # matchers
    bare = re.sub(r"\[[^\]]*\]", "", bare)  # ranges
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)  # grouping labels
    words = re.findall(r"(?<![\w$.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", bare)
    return {w for w in words if w not in _KEYWORDS}


def test_the_dashboard_queries_only_what_metrics_exposes(scrape: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = exposed_names(scrape)
    exprs = _expressions(dashboard)
    assert len(exprs) >= 15
    used: set[str] = set()
    for expr in exprs:
        assert expr.count("(") == expr.count(")"), expr
        names = metric_names(expr)
        assert names, expr
        assert names <= exposed, (expr, names - exposed)
        used |= names
    must = {
        "slm_router_requests_total",
        "slm_router_escalations_total",
        "slm_router_request_duration_seconds_bucket",
        "slm_router_cost_usd_total",
        "slm_router_fallback_breaker_state",
        "slm_router_degraded_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    }
    assert must <= used, must - used
    assert any(e.startswith("histogram_quantile(0.95,") for e in exprs)
    assert any(e.startswith("histogram_quantile(0.5,") for e in exprs)


def test_the_dashboards_datasource_is_templated() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    templated = {"type": "prometheus", "uid": "${datasource}"}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == templated, panel["title"]
        assert all(t["datasource"] == templated for t in panel["targets"]), panel["title"]
    assert variables["instance"]["datasource"] == templated
    assert dashboard["uid"] == "slm-router" and "id" not in dashboard  # importable into any Grafana
