"""What every endpoint shares: one message through the router within the request deadline, under admission,
counted in the metrics; and a failure answered in the one error shape, counted too."""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from fastapi.responses import JSONResponse
from langchain_core.runnables import RunnableConfig

from slm_router.policies.schema import ServerConfig
from slm_router.router.errors import RequestTimeoutError
from slm_router.router.result import RouteRequest, RouteResult
from slm_router.router.runnable import Router
from slm_router.router.service.admission import Admission
from slm_router.router.service.errors import classify_error, error_response, retry_after
from slm_router.router.service.metrics import Metrics


@dataclass
class Dispatcher:
    """One per app (`create_app` builds it; endpoints receive it as `dependencies.Dispatch`)."""

    router: Router
    settings: ServerConfig
    admission: Admission
    metrics: Metrics
    ready: bool = False  # the lifespan sets it once the router is warm; /readyz reports it

    @property
    def deadline_s(self) -> float:
        """Nodes cut their own timeouts to the request's deadline and answer first; this is the backstop."""
        return self.router.policy.limits.request_timeout_s + 1.0

    def too_late(self) -> RequestTimeoutError:
        """What a request that hit the backstop deadline gets (504 `request_timeout`)."""
        return RequestTimeoutError(f"no answer within {self.deadline_s - 1:g} s (limits.request_timeout_s)")

    async def route(self, request: RouteRequest, endpoint: str, tenant: str) -> RouteResult:
        """One message in its own admission slot, which the graph may give back early."""
        async with self.admission.slot() as release:
            return await self.route_one(request, endpoint, tenant, release)

    async def route_one(
        self, request: RouteRequest, endpoint: str, tenant: str, release: Callable[[], None] | None = None
    ) -> RouteResult:
        """One message through the router, within the request deadline; the caller holds its admission
        slot, and `release` lets the graph give it back early (`afallback`, router/core/nodes/answer.py)."""
        self.metrics.in_flight.inc()
        start = time.perf_counter()
        config: RunnableConfig = {"configurable": {"tenant": tenant, "release_admission": release}}
        try:
            result = await asyncio.wait_for(self.router.ainvoke(request, config), self.deadline_s)
        except asyncio.TimeoutError:
            raise self.too_late() from None
        finally:
            self.metrics.in_flight.dec()
            self.metrics.request_duration.labels(endpoint).observe(time.perf_counter() - start)
        self.metrics.observe(result)
        return result

    async def route_many(
        self, requests: list[RouteRequest], endpoint: str, tenant: str
    ) -> list[RouteResult | Exception]:
        """Many messages as one batch (`Router.abatch`) within the request deadline; the caller holds
        their admission slots. Each item's outcome in order: its result, or what failed it alone."""
        if not requests:
            return []
        self.metrics.in_flight.inc(len(requests))
        start = time.perf_counter()
        config: RunnableConfig = {"configurable": {"tenant": tenant}}
        try:
            answered = self.router.abatch(list(requests), config, return_exceptions=True)
            outcomes = cast(list[RouteResult | Exception], await asyncio.wait_for(answered, self.deadline_s))
        except asyncio.TimeoutError:
            outcomes = [self.too_late() for _ in requests]
        finally:
            self.metrics.in_flight.dec(len(requests))
            elapsed = time.perf_counter() - start
            for _ in requests:
                self.metrics.request_duration.labels(endpoint).observe(elapsed)
        for outcome in outcomes:
            if isinstance(outcome, RouteResult):
                self.metrics.observe(outcome)
        return outcomes

    def swap(self, router: Router) -> Router:
        """Serve from now on with `router` (a policy reload or rollback) and return the one it replaces.

        One attribute assignment, so the swap is atomic: a request already running keeps the router it
        started with, and every later one gets the new router. Closing the old one is the caller's
        business (`console_api.Console` waits out the request deadline first).

        The metrics' route labels grow by the new policy's routes (never shrink: series already exported
        keep their label), so a route added by reload is counted under its name, not as `multi`."""
        self.metrics.routes = self.metrics.routes | frozenset(router.routes)
        previous, self.router = self.router, router
        return previous

    def failed(self, status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
        """The error answer, counted (and counted as shed when admission refused it)."""
        self.metrics.errors.labels(kind).inc()
        if kind in ("queue_full", "queue_timeout"):
            self.metrics.shed.labels(kind).inc()
        return error_response(status, kind, message, **extra)

    def failed_with(self, exc: BaseException) -> JSONResponse:
        status, kind, message = classify_error(exc)
        return self.failed(status, kind, message, retry_after_s=retry_after(exc))
