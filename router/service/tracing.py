"""One OpenTelemetry SERVER span per HTTP request, a child of the caller's W3C `traceparent` when it sends
one, so the router's spans (router/core/telemetry.py) join the caller's trace.

Raw ASGI, like the gate: streamed answers pass through untouched. While tracing is off it only hands the
request on (opentelemetry-instrumentation-asgi would do the same work, but is one more dependency for the
few lines below). The span is named `METHOD /route/{template}` and carries the method, route template and
status: never the path's values (a conversation id) or anything of the body.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI

from slm_router.router.core import telemetry

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TraceContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = telemetry.tracer()
        if tracer is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind, Status, StatusCode

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method = scope.get("method", "GET")
        status: list[int] = []

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        with tracer.start_as_current_span(
            method,
            context=propagate.extract(headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await self.app(scope, receive, send_status)
            except BaseException as exc:
                telemetry.failed(span, exc)
                raise
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                if status:
                    span.set_attribute("http.response.status_code", status[0])
                    if status[0] >= 500:  # answered, not raised: the status code is the error type
                        span.set_attribute("error.type", str(status[0]))
                        span.set_status(Status(StatusCode.ERROR))


def fastapi_options() -> dict[str, Any]:
    """Turn off the request tracing and logs that newer FastAPI releases do by themselves whenever a global
    tracer provider is set: `TraceContext` is this service's one server span, on every FastAPI version,
    and FastAPI's logs would export validation failures with the input values they quote."""
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False, "logs": False}}
    return {}
