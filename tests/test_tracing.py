"""OpenTelemetry spans (router/core/telemetry.py, router/service/tracing.py): one per graph node and per agent
call, nested under the request and under the caller's W3C trace context, never carrying message text; off,
and importing nothing of OpenTelemetry, unless the standard OTEL_* variables ask for them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from slm_router.extras import MissingExtraError
from slm_router.policies import Policy
from slm_router.router.core import telemetry
from slm_router.router.errors import UnknownRouteError
from slm_router.router.runnable import Router
from slm_router.router.service.app import create_app
from tests.conftest import ROOT, policy_with, serving
from tests.fake_llm import FakeLLM

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
ROUTES = {"translate", "sentiment", "extract", "other"}
GENERAL = "What is the best way to grow tomatoes on a balcony?"  # the fallback answers it
TWO_THINGS = (
    "Translate this and tell me how angry the customer is: O produto chegou quebrado e estou furioso!"
)


@pytest.fixture(scope="module")
def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    """The process's global SDK provider (set once), so a test also sees spans made outside `configure`."""
    trace.set_tracer_provider(TracerProvider())
    current = trace.get_tracer_provider()
    assert isinstance(current, TracerProvider)
    exporter = InMemorySpanExporter()
    current.add_span_processor(SimpleSpanProcessor(exporter))
    return current, exporter


@pytest.fixture
def spans(provider: tuple[TracerProvider, InMemorySpanExporter]) -> Iterator[InMemorySpanExporter]:
    sdk, exporter = provider
    exporter.clear()
    telemetry.configure(sdk)
    yield exporter
    telemetry.configure(None)


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        found.setdefault(span.name, []).append(span)
    return found


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def ancestors(span: ReadableSpan, finished: tuple[ReadableSpan, ...]) -> list[str]:
    """Names of the span's ancestors among `finished`, nearest first."""
    ids = {s.context.span_id: s for s in finished}
    names, parent = [], parent_of(span)
    while parent in ids:
        names.append(ids[parent].name)
        parent = parent_of(ids[parent])
    return names


def assert_no_text(finished: tuple[ReadableSpan, ...], text: str) -> None:
    """No word of the message in any attribute, but for the route names spans carry by design."""
    words = {w.strip(",.!?:").lower() for w in text.split() if len(w.strip(",.!?:")) > 4} - ROUTES
    for span in finished:
        for value in (span.attributes or {}).values():
            assert not any(w in str(value).lower() for w in words), (span.name, value)
        assert not span.events, span.name  # no exception events: their messages may quote the input
        assert span.status.description is None, span.name


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, True),
    ],
)
def test_the_standard_variables_turn_tracing_on(environ: dict[str, str], wanted: bool) -> None:
    assert telemetry.wanted(environ) is wanted


def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_off_by_default_and_imports_nothing_of_opentelemetry() -> None:
    out = _python(
        "import sys\n"
        "from slm_router.router.core import telemetry as t\n"
        "assert t.tracer() is None\n"
        "assert t.node_span('guard') is t.agent_span('fallback') is t.request_span()\n"
        "with t.node_span('guard') as span:\n"
        "    t.describe(span, {'language': 'en'})\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    assert out.strip() == "[]"


def test_configured_by_the_environment_exports_with_the_service_name() -> None:
    """OTEL_TRACES_EXPORTER=console: the SDK provider is built from the environment and installed globally."""
    code = (
        "from opentelemetry import trace\n"
        "from slm_router.router.core import telemetry as t\n"
        "assert t.tracer() is not None and trace.get_tracer_provider() is not None\n"
        "with t.request_span():\n"
        "    with t.node_span('guard'):\n"
        "        pass\n"
    )
    out = _python(code, OTEL_TRACES_EXPORTER="console")
    assert '"name": "slm_router.node.guard"' in out and '"name": "slm-router"' in out
    assert '"service.name": "slm-router"' in out
    named = _python(code, OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="edge-router")
    assert '"service.name": "edge-router"' in named
    disabled = code.replace("t.tracer() is not None", "t.tracer() is None")
    assert _python(disabled, OTEL_SDK_DISABLED="true", OTEL_TRACES_EXPORTER="console") == ""


def test_configured_without_the_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'slm-router\[otel\]'"):
        telemetry._provider_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})


