"""The HTTP service: one FastAPI app around one Router.

`create_app` builds what the endpoints share (a `dispatch.Dispatcher`), mounts the endpoint modules of
`routes`, and puts the `gate` in front; models live in `schemas`, the error shape in `errors`, load shedding
in `admission`.
"""

import asyncio
from collections.abc import AsyncIterator, Collection
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from slm_router.policies.schema import ServerConfig
from slm_router.router.errors import SlmRouterError
from slm_router.router.runnable import Router
from slm_router.router.service.admission import Admission
from slm_router.router.service.console import pages
from slm_router.router.service.console_api import Console, ConsoleError
from slm_router.router.service.dispatch import Dispatcher
from slm_router.router.service.errors import validation_details
from slm_router.router.service.gate import Gate, KeyRing
from slm_router.router.service.metrics import Metrics
from slm_router.router.service.routes import chat, console, conversations, operations, routing
from slm_router.router.service.tracing import TraceContext, fastapi_options

OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


def create_app(
    router: Router,
    settings: ServerConfig,
    api_keys: set[str] | None,
    warmup: bool = True,
    *,
    admin_keys: Collection[str] = (),
    policy_path: Path | None = None,
) -> FastAPI:
    """The FastAPI app around one Router; `api_keys=None` means no auth (see `api_keys.resolve_api_keys`).
    `admin_keys` are the operators' (`api_keys.resolve_admin_keys`); `policy_path` is the file the
    router's policy came from, which the console writes next to and reloads."""
    policy = router.policy
    # The fallback's status is read from the router serving at scrape time (a policy reload swaps it).
    metrics = Metrics(
        router.pool.queue_depth,
        lambda: dispatcher.router.fallback_status(),
        policy.routes,
        policy.pricing.currency,
    )
    admission = Admission(settings.max_in_flight, settings.max_queue, settings.queue_timeout_s)
    metrics.watch_admission(admission)
    dispatcher = Dispatcher(router, settings, admission, metrics)
    keyring = KeyRing(api_keys, admin_keys)
    console_ = Console(dispatcher, keyring, policy_path)

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
        await asyncio.to_thread(console_.close)  # the serving router, and any a reload kept

    app = FastAPI(
        title="slm-router",
        version="0.1.0",
        summary="Route each request to the cheapest model that can answer it well.",
        lifespan=lifespan,
        **fastapi_options(),
    )
    app.state.dispatcher = dispatcher
    app.state.console = console_
    # Only documents the scheme in OpenAPI: the key itself is checked by the Gate, before the body is read.
    protected = [Depends(HTTPBearer(auto_error=False, description="API key from $" + settings.api_keys_env))]
    app.include_router(routing.endpoints, dependencies=protected)
    app.include_router(conversations.endpoints, dependencies=protected)
    app.include_router(chat.endpoints, dependencies=protected)
    app.include_router(console.endpoints, dependencies=protected)
    app.include_router(operations.endpoints)
    app.include_router(pages.endpoints)  # a browser session, not a bearer key (service/console/pages.py)
    _answer_errors(app, dispatcher)
    app.add_middleware(
        Gate,
        keyring=keyring,
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

    @app.exception_handler(ConsoleError)
    async def _console(_: Request, exc: ConsoleError) -> JSONResponse:
        return dispatcher.failed(exc.status, exc.kind, str(exc))

    @app.exception_handler(SlmRouterError)
    async def _typed(_: Request, exc: SlmRouterError) -> JSONResponse:
        return dispatcher.failed_with(exc)

    @app.exception_handler(Exception)  # a bug: a JSON 500 with an incident id, the traceback to the log
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        return dispatcher.failed_with(exc)
