"""The operator console's JSON API under /v1/console/: what the console pages show, for platforms that
build their own screens. Reading needs any API key; labelling, learning and changing the serving policy
need an operator key (`server.admin_keys_env`), else 403 `forbidden`. Message text appears only when the
serving policy logs it (`privacy.log_text`). Each endpoint calls `console_api.Console` off the event loop.
"""

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from slm_router.router.ops.jobs import Job
from slm_router.router.ops.overview import Overview, Quality
from slm_router.router.ops.review import Label, QueueItem
from slm_router.router.ops.whatif import WhatIfPoint
from slm_router.router.service.console_api import (
    ConsoleError,
    LearnStarted,
    PolicyState,
    Window,
    WrittenPolicy,
)
from slm_router.router.service.dependencies import ConsoleDep, KeyId, Role, require_operator
from slm_router.router.service.errors import ErrorResponse

endpoints = APIRouter(prefix="/v1/console", tags=["console"])
operator = [require_operator]
MAX_THRESHOLDS = 101
DEFAULT_THRESHOLDS = [round(0.05 * i, 2) for i in range(1, 20)]

_MEANING = {
    400: "Unknown route",
    401: "Missing or invalid API key",
    403: "An operator key is needed (server.admin_keys_env)",
    404: "No such job, decision or policy file; or the decision log is off",
    409: "Conflicts with the current state: a learn already running, no labels, an existing file",
    422: "Invalid request or policy",
    503: "The decision log cannot be read",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorResponse, "description": _MEANING[s]} for s in statuses}


class Saved(BaseModel):
    decision_id: int
    route: str | None
    out_of_scope: bool
    labelled_by: str = Field(description="The operator's key id (never the key).")


class WriteRequest(BaseModel):
    path: str | None = Field(
        default=None,
        description="A file name in the policy directory (…/name.yaml); default: a new timestamped file.",
    )
    overwrite_live: bool = Field(default=False, description="Replace the live policy file (explicit only).")


class ReloadRequest(BaseModel):
    path: str | None = Field(
        default=None, description="A file name in the policy directory; default: the live policy file again."
    )


@endpoints.get("/stats", response_model=Overview, responses=_errors(401, 404, 422, 503))
async def stats(console: ConsoleDep, window: Window = "1h") -> Overview:
    """Requests per bucket by route and by who answered, escalation rate by reason, cost per hour against
    the budget's cap, latency p50/p95 per node, and totals, over the window."""
    return await asyncio.to_thread(console.stats, window)


@endpoints.get("/quality", response_model=Quality, responses=_errors(401, 404, 422, 503))
async def quality(console: ConsoleDep, window: Window = "24h") -> Quality:
    """Confidence histograms per route, the reliability curve from shadow-mode agreement, and shadow
    agreement per route over time."""
    return await asyncio.to_thread(console.quality, window)


@endpoints.get("/review", response_model=list[QueueItem], responses=_errors(401, 404, 422, 503))
async def review_queue(
    console: ConsoleDep, role: Role, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[QueueItem]:
    """Escalated, low-margin and shadow-disagreeing decisions, unlabelled first, newest first; text and
    answers only with `privacy.log_text`, and only to operator keys (the queue holds every tenant's)."""
    return await asyncio.to_thread(console.review, limit, role)


@endpoints.post(
    "/labels", response_model=Saved, dependencies=operator, responses=_errors(401, 403, 404, 422, 503)
)
async def label(body: Label, console: ConsoleDep, key_id: KeyId) -> Saved:
    """Label one decision with the right route (or out of scope) and, for sentiment or extraction, the
    right answer; labelling again replaces the label."""
    await asyncio.to_thread(console.label, body, key_id)
    return Saved(
        decision_id=body.decision_id, route=body.route, out_of_scope=body.out_of_scope, labelled_by=key_id
    )


@endpoints.get("/whatif", response_model=list[WhatIfPoint], responses=_errors(400, 401, 404, 422, 503))
async def what_if(
    console: ConsoleDep,
    route: Annotated[
        str | None, Query(description="A route's threshold to move; default: every route's.")
    ] = None,
    thresholds: Annotated[
        str | None, Query(description="Comma-separated thresholds in [0, 1]; default 0.05, 0.10, … 0.95.")
    ] = None,
) -> list[WhatIfPoint]:
    """Predicted escalation rate, accuracy on labelled decisions and cost per 1k requests at each threshold,
    replayed from the recorded scores; nothing is written."""
    return await asyncio.to_thread(console.whatif, route, _thresholds(thresholds))


@endpoints.post(
    "/learn",
    status_code=202,
    response_model=LearnStarted,
    dependencies=operator,
    responses=_errors(401, 403, 404, 409, 503),
)
async def learn(console: ConsoleDep, key_id: KeyId) -> LearnStarted:
    """Start learning from the labelled decisions in the background (one at a time); poll
    /v1/console/jobs/{job_id} for progress and the before/after numbers."""
    return await asyncio.to_thread(console.start_learn, key_id)


@endpoints.get("/jobs", response_model=list[Job], responses=_errors(401))
async def jobs(console: ConsoleDep) -> list[Job]:
    """The jobs the service remembers, newest first."""
    return console.jobs.jobs()


@endpoints.get("/jobs/{job_id}", response_model=Job, responses=_errors(401, 404))
async def job(job_id: str, console: ConsoleDep) -> Job:
    """A job's state (queued, running, done, failed), progress 0..1, and its result or error."""
    return console.job(job_id)


@endpoints.post(
    "/learn/{job_id}/write",
    status_code=201,
    response_model=WrittenPolicy,
    dependencies=operator,
    responses=_errors(401, 403, 404, 409, 422),
)
async def write_policy(job_id: str, console: ConsoleDep, body: WriteRequest | None = None) -> WrittenPolicy:
    """Write a finished learn's candidate policy to a new file next to the live one; the live policy is
    replaced only with `overwrite_live: true`. Writing does not change what serves: reload does."""
    body = body or WriteRequest()
    return await asyncio.to_thread(console.write_policy, job_id, body.path, body.overwrite_live)


@endpoints.get("/policy", response_model=PolicyState, responses=_errors(401))
async def policy(console: ConsoleDep) -> PolicyState:
    """Which policy file serves now, and whether a rollback is possible."""
    return console.policy_state()


@endpoints.post(
    "/policy/reload", response_model=PolicyState, dependencies=operator, responses=_errors(401, 403, 404, 422)
)
async def reload(console: ConsoleDep, body: ReloadRequest | None = None) -> PolicyState:
    """Serve a policy file from the next request on: a new router sharing the running agents and encoder,
    swapped in atomically; the one it replaces is kept for rollback."""
    return await asyncio.to_thread(console.reload, (body or ReloadRequest()).path)


@endpoints.post(
    "/policy/rollback", response_model=PolicyState, dependencies=operator, responses=_errors(401, 403, 409)
)
async def rollback(console: ConsoleDep) -> PolicyState:
    """Serve the policy the last reload replaced, again."""
    return await asyncio.to_thread(console.rollback)


def _thresholds(raw: str | None) -> list[float]:
    if raw is None or not raw.strip():
        return DEFAULT_THRESHOLDS
    try:
        values = [float(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise ConsoleError(f"thresholds {raw!r}: comma-separated numbers", 422, "invalid_request") from None
    if not values or len(values) > MAX_THRESHOLDS or not all(0.0 <= v <= 1.0 for v in values):
        raise ConsoleError(f"thresholds: 1 to {MAX_THRESHOLDS} numbers in [0, 1]", 422, "invalid_request")
    return values
