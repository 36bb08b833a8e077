"""The fallback's circuit breaker: stop calling a provider that keeps failing, and probe it to recover."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from slm_router.agents.fallback.unavailable import FallbackUnavailable

log = logging.getLogger(__name__)


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
