"""The HTTP service: route, batch, an OpenAI-compatible chat endpoint, health, readiness and metrics.

Every error is a JSON body `{"error": {"type", "message", ...}}` with a 4xx/5xx status; tracebacks stay in
the server log.
"""

import asyncio
import ipaddress
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents.base import AgentDetails
from policies.schema import ServerConfig
from router.api import Router
from router.decision import ReasonCode
from router.errors import (
    FallbackError,
    InputTooLargeError,
    InvalidInputError,
    ModelLoadError,
    SlmRouterError,
    UnknownRouteError,
)
from router.metrics import Metrics
from router.result import RouteRequest, RouteResult

log = logging.getLogger("slm_router.server")
MODEL_NAME = "slm-router"
LOOPBACK_NAMES = {"localhost"}


class ServerConfigError(SlmRouterError, ValueError):
    """The service cannot start safely with this configuration."""


# --- request / response models (they are the OpenAPI spec) ----------------------------------------


class BatchRequest(BaseModel):
    requests: list[RouteRequest] = Field(min_length=1)


class ErrorBody(BaseModel):
    type: str
    message: str
    details: list[dict[str, Any]] | None = None


class BatchItem(BaseModel):
    result: RouteResult | None = None
    error: ErrorBody | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # OpenAI content parts: keep the text ones
            return "\n".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    """The OpenAI shape; sampling parameters are accepted and ignored (the policy decides)."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False


class RoutingInfo(BaseModel):
    """The `slm_router` field of a chat completion: who answered and why."""

    route: str
    action: str
    answered_by: str
    escalated: bool
    reason: str
    reason_code: ReasonCode
    confidence: float
    specialist_confidence: float | None
    details: AgentDetails | None
    budget_exceeded: bool
    cost: float
    total_ms: float


class ChatChoice(BaseModel):
    index: int = 0
    message: dict[str, str]
    finish_reason: str = "stop"
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = MODEL_NAME
    choices: list[ChatChoice]
    slm_router: RoutingInfo


class RouteInfo(BaseModel):
    name: str
    agent: str | None
    threshold: float
    min_confidence: float | None
    examples: int


# --- errors -------------------------------------------------------------------------------------------

_STATUS: list[tuple[type[Exception], int, str]] = [
    (InputTooLargeError, 413, "input_too_large"),
    (InvalidInputError, 422, "invalid_input"),
    (UnknownRouteError, 400, "unknown_route"),
    (FallbackError, 503, "fallback_unavailable"),
    (ModelLoadError, 503, "model_unavailable"),
]


def _error(status: int, kind: str, message: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    body = ErrorBody(type=kind, message=message, details=details).model_dump(exclude_none=True)
    return JSONResponse({"error": body}, status_code=status)


def classify_error(exc: Exception) -> tuple[int, str, str]:
    for cls, status, kind in _STATUS:
        if isinstance(exc, cls):
            return status, kind, str(exc)
    incident = uuid.uuid4().hex[:12]
    log.exception("unhandled error (incident %s)", incident, exc_info=exc)
    return 500, "internal_error", f"internal error (incident {incident}); see the server log"


def _validation_details(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    details = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        details.append({"field": where, "problem": str(err.get("msg")), "type": err.get("type")})
    first = details[0] if details else {"field": "body", "problem": "invalid request"}
    if first.get("type") == "json_invalid":
        return f"malformed JSON: {first['problem']}", details
    return f"{first['field']}: {first['problem']}", details


# --- auth ---------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_keys(settings: ServerConfig, host: str) -> set[str] | None:
    """The accepted keys, or None when auth is off; off is only allowed on a loopback address."""
    if settings.auth == "disabled":
        if not is_loopback(host):
            raise ServerConfigError(
                f"server.auth is 'disabled' but host {host!r} is not a loopback address; "
                "set API keys in $" + settings.api_keys_env + " or bind to 127.0.0.1"
            )
        return None
    keys = {k.strip() for k in os.environ.get(settings.api_keys_env, "").split(",") if k.strip()}
    if not keys:
        raise ServerConfigError(
            f"no API keys: set ${settings.api_keys_env} (comma-separated), "
            "or server.auth: disabled for a loopback-only service"
        )
    return keys


# --- app ----------------------------------------------------------------------------------------------


def create_app(
    router: Router, settings: ServerConfig, api_keys: set[str] | None, warmup: bool = True
) -> FastAPI:
    """The FastAPI app around one Router; `api_keys=None` means no auth (see `resolve_api_keys`)."""
    metrics = Metrics(router.pool.queue_depth)
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if warmup:
            await asyncio.to_thread(router.warmup)
        state["ready"] = True
        yield
        state["ready"] = False
        await asyncio.to_thread(router.close)

    app = FastAPI(
        title="slm-router",
        version="0.1.0",
        summary="Route each request to the cheapest model that can answer it well.",
        lifespan=lifespan,
    )
    bearer = HTTPBearer(auto_error=False, description="API key from $" + settings.api_keys_env)

    async def authorised(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if api_keys is None:
            return
        given = creds.credentials if creds else ""
        if not any(secrets.compare_digest(given, key) for key in api_keys):
            raise _Unauthorized()

    @app.exception_handler(_Unauthorized)
    async def _unauthorised(_: Request, __: _Unauthorized) -> JSONResponse:
        response = _error(401, "unauthorized", "missing or invalid API key (Authorization: Bearer <key>)")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = _validation_details(exc)
        return _error(422, "invalid_request", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's answer to a body it cannot decode (e.g. invalid UTF-8)
            return _error(400, "invalid_request", f"body is not valid UTF-8 JSON: {exc.detail}")
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        status, kind, message = classify_error(exc)
        metrics.errors.labels(kind).inc()
        return _error(status, kind, message)

    @app.middleware("http")
    async def _limit_body(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_body_bytes:
            return _error(
                413, "body_too_large", f"body of {length} bytes; the limit is {settings.max_body_bytes}"
            )
        try:
            response: Response = await call_next(request)
        except Exception as exc:  # errors raised past the handlers (e.g. in middleware) still get JSON
            status, kind, message = classify_error(exc)
            return _error(status, kind, message)
        return response

    async def route_one(request: RouteRequest, endpoint: str) -> RouteResult:
        metrics.in_flight.inc()
        start = time.perf_counter()
        try:
            result = await router.ainvoke(request)
        except SlmRouterError as exc:
            metrics.errors.labels(classify_error(exc)[1]).inc()
            raise
        finally:
            metrics.in_flight.dec()
            metrics.request_latency.labels(endpoint).observe(time.perf_counter() - start)
        metrics.observe(result)
        return result

    protected = [Depends(authorised)]

    @app.post("/v1/route", response_model=RouteResult, dependencies=protected, tags=["routing"])
    async def route(request: RouteRequest) -> RouteResult:
        """Route one message; the result says who answered, how sure each step was and why."""
        return await route_one(request, "route")

    @app.post(
        "/v1/route/stream",
        dependencies=protected,
        tags=["routing"],
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def route_stream(request: RouteRequest) -> StreamingResponse:
        """Server-sent events as the request moves through the graph: `node`, `escalation`, then `result`
        (a `RouteResult`), or `error` with the same body as the non-streaming errors."""

        async def events() -> AsyncIterator[str]:
            metrics.in_flight.inc()
            try:
                async for event in router.astream_progress(request):
                    if event.result is not None:
                        metrics.observe(event.result)
                    yield f"event: {event.event}\ndata: {event.model_dump_json(exclude_none=True)}\n\n"
            except Exception as exc:  # the status line is already sent: the error becomes the last event
                _, kind, message = classify_error(exc)
                metrics.errors.labels(kind).inc()
                body = ErrorBody(type=kind, message=message).model_dump_json(exclude_none=True)
                yield f'event: error\ndata: {{"error": {body}}}\n\n'
            finally:
                metrics.in_flight.dec()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/route/batch", response_model=BatchResponse, dependencies=protected, tags=["routing"])
    async def route_batch(batch: BatchRequest) -> BatchResponse | JSONResponse:
        """Route many messages concurrently; one bad item gets an error entry, the others still answer."""
        if len(batch.requests) > settings.max_batch:
            return _error(
                413, "batch_too_large", f"{len(batch.requests)} requests; the limit is {settings.max_batch}"
            )
        outcomes = await asyncio.gather(
            *(route_one(r, "batch") for r in batch.requests), return_exceptions=True
        )
        items = []
        for outcome in outcomes:
            if isinstance(outcome, RouteResult):
                items.append(BatchItem(result=outcome))
            else:
                _, kind, message = classify_error(outcome if isinstance(outcome, Exception) else Exception())
                items.append(BatchItem(error=ErrorBody(type=kind, message=message)))
        return BatchResponse(results=items)

    @app.post("/v1/chat/completions", response_model=ChatCompletion, dependencies=protected, tags=["openai"])
    async def chat_completions(body: ChatCompletionRequest) -> ChatCompletion | JSONResponse:
        """OpenAI-compatible: the last user message is routed; `slm_router` says how it was answered."""
        if body.model != MODEL_NAME:
            return _error(
                404, "model_not_found", f"unknown model {body.model!r}; this server serves {MODEL_NAME!r}"
            )
        if body.stream:
            return _error(400, "unsupported", "stream=true is not supported yet; send stream=false")
        user = [m for m in body.messages if m.role == "user"]
        if not user:
            return _error(422, "invalid_request", "messages: at least one message with role 'user' is needed")
        result = await route_one(RouteRequest(text=user[-1].text()), "chat")
        info = RoutingInfo(**result.model_dump(include=set(RoutingInfo.model_fields)))
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            choices=[ChatChoice(message={"role": "assistant", "content": result.output})],
            slm_router=info,
        )

    @app.get("/v1/routes", response_model=list[RouteInfo], dependencies=protected, tags=["routing"])
    async def routes() -> list[RouteInfo]:
        counts = router.index.example_counts()
        return [
            RouteInfo(
                name=name,
                agent=rp.agent,
                threshold=router.policy.threshold(name),
                min_confidence=rp.min_confidence,
                examples=counts.get(name, 0),
            )
            for name, rp in router.policy.routes.items()
        ]

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> JSONResponse:
        """Models loaded and every agent can serve (readiness)."""
        agents = await asyncio.to_thread(router.pool.health)
        ready = state["ready"] and all(agents.values())
        body = {
            "status": "ready" if ready else "not_ready",
            "models_loaded": state["ready"],
            "agents": agents,
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"])
    async def prometheus() -> Response:
        """Prometheus text format: requests and escalations by route and reason, latency per node."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


class _Unauthorized(Exception):
    pass
