"""The HTTP service: one FastAPI app around one Router.

`create_app` builds what the endpoints share (a `dispatch.Dispatcher`), mounts the endpoint modules of
`routes`, and puts the `gate` in front; models live in `schemas`, the error shape in `errors`, load shedding
in `admission`.
"""

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from slm_router.policies.schema import ServerConfig
from slm_router.router.errors import SlmRouterError
from slm_router.router.runnable import Router
from slm_router.router.service.admission import Admission
from slm_router.router.service.dispatch import Dispatcher
from slm_router.router.service.errors import validation_details
from slm_router.router.service.gate import Gate
from slm_router.router.service.metrics import Metrics
from slm_router.router.service.routes import chat, conversations, operations, routing
from slm_router.router.service.tracing import TraceContext, fastapi_options

OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


def create_app(
    router: Router, settings: ServerConfig, api_keys: set[str] | None, warmup: bool = True
) -> FastAPI:
    """The FastAPI app around one Router; `api_keys=None` means no auth (see `api_keys.resolve_api_keys`)."""
    policy = router.policy
    metrics = Metrics(router.pool.queue_depth, router.fallback_status, policy.routes, policy.pricing.currency)
    admission = Admission(settings.max_in_flight, settings.max_queue, settings.queue_timeout_s)
    metrics.watch_admission(admission)
    dispatcher = Dispatcher(router, settings, admission, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Sync graph nodes run on the loop's default executor and wait there on the agents' micro-batches:
        # it must hold every admitted request, or admission is capped by the executor (6 threads on 2 cores).
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(settings.max_in_flight * 2 + 8, thread_name_prefix="slm-node")
        )
        if warmup:
            await asyncio.to_thread(router.warmup)
        dispatcher.ready = True
        yield
        dispatcher.ready = False
        await asyncio.to_thread(router.close)

    app = FastAPI(
        title="slm-router",
        version="0.1.0",
        summary="Route each request to the cheapest model that can answer it well.",
        lifespan=lifespan,
        **fastapi_options(),
    )
    app.state.dispatcher = dispatcher
    # Only documents the scheme in OpenAPI: the key itself is checked by the Gate, before the body is read.
    protected = [Depends(HTTPBearer(auto_error=False, description="API key from $" + settings.api_keys_env))]
    app.include_router(routing.endpoints, dependencies=protected)
    app.include_router(conversations.endpoints, dependencies=protected)
    app.include_router(chat.endpoints, dependencies=protected)
    app.include_router(operations.endpoints)
    _answer_errors(app, dispatcher)
    app.add_middleware(
        Gate,
        api_keys=api_keys,
        max_body_bytes=settings.max_body_bytes,
        open_paths=OPEN_PATHS,
        on_error=lambda kind: metrics.errors.labels(kind).inc(),
        on_cancel=metrics.cancelled.inc,
    )
    app.add_middleware(TraceContext)  # outermost: a refused request is traced too
    return app


def _answer_errors(app: FastAPI, dispatcher: Dispatcher) -> None:
    """Every failure FastAPI or an endpoint raises answers in the one error shape, counted."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = validation_details(exc)
        return dispatcher.failed(422, "invalid_request", message, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's answer to a body it cannot decode (e.g. invalid UTF-8)
            return dispatcher.failed(400, "invalid_request", f"body is not valid UTF-8 JSON: {exc.detail}")
        return dispatcher.failed(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(SlmRouterError)
    async def _typed(_: Request, exc: SlmRouterError) -> JSONResponse:
        return dispatcher.failed_with(exc)

    @app.exception_handler(Exception)  # a bug: a JSON 500 with an incident id, the traceback to the log
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        return dispatcher.failed_with(exc)
