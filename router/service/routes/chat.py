"""The OpenAI-compatible chat endpoint, so OpenAI clients (the official SDKs, LangChain's `ChatOpenAI`) call
the router unchanged: the whole conversation, streaming, usage, and OpenAI's error envelope."""

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, cast

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from langchain_core.runnables import RunnableConfig
from pydantic import ValidationError
from sse_starlette import EventSourceResponse

from slm_router.agents.base import FallbackOutput
from slm_router.agents.fallback.agent import CallOptions, Sampling
from slm_router.policies.schema import PricingConfig
from slm_router.router.core.conversations import Turn
from slm_router.router.errors import FallbackError
from slm_router.router.result import RouteRequest, RouteResult, validation_problems
from slm_router.router.service.dependencies import Dispatch, Tenant
from slm_router.router.service.dispatch import Dispatcher
from slm_router.router.service.errors import ErrorBody, classify_error, documented
from slm_router.router.service.schemas import (
    MODEL_NAME,
    ROUTE_MODEL_PREFIX,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    ChunkChoice,
    ModelCard,
    ModelList,
    RoutingInfo,
    Usage,
)

endpoints = APIRouter(tags=["openai"])
STARTED = int(time.time())


class BadMessages(Exception):
    """A conversation the router cannot read: 422 when it is malformed, 400 when it asks for something
    unsupported (tool calls, images); `param` names the field at fault, as OpenAI's errors do."""

    def __init__(self, status: int, param: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass
class Conversation:
    """The OpenAI messages as the router reads them: the client's system text, the earlier turns, and the
    message to route (consecutive messages of one role read as one)."""

    instructions: str
    history: list[Turn]
    text: str


def read_messages(messages: list[ChatMessage]) -> Conversation:
    """System and developer messages, wherever they are, become the caller's instructions to the fallback;
    user/assistant exchanges become the turns it sees (and follow-up routing reads); the last user message
    is the one routed."""
    system: list[str] = []
    runs: list[tuple[str, list[str]]] = []  # (role, texts), consecutive messages of one role merged
    for i, message in enumerate(messages):
        text = _text(message, f"messages[{i}]")
        if message.role in ("system", "developer"):
            system.append(text)
        elif message.role in ("user", "assistant"):
            if runs and runs[-1][0] == message.role:
                runs[-1][1].append(text)
            else:
                runs.append((message.role, [text]))
        else:
            raise BadMessages(
                400, f"messages[{i}].role", f"role {message.role!r} needs tool calling: unsupported"
            )
    if not runs or runs[-1][0] != "user":
        raise BadMessages(422, "messages", "the last message (system messages aside) must have role 'user'")
    history: list[Turn] = []
    user = ""
    for role, texts in runs[:-1]:
        if role == "user":
            user = "\n".join(texts)
        else:  # an assistant turn closes an exchange (one opening the conversation has no user text)
            history.append(Turn(text=user, route=MODEL_NAME, output="\n".join(texts)))
            user = ""
    return Conversation("\n".join(system), history, "\n".join(runs[-1][1]))


def _text(message: ChatMessage, where: str) -> str:
    """The text of a message; tool calls and content parts other than text (images, audio, files) are
    refused, not dropped."""
    extra = message.model_extra or {}
    for key in ("tool_calls", "function_call"):
        if extra.get(key):
            raise BadMessages(400, f"{where}.{key}", "tool calling is not supported")
    content = message.content
    if not isinstance(content, list):
        return content or ""
    for j, part in enumerate(content):
        if part.get("type") != "text":
            kind = part.get("type")
            raise BadMessages(400, f"{where}.content[{j}]", f"content parts of type {kind!r}: only text")
    return "\n".join(str(part.get("text", "")) for part in content)


@endpoints.get("/v1/models", response_model=ModelList, responses=documented(401))
async def models(dispatcher: Dispatch) -> ModelList:
    """OpenAI-compatible: `slm-router` (the router decides) and `slm-router/<route>` per route (forced)."""
    names = [MODEL_NAME, *(ROUTE_MODEL_PREFIX + route for route in dispatcher.router.routes)]
    return ModelList(data=[ModelCard(id=name, created=STARTED) for name in names])


@endpoints.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "A completion, or with `stream` chunks"},
        **documented(400, 401, 404, 413, 422, 429, 503, 504),
    },
)
async def chat_completions(
    body: ChatCompletionRequest, tenant: Tenant, dispatcher: Dispatch
) -> ChatCompletion | JSONResponse | EventSourceResponse:
    """OpenAI-compatible chat completions.

    - Model `slm-router`: the router picks the route of the last user message (earlier turns help with
      follow-ups); `slm-router/<route>` forces that route. `slm_router` says who answered and why.
    - The whole conversation is the fallback's context: system messages follow the policy's system prompt,
      earlier user/assistant turns are its history, all PII-redacted before they leave the host.
    - `max_tokens`/`max_completion_tokens`, `temperature`, `top_p` and `stop` go to the fallback for this
      call; specialists are local models with fixed outputs and ignore them. Unsupported parameters (`n`>1,
      tools, logprobs, non-text `response_format`, ...) are a 400 naming the parameter.
    - `usage` on every answer: the fallback's own token counts, or estimated from characters for
      specialists (`usage.estimated: true`).
    - `stream`: `chat.completion.chunk` events, then `data: [DONE]`; the fallback's tokens as generated,
      a specialist's answer as one chunk; `stream_options.include_usage` adds the usage chunk. An error
      before the first chunk is a JSON error with its status; after it, an `error` event.
    - A request the policy rejects (no model may answer it) is an error, never an empty 200: see
      `rejection`.
    """
    forced = (
        body.model.removeprefix(ROUTE_MODEL_PREFIX) if body.model.startswith(ROUTE_MODEL_PREFIX) else None
    )
    if body.model != MODEL_NAME and forced not in dispatcher.router.routes:
        return dispatcher.failed(
            404,
            "model_not_found",
            f"unknown model {body.model!r}; GET /v1/models lists {MODEL_NAME!r} and one model per route",
        )
    unsupported = body.unsupported()
    if unsupported is not None:
        return _bad_param(dispatcher, 400, *unsupported)
    try:
        conversation = read_messages(body.messages)
        request = RouteRequest(text=conversation.text, route=forced)
    except BadMessages as exc:
        return _bad_param(dispatcher, exc.status, exc.param, str(exc))
    except ValidationError as exc:
        return dispatcher.failed(422, "invalid_request", validation_problems(exc)[0])
    sampling = cast(Sampling, body.sampling())
    options = CallOptions(sampling=sampling, instructions=conversation.instructions or None)
    turn = _turn(dispatcher, tenant, request, conversation.history, options, body.stream)
    try:
        first = await anext(turn)
    except Exception as exc:
        return dispatcher.failed_with(exc)
    reply = _Reply(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=body.model,
        text=conversation.text,
        max_tokens=sampling.get("max_tokens") or dispatcher.router.policy.fallback.max_tokens,
        pricing=dispatcher.router.policy.pricing,
    )
    if isinstance(first, RouteResult):
        await turn.aclose()
        rejected = rejection(dispatcher, first)
        if rejected is not None:
            return rejected
        if not body.stream:
            return reply.completion(first)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return EventSourceResponse(_chunks(dispatcher, reply, first, turn, include_usage), sep="\n")