def test_a_host_applications_provider_is_kept(provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    assert telemetry._provider_from_env({"OTEL_TRACES_EXPORTER": "otlp"}) is provider[0]


def test_unconfigured_creates_no_spans(
    provider: tuple[TracerProvider, InMemorySpanExporter], router: Router
) -> None:
    """Off, the router makes no span even though the process has an SDK provider with an exporter."""
    exporter = provider[1]
    exporter.clear()
    telemetry.configure(None)
    with telemetry.request_span():
        router.invoke("I love this blender")
    assert exporter.get_finished_spans() == ()


def test_a_span_per_node_and_agent_call_under_the_request(
    spans: InMemorySpanExporter, router: Router
) -> None:
    text = "I love this blender, it works wonderfully"
    # The inner one stands for `Router.invoke`'s own: inside a span it opens none, so one root either way.
    with telemetry.request_span(), telemetry.request_span():
        result = router.invoke(text)
    assert (result.route, result.action) == ("sentiment", "specialist")
    finished = spans.get_finished_spans()
    named = by_name(finished)
    nodes = ["guard", "classify", "decide", "specialist", "check", "respond"]
    assert set(named) == {"slm-router", "slm_router.agent.sentiment"} | {
        f"slm_router.node.{n}" for n in nodes
    }
    (root,) = named["slm-router"]
    assert root.parent is None
    assert {s.context.trace_id for s in finished} == {root.context.trace_id}
    for node in nodes:
        (span,) = named[f"slm_router.node.{node}"]
        assert parent_of(span) == root.context.span_id, node
        assert span.attributes is not None and span.attributes["slm_router.node"] == node
    (agent,) = named["slm_router.agent.sentiment"]
    assert ancestors(agent, finished) == ["slm_router.node.specialist", "slm-router"]
    assert agent.attributes == {"slm_router.agent": "sentiment", "slm_router.items": 1}
    decide = named["slm_router.node.decide"][0].attributes
    assert decide is not None
    assert (decide["slm_router.route"], decide["slm_router.action"]) == ("sentiment", "specialist")
    assert decide["slm_router.reason_code"] == result.reason_code
    respond = named["slm_router.node.respond"][0].attributes
    assert respond is not None and respond["slm_router.answered_by"] == "sentiment"
    assert respond["slm_router.escalated"] is False
    assert named["slm_router.node.guard"][0].attributes == {
        "slm_router.node": "guard",
        "slm_router.language": "en",
    }
    assert_no_text(finished, text)


def test_the_batch_lane_has_the_same_node_spans(spans: InMemorySpanExporter, router: Router) -> None:
    """`Router.batch` runs each stage for all requests at once, not through the graph: every request
    still gets a span per node, with what it decided."""
    texts = ["I love this blender, it works wonderfully", "This is the worst service I have ever had"]
    with telemetry.request_span():
        results = router.batch(texts)
    assert [r.route for r in results] == ["sentiment", "sentiment"]
    finished = spans.get_finished_spans()
    named = by_name(finished)
    for node in ("guard", "classify", "decide", "specialist", "check", "respond"):
        assert len(named[f"slm_router.node.{node}"]) == 2, node
    decided = [s.attributes or {} for s in named["slm_router.node.decide"]]
    assert [d["slm_router.route"] for d in decided] == ["sentiment", "sentiment"]
    assert all(
        (s.attributes or {})["slm_router.answered_by"] == "sentiment"
        for s in named["slm_router.node.respond"]
    )
    for text in texts:
        assert_no_text(finished, text)


def test_a_remote_fallback_gets_the_trace_context(
    spans: InMemorySpanExporter, default_policy: Policy, router: Router, fake_llm: FakeLLM
) -> None:
    """An OpenAI-compatible fallback's request carries `traceparent` naming the fallback agent's span, so
    the provider's own spans (a vLLM or LiteLLM server's) join the request's trace."""
    fallback = fake_llm.fallback_config()
    library = Router(
        policy_with(default_policy, fallback=fallback), embedder=router.embedder, pool=router.pool
    )
    twice = [GENERAL, GENERAL.replace("balcony", "windowsill")]
    calls = {
        "invoke": lambda: [library.invoke(GENERAL)],
        "ainvoke": lambda: [asyncio.run(library.ainvoke(GENERAL))],
        "batch": lambda: library.batch(twice),  # the batch lane, each request its own spans
        "abatch": lambda: asyncio.run(library.abatch(twice)),
    }
    try:
        for mode, call in calls.items():
            spans.clear()
            results = call()
            assert all(r.answered_by == "fallback" for r in results), mode
            named = by_name(spans.get_finished_spans())
            agents = {(s.context.trace_id, s.context.span_id) for s in named["slm_router.agent.fallback"]}
            assert len(agents) == len(named["slm_router.node.fallback"]) == len(results), mode
            for headers in fake_llm.request_headers[-len(results) :]:
                _, trace_id, parent_id, _ = headers["traceparent"].split("-")
                assert (int(trace_id, 16), int(parent_id, 16)) in agents, mode
        telemetry.configure(None)
        library.invoke(GENERAL)
        assert "traceparent" not in fake_llm.request_headers[-1]  # off: nothing is added
    finally:
        library.close()


def test_flow_steps_and_their_agents_have_spans(spans: InMemorySpanExporter, router: Router) -> None:
    with telemetry.request_span():
        result = router.invoke(TWO_THINGS)
    assert result.route == "translate+sentiment"
    finished = spans.get_finished_spans()
    named = by_name(finished)
    assert len(named["slm_router.node.flow_step"]) == 2 and "slm_router.node.flow_join" in named
    for agent in ("translate", "sentiment"):
        (span,) = named[f"slm_router.agent.{agent}"]
        assert ancestors(span, finished) == ["slm_router.node.flow_step", "slm-router"]
    assert_no_text(finished, TWO_THINGS)


def test_a_failing_node_records_its_error_type_only(spans: InMemorySpanExporter, router: Router) -> None:
    with pytest.raises(UnknownRouteError):
        router.invoke({"text": "Please refund order 12345", "route": "nope"})
    named = by_name(spans.get_finished_spans())
    (decide,) = named["slm_router.node.decide"]
    assert decide.status.status_code is StatusCode.ERROR and decide.status.description is None
    assert decide.attributes is not None and decide.attributes["error.type"] == "UnknownRouteError"
    assert_no_text(spans.get_finished_spans(), "Please refund order 12345")


def test_http_requests_join_the_callers_trace_through_the_async_path(
    spans: InMemorySpanExporter, default_policy: Policy, router: Router, fake_llm: FakeLLM
) -> None:
    """A `traceparent` header makes the service's SERVER span its child; the graph's async nodes (the
    fallback on its own bulkhead) and the agent call nest below it, in the caller's trace."""
    policy = policy_with(
        default_policy,
        fallback=fake_llm.fallback_config(),
    )
    service = Router(policy, embedder=router.embedder, pool=router.pool)
    text = "What is the best way to grow tomatoes on a balcony?"
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    with serving(create_app(service, policy.server, None, warmup=False)) as url:
        response = httpx.post(f"{url}/v1/route", json={"text": text}, headers=headers, timeout=120)
        assert response.status_code == 200 and response.json()["answered_by"] == "fallback"
        server = _wait_for(spans, "POST /v1/route")
    assert server.kind is SpanKind.SERVER and format(parent_of(server) or 0, "016x") == PARENT_ID
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/v1/route"
    finished = spans.get_finished_spans()
    # Only ours: the fake LLM's own FastAPI traces its request too, in a trace of its own.
    finished = tuple(s for s in finished if s.name.startswith("slm_router.") or s.name.endswith("/v1/route"))
    named = by_name(finished)
    assert len(named["POST /v1/route"]) == 1  # FastAPI's own request span is off: one server span
    assert {s.context.trace_id for s in finished} == {server.context.trace_id}
    for node in ("guard", "classify", "decide", "fallback", "respond"):
        (span,) = named[f"slm_router.node.{node}"]
        assert ancestors(span, finished)[-1] == "POST /v1/route", node
    (agent,) = named["slm_router.agent.fallback"]
    assert ancestors(agent, finished)[0] == "slm_router.node.fallback"
    decide = named["slm_router.node.decide"][0].attributes
    assert decide is not None and decide["slm_router.action"] == "fallback"
    assert (decide["slm_router.route"], decide["slm_router.reason_code"]) == ("other", "fallback_route")
    assert_no_text(finished, text)


def _wait_for(spans: InMemorySpanExporter, name: str) -> Any:
    """The server span ends once the response is sent, which the client may see first."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [s for s in spans.get_finished_spans() if s.name == name]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no span {name!r}: {[s.name for s in spans.get_finished_spans()]}")
