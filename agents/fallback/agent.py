"""The fallback agent: a bounded, retried, breaker-guarded call to the chat model, with PII redacted."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import tenacity
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable
from pydantic import BaseModel

from slm_router.agents.base import AgentError, AgentResult, FallbackOutput
from slm_router.agents.fallback.breaker import CircuitBreaker
from slm_router.agents.fallback.bulkhead import Bulkhead
from slm_router.agents.fallback.chat_models import LlamaCppChatModel
from slm_router.agents.fallback.control_tokens import strip_control_tokens
from slm_router.agents.fallback.provider_errors import (
    describe_error,
    is_timeout,
    is_transient,
    provider_healthy,
)
from slm_router.agents.fallback.settings import FallbackSettings
from slm_router.agents.fallback.streaming import TextStream
from slm_router.agents.fallback.unavailable import Cause, FallbackUnavailable
from slm_router.agents.redaction import Redactor

log = logging.getLogger(__name__)

# A retry is not started with less time than this left before the caller's deadline.
_MIN_ATTEMPT_S = 0.05
# What the chat template adds around each message (ChatML: "<|im_start|>role\n" ... "<|im_end|>\n").
_TOKENS_PER_MESSAGE = 8


class FallbackStatus(BaseModel):
    """The fallback's health, for readiness checks and metrics."""

    breaker: Literal["closed", "open", "half_open"]
    consecutive_failures: int
    retry_after_s: float | None
    in_flight: int
    waiting: int
    last_error: str | None


class Sampling(TypedDict, total=False):
    """Generation settings for one call (an OpenAI client's), bound to the chat model for that call only;
    unset keys keep the policy's (`fallback.max_tokens`, `fallback.temperature`)."""

    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]


@dataclass(frozen=True)
class CallOptions:
    """What one caller asks of the fallback beyond the message.

    `instructions`: the caller's own system text (a chat client's system messages), sent after the
    policy's system prompt and redacted like the rest. `on_text`: stream the answer, handing each piece of
    its text (PII restored) to this function on the caller's event loop as it is generated. `headers`: HTTP
    headers for the provider's request (the router sets the request's W3C trace context), sent by chat
    models that take per-call headers (OpenAI-compatible ones); others have no request to put them on.
    """

    sampling: Sampling = field(default_factory=lambda: Sampling())
    instructions: str | None = None
    on_text: Callable[[str], None] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


CALL_OPTIONS = "fallback_options"
"""The `configurable` key under which a graph run carries `CallOptions` to the fallback node."""


@dataclass
class _Prepared:
    messages: list[BaseMessage]
    mapping: dict[str, str] | None  # None: not redacted
    redactions: int


@dataclass
class _Attempt:
    future: concurrent.futures.Future[Any]
    probe: bool
    budget_s: float
    by_deadline: bool  # the budget is what was left before the caller's deadline, less than timeout_s
    stream: TextStream | None = None


