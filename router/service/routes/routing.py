"""Routing: one message, a stream of its progress, a batch, and the list of routes."""

from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from langchain_core.runnables import RunnableConfig
from pydantic import ValidationError
from sse_starlette import EventSourceResponse

from slm_router.router.errors import InvalidInputError
from slm_router.router.result import RouteRequest, RouteResult, validation_problems
from slm_router.router.runnable import RouteEvent
from slm_router.router.service.dependencies import Dispatch, Tenant
from slm_router.router.service.errors import ROUTING_ERRORS, ErrorBody, classify_error, documented
from slm_router.router.service.schemas import BatchItem, BatchRequest, BatchResponse, RouteInfo

endpoints = APIRouter(tags=["routing"])


@endpoints.post("/v1/route", response_model=RouteResult, responses=ROUTING_ERRORS)
async def route(request: RouteRequest, tenant: Tenant, dispatcher: Dispatch) -> RouteResult:
    """Route one message; the result says who answered, how sure each step was and why."""
    return await dispatcher.route(request, "route", tenant)


@endpoints.post(
    "/v1/route/stream",
    response_model=None,
    responses={200: {"content": {"text/event-stream": {}}}, **ROUTING_ERRORS},
)
async def route_stream(
    request: RouteRequest, tenant: Tenant, dispatcher: Dispatch
) -> EventSourceResponse | JSONResponse:
    """Server-sent events as the request moves through the graph: `node`, `escalation`, then `result`
    (a `RouteResult`). An error before the first event is a plain JSON error with its status; after
    it, the last event is `error` with the same body."""
    metrics = dispatcher.metrics
    slot = dispatcher.admission.slot()
    release = await slot.__aenter__()  # held until the stream ends (or fails)
    metrics.in_flight.inc()
    config: RunnableConfig = {"configurable": {"tenant": tenant, "release_admission": release}}
    progress = dispatcher.router.astream_progress(request, config).__aiter__()

    async def finish() -> None:
        metrics.in_flight.dec()
        await slot.__aexit__(None, None, None)

    try:
        first = await progress.__anext__()
    except BaseException as exc:
        await finish()
        if isinstance(exc, Exception):
            return dispatcher.failed_with(exc)
        raise

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            event: RouteEvent | None = first
            while event is not None:
                if event.result is not None:
                    metrics.observe(event.result)
                yield {"event": event.event, "data": event.model_dump_json(exclude_none=True)}
                event = await anext(progress, None)
        except Exception as exc:  # the status line is already sent: the error becomes the last event
            _, kind, message = classify_error(exc)
            metrics.errors.labels(kind).inc()
            body = ErrorBody.of(kind, message).model_dump_json(exclude_none=True)
            yield {"event": "error", "data": f'{{"error": {body}}}'}
        finally:
            await finish()

    # sse-starlette frames the events, pings idle connections and stops when the client goes away.
    return EventSourceResponse(events(), sep="\n")


@endpoints.post("/v1/route/batch", response_model=BatchResponse, responses=ROUTING_ERRORS)
async def route_batch(
    batch: BatchRequest, tenant: Tenant, dispatcher: Dispatch
) -> BatchResponse | JSONResponse:
    """Route many messages as one batch: one forward pass of the encoder for all of them, each specialist
    called once (`Router.abatch`). Each item is validated and answered on its own: a bad item gets an
    `error` entry with the status it would have had alone, the others still answer."""
    size, limit = len(batch.requests), dispatcher.settings.max_batch
    if size > limit:
        return dispatcher.failed(413, "batch_too_large", f"{size} requests; the limit is {limit}")

    parsed: list[RouteRequest | Exception] = []
    for raw in batch.requests:
        try:
            parsed.append(RouteRequest.model_validate(raw))
        except ValidationError as exc:
            parsed.append(InvalidInputError(validation_problems(exc)[0]))
    valid = [p for p in parsed if isinstance(p, RouteRequest)]
    async with dispatcher.admission.slot(size):
        answered = iter(await dispatcher.route_many(valid, "batch", tenant))
    outcomes = [p if isinstance(p, Exception) else next(answered) for p in parsed]
    items: list[BatchItem] = []
    for outcome in outcomes:
        if isinstance(outcome, RouteResult):
            items.append(BatchItem(result=outcome))
        else:
            status, kind, message = classify_error(outcome)
            dispatcher.metrics.errors.labels(kind).inc()
            items.append(BatchItem(error=ErrorBody.of(kind, message).model_copy(update={"status": status})))
    return BatchResponse(results=items)


@endpoints.get("/v1/routes", response_model=list[RouteInfo], responses=documented(401))
async def routes(dispatcher: Dispatch) -> list[RouteInfo]:
    policy = dispatcher.router.policy
    counts = dispatcher.router.index.example_counts()
    return [
        RouteInfo(
            name=name,
            agent=rp.agent,
            threshold=policy.threshold(name),
            min_confidence=rp.min_confidence,
            examples=counts.get(name, 0),
        )
        for name, rp in policy.routes.items()
    ]