def rejection(dispatcher: Dispatcher, result: RouteResult) -> JSONResponse | None:
    """A request the policy rejects (no fallback for what no specialist serves, or the escalation budget
    spent with `when_exceeded: reject`) answers an error in OpenAI's envelope, not 200 with empty content.

    Why not 200 with `finish_reason: "content_filter"`: nothing was filtered, and clients read such a
    choice as an answer (LangChain's `ChatOpenAI` returns it as an ordinary message), so an application
    would show an empty reply. An error status makes every OpenAI client raise: 429 `budget_exceeded` when
    the budget refused it, with `Retry-After` saying when its window has room (the official clients
    honour it when they retry a 429), else 400 `request_rejected` (not retried: the same request is
    rejected again). The message gives the router's reason; `details` its `reason_code` and route.
    """
    if result.action != "reject":
        return None
    details = [{"reason_code": result.reason_code, "route": result.route}]
    if result.budget_exceeded:
        message = f"the escalation budget is spent and no specialist may answer: {result.reason}"
        wait = dispatcher.router.budget_retry_after_s()
        return dispatcher.failed(429, "budget_exceeded", message, details=details, retry_after_s=wait)
    message = f"the policy rejects this request, no model may answer it: {result.reason}"
    return dispatcher.failed(400, "request_rejected", message, details=details)


def _bad_param(dispatcher: Dispatcher, status: int, param: str, message: str) -> JSONResponse:
    kind = "unsupported_parameter" if status == 400 else "invalid_request"
    return dispatcher.failed(
        status, kind, f"{param}: {message}", details=[{"field": param, "problem": message}]
    )


