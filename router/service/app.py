"""The HTTP service: route, batch, an OpenAI-compatible chat endpoint, health, readiness and metrics.

The endpoints and their wiring live here; their models in `schemas`, the error shape in `errors`, the key
check in `gate`, load shedding in `admission`.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from langchain_core.runnables import RunnableConfig
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from slm_router.policies.schema import ServerConfig
from slm_router.router.errors import InvalidInputError, RequestTimeoutError, SlmRouterError
from slm_router.router.result import RouteRequest, RouteResult, validation_problems
from slm_router.router.runnable import RouteEvent, Router
from slm_router.router.service.admission import Admission
from slm_router.router.service.errors import (
    ROUTING_ERRORS,
    ErrorBody,
    classify_error,
    documented,
    error_response,
    retry_after,
    validation_details,
)
from slm_router.router.service.gate import Gate
from slm_router.router.service.metrics import Metrics
from slm_router.router.service.schemas import (
    MODEL_NAME,
    BatchItem,
    BatchRequest,
    BatchResponse,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    RouteInfo,
    RoutingInfo,
)

OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


def create_app(
    router: Router, settings: ServerConfig, api_keys: set[str] | None, warmup: bool = True
) -> FastAPI:
    """The FastAPI app around one Router; `api_keys=None` means no auth (see `api_keys.resolve_api_keys`)."""
    metrics = Metrics(router.pool.queue_depth, router.fallback_status)
    state = {"ready": False}
    admission = Admission(settings.max_in_flight, settings.max_queue, settings.queue_timeout_s)
    metrics.watch_admission(admission)
    # Nodes cut their own timeouts to the request's deadline and answer first; this is the backstop.
    deadline_s = router.policy.limits.request_timeout_s + 1.0

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Sync graph nodes run on the loop's default executor and wait there on the agents' micro-batches:
        # it must hold every admitted request, or admission is capped by the executor (6 threads on 2 cores).
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(settings.max_in_flight * 2 + 8, thread_name_prefix="slm-node")
        )
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
    # Only documents the scheme in OpenAPI: the key itself is checked by the Gate, before the body is read.
    bearer = HTTPBearer(auto_error=False, description="API key from $" + settings.api_keys_env)

    async def tenant(request: Request, _: Annotated[Any, Depends(bearer)]) -> str:
        return str(request.state.tenant)

    Tenant = Annotated[str, Depends(tenant)]

    def failed(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        if kind in ("queue_full", "queue_timeout"):
            metrics.shed.labels(kind).inc()
        return error_response(status, kind, message, **extra)

    def failed_with(exc: BaseException) -> JSONResponse:
        status, kind, message = classify_error(exc)
        return failed(status, kind, message, retry_after_s=retry_after(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = validation_details(exc)
        return failed(422, "invalid_request", message, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's answer to a body it cannot decode (e.g. invalid UTF-8)
            return failed(400, "invalid_request", f"body is not valid UTF-8 JSON: {exc.detail}")
        return failed(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(SlmRouterError)
    async def _typed(_: Request, exc: SlmRouterError) -> JSONResponse:
        return failed_with(exc)

    @app.exception_handler(Exception)  # a bug: a JSON 500 with an incident id, the traceback to the log
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        return failed_with(exc)

    async def route_one(
        request: RouteRequest, endpoint: str, tenant: str, release: Callable[[], None] | None = None
    ) -> RouteResult:
        """One message through the router, within the request deadline; the caller holds its admission
        slot, and `release` lets the graph give it back early (`afallback`, router/core/nodes/answer.py)."""
        metrics.in_flight.inc()
        start = time.perf_counter()
        config: RunnableConfig = {"configurable": {"tenant": tenant, "release_admission": release}}
        try:
            result = await asyncio.wait_for(router.ainvoke(request, config), deadline_s)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(
                f"no answer within {deadline_s - 1:g} s (limits.request_timeout_s)"
            ) from None
        finally:
            metrics.in_flight.dec()
            metrics.request_latency.labels(endpoint).observe(time.perf_counter() - start)
        metrics.observe(result)
        return result

    protected: dict[str, Any] = {"responses": ROUTING_ERRORS, "tags": ["routing"]}

    @app.post("/v1/route", response_model=RouteResult, **protected)
    async def route(request: RouteRequest, tenant: Tenant) -> RouteResult:
        """Route one message; the result says who answered, how sure each step was and why."""
        async with admission.slot() as release:
            return await route_one(request, "route", tenant, release)

    @app.post(
        "/v1/route/stream",
        response_model=None,
        responses={200: {"content": {"text/event-stream": {}}}, **ROUTING_ERRORS},
        tags=["routing"],
    )
    async def route_stream(request: RouteRequest, tenant: Tenant) -> StreamingResponse | JSONResponse:
        """Server-sent events as the request moves through the graph: `node`, `escalation`, then `result`
        (a `RouteResult`). An error before the first event is a plain JSON error with its status; after
        it, the last event is `error` with the same body."""
        slot = admission.slot()
        release = await slot.__aenter__()  # held until the stream ends (or fails)
        metrics.in_flight.inc()
        config: RunnableConfig = {"configurable": {"tenant": tenant, "release_admission": release}}
        progress = router.astream_progress(request, config).__aiter__()

        async def finish() -> None:
            metrics.in_flight.dec()
            await slot.__aexit__(None, None, None)

        try:
            first = await progress.__anext__()
        except BaseException as exc:
            await finish()
            if isinstance(exc, Exception):
                return failed_with(exc)
            raise

        async def events() -> AsyncIterator[str]:
            try:
                event: RouteEvent | None = first
                while event is not None:
                    if event.result is not None:
                        metrics.observe(event.result)
                    yield f"event: {event.event}\ndata: {event.model_dump_json(exclude_none=True)}\n\n"
                    event = await anext(progress, None)
            except Exception as exc:  # the status line is already sent: the error becomes the last event
                _, kind, message = classify_error(exc)
                metrics.errors.labels(kind).inc()
                body = ErrorBody(type=kind, message=message).model_dump_json(exclude_none=True)
                yield f'event: error\ndata: {{"error": {body}}}\n\n'
            finally:
                await finish()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/route/batch", response_model=BatchResponse, **protected)
    async def route_batch(batch: BatchRequest, tenant: Tenant) -> BatchResponse | JSONResponse:
        """Route many messages concurrently. Each item is validated and answered on its own: a bad item
        gets an `error` entry with the status it would have had alone, the others still answer."""
        if len(batch.requests) > settings.max_batch:
            return failed(
                413, "batch_too_large", f"{len(batch.requests)} requests; the limit is {settings.max_batch}"
            )

        async def one(raw: Any) -> RouteResult:
            try:
                request = RouteRequest.model_validate(raw)
            except ValidationError as exc:
                raise InvalidInputError(validation_problems(exc)[0]) from None
            return await route_one(request, "batch", tenant)

        async with admission.slot(len(batch.requests)):
            outcomes = await asyncio.gather(*(one(r) for r in batch.requests), return_exceptions=True)
        items = []
        for outcome in outcomes:
            if isinstance(outcome, RouteResult):
                items.append(BatchItem(result=outcome))
            elif isinstance(outcome, Exception):
                status, kind, message = classify_error(outcome)
                metrics.errors.labels(kind).inc()
                items.append(BatchItem(error=ErrorBody(type=kind, message=message, status=status)))
            else:
                raise outcome
        return BatchResponse(results=items)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses=documented(401, 404, 413, 422, 429, 503, 504),
        tags=["openai"],
    )
    async def chat_completions(body: ChatCompletionRequest, tenant: Tenant) -> ChatCompletion | JSONResponse:
        """OpenAI-compatible: the last user message is routed; `slm_router` says how it was answered."""
        if body.model != MODEL_NAME:
            return failed(
                404, "model_not_found", f"unknown model {body.model!r}; this server serves {MODEL_NAME!r}"
            )
        if body.stream:
            return failed(400, "unsupported", "stream=true is not supported yet; send stream=false")
        user = [m for m in body.messages if m.role == "user"]
        if not user:
            return failed(422, "invalid_request", "messages: at least one message with role 'user' is needed")
        try:
            request = RouteRequest(text=user[-1].text())
        except ValidationError as exc:
            return failed(422, "invalid_request", validation_problems(exc)[0])
        async with admission.slot() as release:
            result = await route_one(request, "chat", tenant, release)
        info = RoutingInfo(**result.model_dump(include=set(RoutingInfo.model_fields)))
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            choices=[ChatChoice(message={"role": "assistant", "content": result.output})],
            slm_router=info,
        )

    @app.delete(
        "/v1/conversations/{conversation_id}",
        status_code=204,
        responses=documented(401, 404),
        tags=["routing"],
    )
    async def forget(conversation_id: str, tenant: Tenant) -> Response:
        """Delete the memory of one of the caller's conversations (another tenant's is never reachable)."""
        if not await asyncio.to_thread(router.forget, conversation_id, tenant):
            return failed(404, "not_found", "no such conversation for this API key")
        return Response(status_code=204)

    @app.get("/v1/routes", response_model=list[RouteInfo], responses=documented(401), tags=["routing"])
    async def routes(_: Tenant) -> list[RouteInfo]:
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

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "Not ready"}})
    async def readyz() -> JSONResponse:
        """Models loaded and every agent can serve (readiness). A fallback that is down does not make the
        service unready (most traffic never needs it): it shows as `degraded`, with the breaker's state."""
        agents = await asyncio.to_thread(router.pool.health)
        fallback = router.fallback_status()
        ready = state["ready"] and all(agents.values())
        degraded = fallback is not None and fallback.get("breaker") != "closed"
        body = {
            "status": ("degraded" if degraded else "ready") if ready else "not_ready",
            "models_loaded": state["ready"],
            "agents": agents,
            "fallback": fallback,
            "admission": {"in_flight": admission.in_flight, "waiting": admission.waiting},
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> Response:
        """Prometheus text format: requests and escalations by route and reason, latency per node."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_middleware(
        Gate,
        api_keys=api_keys,
        max_body_bytes=settings.max_body_bytes,
        open_paths=OPEN_PATHS,
        on_error=lambda kind: metrics.errors.labels(kind).inc(),
        on_cancel=metrics.cancelled.inc,
    )
    return app
