"""OpenTelemetry spans: one per graph node (`slm_router.node.<name>`), one per agent call
(`slm_router.agent.<name>`), and `slm-router` around a request.

Off unless the standard variables ask for it: `OTEL_TRACES_EXPORTER` (not `none`), or
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (exported with OTLP over HTTP), and
`OTEL_SDK_DISABLED` not `true`; the service name is `OTEL_SERVICE_NAME` (default `slm-router`), the sampler
`OTEL_TRACES_SAMPLER`, as the SDK reads them. The decision is made once, on first use. While off, a span is a
shared no-op context and nothing of OpenTelemetry is imported: `import slm_router` stays fast and a request
pays one function call per node. A host application that already set an SDK tracer provider keeps it; one
that configures OpenTelemetry in code calls `configure(provider)`.

Spans carry decisions, never text: route, action, reason code, language, agent, item counts. Message text
is private by default, and a failure is recorded by its exception type only (messages may quote the input).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from slm_router.extras import MissingExtraError, require

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

EXTRA = "otel"
FEATURE = "tracing (asked for by the OTEL_* environment variables)"
SCOPE = "slm_router"
DEFAULT_SERVICE_NAME = "slm-router"
REQUEST_SPAN = "slm-router"

_OFF: AbstractContextManager[None] = nullcontext()
_tracer: Tracer | None = None
_decided = False


def tracer() -> Tracer | None:
    """The tracer spans come from, or None while tracing is off (decided from the environment once)."""
    global _tracer, _decided
    if not _decided:
        provider = _provider_from_env(os.environ)
        _tracer = provider.get_tracer(SCOPE) if provider is not None else None
        _decided = True
    return _tracer


def configure(provider: TracerProvider | None) -> None:
    """Trace into `provider` from now on (None: off), whatever the environment says; for tests and for
    host applications that set up OpenTelemetry in code."""
    global _tracer, _decided
    _tracer = provider.get_tracer(SCOPE) if provider is not None else None
    _decided = True


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the standard OTEL_* variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _exporter_names(environ)
    if exporters:
        return exporters != ["none"]
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def request_span() -> AbstractContextManager[Span | None]:
    """`slm-router` around one request that has no trace yet, so its node spans share one root; inside a
    caller's span (an application's, the service's HTTP span) the nodes are that span's children."""
    current = tracer()
    if current is None:
        return _OFF
    from opentelemetry.trace import get_current_span

    return _OFF if get_current_span().get_span_context().is_valid else _span(current, REQUEST_SPAN, {})


def trace_headers() -> dict[str, str]:
    """The current span as W3C trace-context headers (`traceparent`, `tracestate`), so a remote fallback
    provider's own spans join the request's trace; {} while tracing is off."""
    if tracer() is None:
        return {}
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


def node_span(node: str) -> AbstractContextManager[Span | None]:
    """Around one graph node; `describe` adds what it decided once it ran."""
    current = tracer()
    return _OFF if current is None else _span(current, f"slm_router.node.{node}", {"slm_router.node": node})


def agent_span(agent: str, items: int = 1) -> AbstractContextManager[Span | None]:
    """Around one call of an agent (a specialist, the local translator, the fallback) for `items` inputs."""
    current = tracer()
    if current is None:
        return _OFF
    return _span(current, f"slm_router.agent.{agent}", {"slm_router.agent": agent, "slm_router.items": items})


def describe(span: Span | None, update: Mapping[str, Any]) -> None:
    """Set on a node's span what its state update decided: route, action, reason code, language. Reads
    only labels: `text`, `request` and answers are never looked at."""
    if span is None:
        return
    attributes: dict[str, str | bool] = {}
    result = update.get("result")
    if result is not None:
        attributes = {
            "slm_router.route": result.route,
            "slm_router.action": result.action,
            "slm_router.reason_code": result.reason_code,
            "slm_router.answered_by": result.answered_by,
            "slm_router.escalated": result.escalated,
        }
    decision = update.get("decision")
    if decision is not None:
        attributes |= {"slm_router.route": decision.route, "slm_router.reason_code": decision.code}
    verdict = update.get("verdict")
    if verdict is not None:
        attributes["slm_router.action"] = verdict.action
    escalation = update.get("escalation")
    if escalation is not None:
        attributes["slm_router.reason_code"] = escalation.code
    if isinstance(update.get("language"), str):
        attributes["slm_router.language"] = update["language"]
    span.set_attributes(attributes)


def failed(span: Span | None, error: BaseException) -> None:
    """Mark the span failed by the error's type alone (its message may quote the input)."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", type(error).__qualname__)
    span.set_status(Status(StatusCode.ERROR))


@contextmanager
def _span(current: Tracer, name: str, attributes: dict[str, Any]) -> Iterator[Span]:
    with current.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            failed(span, exc)
            raise


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("OTEL_TRACES_EXPORTER", "")
    return [name.strip().lower() for name in raw.split(",") if name.strip()]


def _provider_from_env(environ: Mapping[str, str]) -> TracerProvider | None:
    """The SDK tracer provider the environment asks for, installed as the global one unless the host
    application installed its own (then that one is used); None when tracing is not wanted."""
    if not wanted(environ):
        return None
    require("opentelemetry.sdk.trace", EXTRA, FEATURE)
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    existing = trace.get_tracer_provider()
    if isinstance(existing, TracerProvider):
        return existing
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    for name in [n for n in _exporter_names(environ) or ["otlp"] if n != "none"]:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    trace.set_tracer_provider(provider)
    return provider


def _exporter(name: str) -> Any:
    """A span exporter by its OTEL_TRACES_EXPORTER name (the SDK's entry points); `otlp` is OTLP over HTTP,
    the exporter the extra installs."""
    from importlib.metadata import entry_points

    found = {point.name: point for point in entry_points(group="opentelemetry_traces_exporter")}
    point = found.get(name) or (found.get("otlp_proto_http") if name == "otlp" else None)
    if point is None:
        if name == "otlp":
            raise MissingExtraError(EXTRA, FEATURE, "opentelemetry.exporter.otlp.proto.http")
        installed = sorted(found)
        raise ValueError(f"OTEL_TRACES_EXPORTER names {name!r}, not an installed span exporter: {installed}")
    return point.load()()
