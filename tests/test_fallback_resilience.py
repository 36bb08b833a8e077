"""The fallback's circuit breaker, bulkhead and provider-error reading on their own: a fake clock, plain
functions, no chat model, so each state change is checked exactly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from slm_router.agents.base import AgentError
from slm_router.agents.fallback import FallbackUnavailable
from slm_router.agents.fallback.breaker import CircuitBreaker
from slm_router.agents.fallback.bulkhead import Bulkhead
from slm_router.agents.fallback.provider_errors import (
    ContextTooLong,
    describe_error,
    is_timeout,
    is_transient,
    provider_healthy,
)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _refused(call: Callable[[], object]) -> FallbackUnavailable:
    with pytest.raises(FallbackUnavailable) as caught:
        call()
    return caught.value


def _settled(bulkhead: Bulkhead) -> tuple[int, int]:
    """Its counts once done-callbacks ran (a future's waiters can wake just before they do)."""
    until = time.monotonic() + 5
    while bulkhead.counts() != (0, 0) and time.monotonic() < until:
        time.sleep(0.01)
    return bulkhead.counts()


def test_breaker_opens_after_consecutive_failures_only() -> None:
    clock = _Clock()
    breaker = CircuitBreaker(failures=2, cooldown_s=10.0, clock=clock)
    assert breaker.acquire(1.0) is False
    breaker.failure(False, "boom 1")
    breaker.success(False)  # a success in between resets the count
    breaker.failure(False, "boom 2")
    assert breaker.snapshot() == ("closed", 1, None)
    breaker.failure(False, "boom 3")
    assert breaker.snapshot() == ("open", 2, 10.0)
    assert breaker.retry_after() == 10.0
    refusal = _refused(breaker.check)
    assert refusal.cause == "breaker_open" and refusal.retry_after_s == 10.0 and "boom 3" in str(refusal)
    assert breaker.last_error == "boom 3"


def test_half_open_admits_one_probe_whose_verdict_decides() -> None:
    clock = _Clock()
    breaker = CircuitBreaker(failures=1, cooldown_s=10.0, clock=clock)
    breaker.failure(False, "down")
    clock.now += 10.0
    assert breaker.snapshot() == ("half_open", 1, 0.0)
    assert breaker.acquire(4.0) is True
    assert _refused(lambda: breaker.acquire(4.0)).retry_after_s == 4.0  # the probe is out
    breaker.release(True)  # it never reached the provider: no verdict, the next call probes
    assert breaker.acquire(4.0) is True
    breaker.failure(True, "still down")
    assert breaker.snapshot() == ("open", 2, 10.0)
    clock.now += 10.0
    assert breaker.acquire(4.0) is True
    breaker.success(True)
    assert breaker.snapshot() == ("closed", 0, None)
    assert breaker.acquire(4.0) is False


def test_bulkhead_refuses_beyond_slots_and_waiting_room() -> None:
    bulkhead = Bulkhead(slots=1, waiting=1)
    started, release = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        release.wait(10)
        return "done"

    try:
        running = bulkhead.submit(hold)
        assert started.wait(10)
        queued = bulkhead.submit(str, "queued")
        assert bulkhead.counts() == (1, 1)
        refusal = _refused(bulkhead.check)
        assert refusal.cause == "bulkhead_full" and refusal.retry_after_s == 1.0
        assert _refused(lambda: bulkhead.submit(str, "third")).cause == "bulkhead_full"
        release.set()
        assert running.result(10) == "done" and queued.result(10) == "queued"
        assert _settled(bulkhead) == (0, 0)
        bulkhead.check()  # room again
    finally:
        release.set()
        bulkhead.close()
    closed = _refused(lambda: bulkhead.submit(str, "late"))
    assert closed.cause == "error" and "closed" in str(closed)
    assert bulkhead.counts() == (0, 0)


class _StatusError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


class _Response:
    status_code = 429


class _ResponseError(Exception):
    response = _Response()


APITimeoutError = type("APITimeoutError", (Exception,), {})  # named as openai's, matched by name
RateLimitError = type("RateLimitError", (Exception,), {})


@pytest.mark.parametrize(
    ("exc", "transient", "timeout", "healthy"),
    [
        (_StatusError(503), True, False, False),
        (_StatusError(408), True, False, False),
        (_StatusError(401), False, False, False),
        (_StatusError(400), False, False, True),
        (_StatusError(422), False, False, True),
        (_ResponseError(), True, False, False),
        (APITimeoutError(), True, True, False),
        (RateLimitError(), True, False, False),
        (ConnectionRefusedError(), True, False, False),  # a ConnectionError by inheritance
        (TimeoutError(), True, True, False),
        (ContextTooLong("exceeds context window"), False, False, True),
        (AgentError("fallback", "GGUF file not found"), False, False, False),
        (ValueError("bad"), False, False, False),
    ],
)
def test_provider_errors_are_read_by_status_and_name(
    exc: BaseException, transient: bool, timeout: bool, healthy: bool
) -> None:
    assert (is_transient(exc), is_timeout(exc), provider_healthy(exc)) == (transient, timeout, healthy)


def test_describe_error_names_the_type_and_is_bounded() -> None:
    assert describe_error(ValueError("bad input")) == "ValueError: bad input"
    assert len(describe_error(RuntimeError("x" * 1000))) == 300
