"""The OpenAI-compatible chat endpoint, so OpenAI clients can call the router unchanged."""

import time
import uuid

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from slm_router.router.result import RouteRequest, validation_problems
from slm_router.router.service.dependencies import Dispatch, Tenant
from slm_router.router.service.errors import documented
from slm_router.router.service.schemas import (
    MODEL_NAME,
    ROUTE_MODEL_PREFIX,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ModelCard,
    ModelList,
    RoutingInfo,
)

endpoints = APIRouter(tags=["openai"])
STARTED = int(time.time())


@endpoints.get("/v1/models", response_model=ModelList, responses=documented(401))
async def models(dispatcher: Dispatch) -> ModelList:
    """OpenAI-compatible: `slm-router` (the router decides) and `slm-router/<route>` per route (forced)."""
    names = [MODEL_NAME, *(ROUTE_MODEL_PREFIX + route for route in dispatcher.router.routes)]
    return ModelList(data=[ModelCard(id=name, created=STARTED) for name in names])


@endpoints.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses=documented(401, 404, 413, 422, 429, 503, 504),
)
async def chat_completions(
    body: ChatCompletionRequest, tenant: Tenant, dispatcher: Dispatch
) -> ChatCompletion | JSONResponse:
    """OpenAI-compatible: the last user message is routed (model `slm-router`), or sent to the route the
    model names (`slm-router/<route>`); `slm_router` says how it was answered."""
    forced = (
        body.model.removeprefix(ROUTE_MODEL_PREFIX) if body.model.startswith(ROUTE_MODEL_PREFIX) else None
    )
    if body.model != MODEL_NAME and forced not in dispatcher.router.routes:
        return dispatcher.failed(
            404,
            "model_not_found",
            f"unknown model {body.model!r}; GET /v1/models lists {MODEL_NAME!r} and one model per route",
        )
    if body.stream:
        return dispatcher.failed(400, "unsupported", "stream=true is not supported yet; send stream=false")
    user = [m for m in body.messages if m.role == "user"]
    if not user:
        return dispatcher.failed(
            422, "invalid_request", "messages: at least one message with role 'user' is needed"
        )
    try:
        request = RouteRequest(text=user[-1].text(), route=forced)
    except ValidationError as exc:
        return dispatcher.failed(422, "invalid_request", validation_problems(exc)[0])
    result = await dispatcher.route(request, "chat", tenant)
    info = RoutingInfo(**result.model_dump(include=set(RoutingInfo.model_fields)))
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=body.model,
        choices=[ChatChoice(message={"role": "assistant", "content": result.output})],
        slm_router=info,
    )
