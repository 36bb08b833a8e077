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
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    RoutingInfo,
)

endpoints = APIRouter(tags=["openai"])


@endpoints.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses=documented(401, 404, 413, 422, 429, 503, 504),
)
async def chat_completions(
    body: ChatCompletionRequest, tenant: Tenant, dispatcher: Dispatch
) -> ChatCompletion | JSONResponse:
    """OpenAI-compatible: the last user message is routed; `slm_router` says how it was answered."""
    if body.model != MODEL_NAME:
        return dispatcher.failed(
            404, "model_not_found", f"unknown model {body.model!r}; this server serves {MODEL_NAME!r}"
        )
    if body.stream:
        return dispatcher.failed(400, "unsupported", "stream=true is not supported yet; send stream=false")
    user = [m for m in body.messages if m.role == "user"]
    if not user:
        return dispatcher.failed(
            422, "invalid_request", "messages: at least one message with role 'user' is needed"
        )
    try:
        request = RouteRequest(text=user[-1].text())
    except ValidationError as exc:
        return dispatcher.failed(422, "invalid_request", validation_problems(exc)[0])
    result = await dispatcher.route(request, "chat", tenant)
    info = RoutingInfo(**result.model_dump(include=set(RoutingInfo.model_fields)))
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        choices=[ChatChoice(message={"role": "assistant", "content": result.output})],
        slm_router=info,
    )
