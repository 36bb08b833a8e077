"""The HTTP service's request and response models beyond `RouteRequest`/`RouteResult`: they are its
OpenAPI document, so a field's type and description here is the contract clients see."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slm_router.agents.base import AgentDetails
from slm_router.router.core.rules import ReasonCode
from slm_router.router.result import RouteResult, Translation
from slm_router.router.service.errors import ErrorBody

MODEL_NAME = "slm-router"
ROUTE_MODEL_PREFIX = f"{MODEL_NAME}/"
"""`slm-router/<route>` as a chat model forces that route (what `RouteRequest.route` does)."""


class BatchRequest(BaseModel):
    """Items are validated one by one (see `route_batch`), so one bad item cannot fail the batch."""

    requests: list[dict[str, Any]] = Field(
        min_length=1, json_schema_extra={"items": {"$ref": "#/components/schemas/RouteRequest"}}
    )


class BatchItem(BaseModel):
    result: RouteResult | None = None
    error: ErrorBody | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # OpenAI content parts: keep the text ones
            return "\n".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    """The OpenAI shape; sampling parameters are accepted and ignored (the policy decides)."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False


class RoutingInfo(BaseModel):
    """The `slm_router` field of a chat completion: who answered and why."""

    route: str
    action: str
    answered_by: str
    escalated: bool
    reason: str
    reason_code: ReasonCode
    confidence: float
    specialist_confidence: float | None
    details: AgentDetails | None
    translation: Translation | None = Field(
        description="Set when the message was translated before routing (languages.non_native "
        "translate_then_route): its language, the text it was routed by and who translated it."
    )
    budget_exceeded: bool
    cost: float
    total_ms: float


class ModelCard(BaseModel):
    """One entry of `GET /v1/models`, in OpenAI's shape."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = MODEL_NAME


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ChatChoice(BaseModel):
    index: int = 0
    message: dict[str, str]
    finish_reason: str = "stop"
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    slm_router: RoutingInfo


class RouteInfo(BaseModel):
    name: str
    agent: str | None
    threshold: float
    min_confidence: float | None
    examples: int
