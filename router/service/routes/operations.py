"""Operations: liveness, readiness and Prometheus metrics; open without a key (see `app.OPEN_PATHS`)."""

import asyncio

from fastapi import APIRouter, Request
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
    responses={
        200: {
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}},
            }
        }
    },
)
async def prometheus(dispatcher: Dispatch, request: Request) -> Response:
    """Requests and escalations by route and reason, latency per node, cost, process: OpenMetrics when the
    scraper asks for it in `Accept`, else the Prometheus text format."""
    body, content_type = dispatcher.metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