class FallbackAgent:
    """Asks the chat model; with a redactor, PII is replaced before the call and restored after.

    Calls run on the agent's bulkhead (`settings.max_concurrency` threads, `max_waiting` more may wait);
    the caller waits at most `timeout_s` per attempt and never past its `deadline`, even when the provider
    (in-process llama.cpp, say) is still busy: its slot stays taken until the provider returns. Transient
    failures (connection, timeout raised by the client, 5xx, 429) are retried up to `retries` times; an
    attempt the caller stopped waiting for is not (the provider is still busy with it). Timeouts and errors
    count against the circuit breaker; an attempt cut short by the caller's deadline counts only when the
    provider's own answer comes (a short deadline is no fault of the provider).
    """

    name = "fallback"

    def __init__(
        self,
        chat_model: BaseChatModel,
        label: str,
        system_prompt: str,
        redactor: Redactor | None = None,
        settings: FallbackSettings | None = None,
    ) -> None:
        self.chat_model = chat_model
        self.label = label
        self.system_prompt = system_prompt
        self.redactor = redactor
        self.settings = settings or FallbackSettings()
        self._breaker = CircuitBreaker(self.settings.breaker_failures, self.settings.breaker_cooldown_s)
        self._bulkhead = Bulkhead(self.settings.max_concurrency, self.settings.max_waiting)

    # --- the public API ---

    def answer(
        self,
        text: str,
        task_prompt: str | None = None,
        history: list[tuple[str, str]] | None = None,
        deadline: float | None = None,
        options: CallOptions | None = None,
    ) -> AgentResult:
        """`history`: earlier (user, assistant) turns of the conversation, oldest first. `deadline`: a
        `time.monotonic()` value the call never runs past. `options`: sampling and instructions (streaming
        needs `aanswer`). Raises FallbackUnavailable when it cannot."""
        options = options or CallOptions()
        self._admit(deadline)
        prepared = self._prepare(text, task_prompt, history, options)
        retrying = tenacity.Retrying(**self._retry_args(deadline))
        model = self._bound(options)
        try:
            reply: BaseMessage = retrying(self._attempt, model, prepared.messages, deadline)
        except AgentError:
            raise
        except Exception as exc:  # providers raise their own types: connection, timeout, auth
            raise self._unavailable(exc) from exc
        return self._result(prepared, reply)

    async def aanswer(
        self,
        text: str,
        task_prompt: str | None = None,
        history: list[tuple[str, str]] | None = None,
        deadline: float | None = None,
        options: CallOptions | None = None,
    ) -> AgentResult:
        """`answer` for an event loop: awaits the bulkhead's thread without blocking the loop or using its
        default executor for the provider call (only the redaction, which is short, runs there).

        With `options.on_text` the chat model's stream is read on the bulkhead's thread and its text handed
        over as it comes; a failure before any text went out is retried as usual, one after is not (the
        caller already holds part of the answer)."""
        options = options or CallOptions()
        self._admit(deadline)
        if self.redactor is not None:  # spaCy: CPU work the loop should not wait on
            prepared = await asyncio.to_thread(self._prepare, text, task_prompt, history, options)
        else:
            prepared = self._prepare(text, task_prompt, history, options)
        streams: list[TextStream] = []
        on_text = options.on_text
        if on_text is not None:
            loop = asyncio.get_running_loop()

            def stream() -> TextStream:
                streams.append(TextStream(on_text, prepared.mapping, loop))
                return streams[-1]

        def streamed() -> bool:
            return any(s.emitted for s in streams)

        retrying = tenacity.AsyncRetrying(**self._retry_args(deadline, streamed))
        model = self._bound(options)
        try:
            reply: BaseMessage = await retrying(
                self._aattempt, model, prepared.messages, deadline, stream if on_text else None
            )
        except AgentError:
            raise
        except Exception as exc:
            raise self._unavailable(exc) from exc
        return self._result(prepared, reply)

    def status(self) -> FallbackStatus:
        state, failures, retry_after = self._breaker.snapshot()
        in_flight, waiting = self._bulkhead.counts()
        return FallbackStatus(
            breaker=state,
            consecutive_failures=failures,
            retry_after_s=retry_after,
            in_flight=in_flight,
            waiting=waiting,
            last_error=self._breaker.last_error,
        )

    def close(self) -> None:
        """Stop the bulkhead: waiting calls are cancelled, hung ones are not waited for."""
        self._bulkhead.close()

    # --- one call ---

    def _admit(self, deadline: float | None) -> None:
        """Refuse at once, before any work, what would be refused anyway."""
        if deadline is not None and deadline - time.monotonic() <= 0:
            raise FallbackUnavailable(
                "deadline", "the request's deadline passed before the fallback was asked"
            )
        self._breaker.check()
        self._bulkhead.check()

    def _bound(self, options: CallOptions) -> Runnable[LanguageModelInput, BaseMessage]:
        """The chat model with this call's sampling settings (and headers, where it takes them) bound, for
        this call only."""
        settings: dict[str, Any] = dict(options.sampling)
        if options.headers and _takes_headers(self.chat_model):
            settings["extra_headers"] = dict(options.headers)
        return self.chat_model.bind(**settings) if settings else self.chat_model

    def _retry_args(
        self, deadline: float | None, streamed: Callable[[], bool] = lambda: False
    ) -> dict[str, Any]:
        backoff = self.settings.retry_backoff_s
        grow = tenacity.wait_exponential(
            multiplier=backoff, max=self.settings.timeout_s
        ) + tenacity.wait_random(0, backoff)

        def wait(state: tenacity.RetryCallState) -> float:
            delay = float(grow(state))
            if deadline is not None:
                delay = min(delay, max(deadline - time.monotonic() - _MIN_ATTEMPT_S, 0.0))
            return delay

        def out_of_time(state: tenacity.RetryCallState) -> bool:
            return deadline is not None and deadline - time.monotonic() <= _MIN_ATTEMPT_S

        attempts = tenacity.stop_after_attempt(self.settings.retries + 1)
        return {
            "stop": lambda state: attempts(state) or out_of_time(state),
            "wait": wait,
            "retry": tenacity.retry_if_exception(lambda exc: is_transient(exc) and not streamed()),
            "reraise": True,
        }

    def _start(
        self,
        model: Runnable[LanguageModelInput, BaseMessage],
        messages: list[BaseMessage],
        deadline: float | None,
        stream: TextStream | None = None,
    ) -> _Attempt:
        budget, by_deadline = self.settings.timeout_s, False
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FallbackUnavailable(
                    "deadline", "the request's deadline came before the fallback answered"
                )
            if left < budget:
                budget, by_deadline = left, True
        probe = self._breaker.acquire(budget)
        try:
            if stream is None:
                future = self._bulkhead.submit(model.invoke, messages)
            else:
                future = self._bulkhead.submit(stream.collect, model, messages)
        except BaseException:
            self._breaker.release(probe)
            raise
        return _Attempt(future, probe, budget, by_deadline, stream)

    def _attempt(
        self,
        model: Runnable[LanguageModelInput, BaseMessage],
        messages: list[BaseMessage],
        deadline: float | None,
    ) -> BaseMessage:
        attempt = self._start(model, messages, deadline)
        concurrent.futures.wait([attempt.future], timeout=attempt.budget_s)
        return self._outcome(attempt)

    async def _aattempt(
        self,
        model: Runnable[LanguageModelInput, BaseMessage],
        messages: list[BaseMessage],
        deadline: float | None,
        stream: Callable[[], TextStream] | None = None,
    ) -> BaseMessage:
        attempt = self._start(model, messages, deadline, stream() if stream else None)
        waited = asyncio.wrap_future(attempt.future)
        try:
            await asyncio.wait({waited}, timeout=attempt.budget_s)
        except asyncio.CancelledError:  # the caller gave up (client gone): no verdict from us
            self._abandon(attempt)
            raise
        finally:
            if not waited.done():
                waited.cancel()
                if attempt.stream is not None:  # no more text from an attempt nobody waits for
                    attempt.stream.stop()
            elif not waited.cancelled():
                waited.exception()  # read from attempt.future below; marked seen for asyncio
        return self._outcome(attempt)

    def _outcome(self, attempt: _Attempt) -> BaseMessage:
        """The attempt's reply, or its failure raised, with the breaker told which."""
        future = attempt.future
        if not future.done():
            raise self._timed_out(attempt)
        if future.cancelled():  # close() cancelled it while it waited
            self._breaker.release(attempt.probe)
            raise FallbackUnavailable("error", "the fallback is closed")
        exc = future.exception()
        self._verdict(attempt.probe, exc)
        if exc is not None:
            raise exc
        reply: BaseMessage = future.result()
        return reply

    def _verdict(self, probe: bool, exc: BaseException | None) -> None:
        if exc is None or provider_healthy(exc):
            self._breaker.success(probe)
        else:
            self._breaker.failure(probe, describe_error(exc))

    def _abandon(self, attempt: _Attempt) -> bool:
        """Stop waiting without blaming the provider: True when the call had not started (now cancelled);
        otherwise the provider's own outcome, when it comes, is the breaker's verdict."""
        if attempt.future.cancel():
            self._breaker.release(attempt.probe)
            return True

        def late(future: concurrent.futures.Future[Any]) -> None:
            if future.cancelled():
                self._breaker.release(attempt.probe)
            else:
                self._verdict(attempt.probe, future.exception())

        attempt.future.add_done_callback(late)
        return False

    def _timed_out(self, attempt: _Attempt) -> FallbackUnavailable:
        budget = attempt.budget_s
        if attempt.by_deadline:
            queued = self._abandon(attempt)
            where = "waiting for a free slot" if queued else f"before {self.label} answered"
            return FallbackUnavailable("deadline", f"the request's deadline came {where} ({budget:.2f} s)")
        if attempt.future.cancel():  # never got a slot: the fallback is saturated, not failing
            self._breaker.release(attempt.probe)
            in_flight, _ = self._bulkhead.counts()
            return FallbackUnavailable(
                "bulkhead_full",
                f"no fallback slot came free within {budget:g} s ({in_flight} calls in flight)",
                retry_after_s=1.0,
            )
        self._breaker.failure(attempt.probe, f"timed out after {budget:g} s")
        return FallbackUnavailable(
            "timeout", f"{self.label} did not answer within {budget:g} s", self._breaker.retry_after()
        )

    def _unavailable(self, exc: Exception) -> FallbackUnavailable:
        cause: Cause = "timeout" if is_timeout(exc) else "error"
        return FallbackUnavailable(
            cause, f"{self.label} failed: {describe_error(exc)}", retry_after_s=self._breaker.retry_after()
        )

    # --- messages in, result out ---

    def _prepare(
        self,
        text: str,
        task_prompt: str | None,
        history: list[tuple[str, str]] | None,
        options: CallOptions | None = None,
    ) -> _Prepared:
        """The messages sent: the system prompt (the policy's, the route's task, then the caller's own
        instructions), the earlier turns and the message, all redacted together (one placeholder per
        value across the conversation)."""
        instructions = strip_control_tokens(options.instructions) if options and options.instructions else ""
        turns = [strip_control_tokens(part) for pair in history or [] for part in pair]
        turns.append(strip_control_tokens(text))
        mapping: dict[str, str] | None = None
        count = 0
        if self.redactor is not None:
            redaction = self.redactor.redact_turns([*turns, instructions] if instructions else turns)
            turns, mapping, count = redaction.texts, redaction.mapping, redaction.count
            if instructions:
                instructions = turns.pop()
        system = "\n".join(part for part in (self.system_prompt, task_prompt, instructions) if part)
        messages: list[BaseMessage] = [SystemMessage(content=system)]
        messages += [
            (HumanMessage if i % 2 == 0 else AIMessage)(content=part) for i, part in enumerate(turns)
        ]
        max_tokens = options.sampling.get("max_tokens") if options else None
        return _Prepared(self._fit_context(messages, max_tokens), mapping, count)

    def _fit_context(self, messages: list[BaseMessage], max_tokens: int | None = None) -> list[BaseMessage]:
        """For the in-process model: drop the oldest (user, assistant) turns until the prompt leaves room
        for the answer (`max_tokens`, else the model's) in its context window; raise if the request alone
        cannot fit."""
        model = self.chat_model
        if not isinstance(model, LlamaCppChatModel):
            return messages  # a remote provider knows its own limits
        answer_tokens = max_tokens or model.max_tokens
        room = model.n_ctx - answer_tokens
        sizes = [model.count_tokens(str(m.content)) + _TOKENS_PER_MESSAGE for m in messages]
        total, first = sum(sizes), 1  # messages[first:-1] is the history kept
        while total > room and first < len(messages) - 1:
            total -= sizes[first] + sizes[first + 1]
            first += 2
        if total > room:
            raise FallbackUnavailable(
                "error",
                f"the request is too long for {self.label}: about {total} tokens with the system prompt, "
                f"and its context window leaves {room} (n_ctx {model.n_ctx} - max_tokens {answer_tokens})",
            )
        if first > 1:
            log.info("fallback: dropped the %d oldest turns to fit the context window", first - 1)
        return [messages[0], *messages[first:]]

    def _result(self, prepared: _Prepared, reply: BaseMessage) -> AgentResult:
        content = str(reply.content).strip()
        usage = getattr(reply, "usage_metadata", None) or {}
        sent_chars = sum(len(str(m.content)) for m in prepared.messages)
        if prepared.mapping is not None:
            content = Redactor.restore(content, prepared.mapping)
        return AgentResult(
            agent=self.name,
            output=content,
            confidence=1.0,
            details=FallbackOutput(
                model=self.label,
                redacted=prepared.mapping is not None,
                redactions=prepared.redactions,
                input_chars=sent_chars,
                output_chars=len(content),
                input_tokens=usage.get("input_tokens"),
                output_tokens=usage.get("output_tokens"),
            ),
        )


def _takes_headers(model: BaseChatModel) -> bool:
    """Whether a call's `extra_headers` reach an HTTP request: the OpenAI-compatible chat models
    (`langchain_openai`) hand them to the OpenAI SDK; other chat models would send them as a parameter."""
    return any(cls.__module__.startswith("langchain_openai.") for cls in type(model).__mro__)