async def _turn(
    dispatcher: Dispatcher,
    tenant: str,
    request: RouteRequest,
    history: list[Turn],
    options: CallOptions,
    stream: bool,
) -> AsyncGenerator[str | RouteResult, None]:
    """`Router.astream_chat` in an admission slot (which the fallback node gives back early), within the
    request deadline, counted in the metrics."""
    metrics = dispatcher.metrics
    async with dispatcher.admission.slot() as release:
        metrics.in_flight.inc()
        start = time.perf_counter()
        until = time.monotonic() + dispatcher.deadline_s
        config: RunnableConfig = {"configurable": {"tenant": tenant, "release_admission": release}}
        items = cast(
            AsyncGenerator[str | RouteResult, None],
            dispatcher.router.astream_chat(request, history, config, options, stream),
        )
        try:
            while True:
                try:
                    item = await asyncio.wait_for(anext(items, None), until - time.monotonic())
                except TimeoutError:
                    raise dispatcher.too_late() from None
                if item is None:
                    return
                if isinstance(item, RouteResult):
                    metrics.observe(item)
                yield item
        finally:
            await items.aclose()
            metrics.in_flight.dec()
            metrics.request_duration.labels("chat").observe(time.perf_counter() - start)


async def _chunks(
    dispatcher: Dispatcher,
    reply: "_Reply",
    first: str | RouteResult,
    turn: AsyncGenerator[str | RouteResult, None],
    include_usage: bool,
) -> AsyncIterator[dict[str, str]]:
    """The SSE events: the role, the text (streamed, or the specialist's answer at once), the last chunk
    with `finish_reason` and `slm_router`, the usage chunk when asked for, `[DONE]`. A failure once the
    stream started is an `error` event with the error body (OpenAI clients raise it), never a traceback."""
    streamed = False
    try:
        yield reply.event({"role": "assistant", "content": ""})
        item: str | RouteResult | None = first
        while isinstance(item, str):
            streamed = True
            yield reply.event({"content": item})
            item = await anext(turn, None)
        if item is None:
            raise RuntimeError("the router ended the turn without a result")
        if streamed and item.action != "fallback":
            raise FallbackStopped(f"the fallback failed after part of its answer was sent: {item.reason}")
        if not streamed and item.output:
            yield reply.event({"content": item.output})
        usage = reply.usage(item)
        yield reply.event({}, reply.finish_reason(item, usage), item)
        if include_usage:
            yield {"data": reply.chunk([], usage=usage).model_dump_json(exclude={"slm_router"})}
        yield {"data": "[DONE]"}
    except Exception as exc:
        _, kind, message = classify_error(exc)
        dispatcher.metrics.errors.labels(kind).inc()
        body = ErrorBody.of(kind, message).model_dump(exclude_none=True)
        yield {"event": "error", "data": json.dumps({"error": body})}
    finally:
        await turn.aclose()


class FallbackStopped(FallbackError):
    """The fallback failed once part of its streamed answer was out; the local answer cannot follow it."""


@dataclass
class _Reply:
    """What every chunk and the completion of one answer share, and its usage."""

    id: str
    created: int
    model: str
    text: str  # the routed message: a specialist's input, for the estimate
    max_tokens: int  # the fallback's limit for this call: reaching it is finish_reason "length"
    pricing: PricingConfig  # its chars-per-token rule, the one cost estimates use

    def usage(self, result: RouteResult) -> Usage:
        """The fallback's own counts when it answered and reported them; else estimated from characters."""
        details = result.details
        if isinstance(details, FallbackOutput):
            if details.input_tokens is not None and details.output_tokens is not None:
                return _usage(details.input_tokens, details.output_tokens, estimated=False)
            chars_in, chars_out = details.input_chars, details.output_chars
        else:
            chars_in, chars_out = len(self.text), len(result.output)
        tokens = self.pricing.tokens
        return _usage(math.ceil(tokens(chars_in)), math.ceil(tokens(chars_out)), estimated=True)

    def finish_reason(self, result: RouteResult, usage: Usage) -> Literal["stop", "length"]:
        fallback = result.action == "fallback" and not usage.estimated
        return "length" if fallback and usage.completion_tokens >= self.max_tokens else "stop"

    def completion(self, result: RouteResult) -> ChatCompletion:
        usage = self.usage(result)
        choice = ChatChoice(
            message=AssistantMessage(content=result.output), finish_reason=self.finish_reason(result, usage)
        )
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[choice],
            usage=usage,
            slm_router=_routing(result),
        )

    def chunk(self, choices: list[ChunkChoice], **fields: Any) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=choices, **fields
        )

    def event(
        self,
        delta: dict[str, str],
        finish: Literal["stop", "length"] | None = None,
        result: RouteResult | None = None,
    ) -> dict[str, str]:
        chunk = self.chunk(
            [ChunkChoice(delta=delta, finish_reason=finish)],
            slm_router=_routing(result) if result is not None else None,
        )
        return {"data": chunk.model_dump_json(exclude={"slm_router"} if result is None else None)}


def _usage(prompt_tokens: int, completion_tokens: int, estimated: bool) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        estimated=estimated,
    )


def _routing(result: RouteResult) -> RoutingInfo:
    return RoutingInfo(**result.model_dump(include=set(RoutingInfo.model_fields)))
