"""The HTTP service's request and response models beyond `RouteRequest`/`RouteResult`: they are its
OpenAPI document, so a field's type and description here is the contract clients see."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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

    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[dict[str, Any]] | None = None


UNSUPPORTED_PARAMS: dict[str, tuple[list[Any], str]] = {
    "n": ([1], "one choice per request: n must be 1"),
    "tools": ([[]], "tool calling is not supported"),
    "tool_choice": (["none"], "tool calling is not supported"),
    "functions": ([[]], "function calling is not supported"),
    "function_call": (["none"], "function calling is not supported"),
    "parallel_tool_calls": ([True, False], "tool calling is not supported"),
    "response_format": (
        [{"type": "text"}],
        "structured output is not supported: response_format must be text",
    ),
    "logprobs": ([False], "log probabilities are not supported"),
    "top_logprobs": ([0], "log probabilities are not supported"),
    "logit_bias": ([{}], "logit_bias is not supported"),
    "presence_penalty": ([0], "presence_penalty is not supported (only 0)"),
    "frequency_penalty": ([0], "frequency_penalty is not supported (only 0)"),
    "modalities": ([["text"]], "only text output is supported"),
    "audio": ([], "audio output is not supported"),
    "prediction": ([], "predicted outputs are not supported"),
    "web_search_options": ([], "web search is not supported"),
}
"""Parameters the router cannot honour, with the values that ask for nothing (accepted, as clients send
them as defaults): any other value is a 400 naming the parameter, never silently ignored. `null` is
always accepted (it is what "not set" looks like)."""

IGNORED_PARAMS = frozenset(
    {
        "user",
        "seed",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "reasoning_effort",
        "verbosity",
    }
)
"""Parameters accepted and ignored: they change no answer's content the caller relies on (an end-user id,
a best-effort seed, storage and tier hints), so refusing them would only break clients that send them."""


class StreamOptions(BaseModel):
    include_usage: bool = Field(
        default=False, description="Send a last chunk with `usage` (and empty `choices`) before [DONE]."
    )


class ChatCompletionRequest(BaseModel):
    """The OpenAI shape. `max_tokens` (or `max_completion_tokens`), `temperature`, `top_p` and `stop` go
    to the fallback's chat model for this call; specialists are deterministic local models and ignore them.
    Parameters the router cannot honour (`UNSUPPORTED_PARAMS`) and unknown ones are a 400 naming the
    parameter; `IGNORED_PARAMS` are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(
        default=None, ge=1, description="Longest answer of the fallback, in tokens."
    )
    max_completion_tokens: int | None = Field(default=None, ge=1, description="The newer name of max_tokens.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = Field(default=None, description="Up to 4 sequences that end the answer.")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def unsupported(self) -> tuple[str, str] | None:
        """The first parameter the router cannot honour, as (parameter, why); None when all can be."""
        for name, value in (self.model_extra or {}).items():
            if value is None or name in IGNORED_PARAMS:
                continue
            if name not in UNSUPPORTED_PARAMS:
                return name, f"unrecognized request argument supplied: {name}"
            neutral, why = UNSUPPORTED_PARAMS[name]
            if value not in neutral:
                return name, why
        return None

    def sampling(self) -> dict[str, Any]:
        """The generation settings given (`agents.fallback.Sampling`)."""
        given: dict[str, Any] = {
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
        }
        return {key: value for key, value in given.items() if value is not None}


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


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = Field(
        description="False: counted by the fallback model. True: estimated from characters "
        "(pricing.chars_per_token), as for specialist answers, which have no token count."
    )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] = "stop"
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    slm_router: RoutingInfo


class ChunkChoice(BaseModel):
    index: int = 0
    delta: dict[str, str]
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a streamed chat completion; the one with `finish_reason` also carries
    `slm_router`, and with `stream_options.include_usage` a last one has `usage` and no choices."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    slm_router: RoutingInfo | None = None


class RouteInfo(BaseModel):
    name: str
    agent: str | None
    threshold: float
    min_confidence: float | None
    examples: int
