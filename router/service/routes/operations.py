"""Operations: liveness, readiness and Prometheus metrics; open without a key (see `app.OPEN_PATHS`)."""

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from slm_router.router.service.dependencies import Dispatch

endpoints = APIRouter(tags=["operations"])


@endpoints.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (liveness)."""
    return {"status": "ok"}


@endpoints.get("/readyz", responses={503: {"description": "Not ready"}})
async def readyz(dispatcher: Dispatch) -> JSONResponse:
    """Models loaded and every agent can serve (readiness). A fallback that is down does not make the
    service unready (most traffic never needs it): it shows as `degraded`, with the breaker's state."""
    router, admission = dispatcher.router, dispatcher.admission
    agents = await asyncio.to_thread(router.pool.health)
    fallback = router.fallback_status()
    ready = dispatcher.ready and all(agents.values())
    degraded = fallback is not None and fallback.get("breaker") != "closed"
    body = {
        "status": ("degraded" if degraded else "ready") if ready else "not_ready",
        "models_loaded": dispatcher.ready,
        "agents": agents,
        "fallback": fallback,
        "admission": {"in_flight": admission.in_flight, "waiting": admission.waiting},
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@endpoints.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def prometheus(dispatcher: Dispatch) -> Response:
    """Prometheus text format: requests and escalations by route and reason, latency per node."""
    return Response(dispatcher.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
