"""Bounded admission: a request is served now, waits briefly in a bounded queue, or is refused at once.

Without it a service past capacity queues without bound: every request gets slower until clients time out
and their abandoned requests keep the workers busy (measured: at 2x capacity, 1,188 of 2,160 requests lost
to 60 s client timeouts, none refused). With it, overflow gets an immediate 429 and a `Retry-After`, and
accepted requests keep a bounded latency.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from slm_router.router.errors import OverloadedError


class Admission:
    """At most `max_in_flight` units of work at once and `max_queue` waiting, each for `queue_timeout_s`.

    A unit is one routed message: a batch of n messages takes n units (at most `max_in_flight`).
    """

    def __init__(self, max_in_flight: int, max_queue: int, queue_timeout_s: float) -> None:
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.in_flight = 0
        self.waiting = 0
        self._changed = asyncio.Condition()
        self._mean_s = 0.5  # running mean of service time, for an honest Retry-After
        self._tasks: set[asyncio.Task[None]] = set()

    def retry_after_s(self) -> int:
        """Seconds until a slot is likely free: the queue ahead, served `max_in_flight` at a time."""
        rounds = (self.waiting + 1) / self.max_in_flight
        return max(1, math.ceil(rounds * self._mean_s))

    @asynccontextmanager
    async def slot(self, units: int = 1) -> AsyncIterator[Callable[[], None]]:
        """Hold `units` until the block ends; it yields `release`, to give them back early (idempotent)."""
        units = min(max(units, 1), self.max_in_flight)
        await self._acquire(units)
        start = time.monotonic()
        loop = asyncio.get_running_loop()
        held = True

        def free() -> None:
            nonlocal held
            if held:
                held = False
                self.in_flight -= units
                self._mean_s = 0.9 * self._mean_s + 0.1 * (time.monotonic() - start)
                task = loop.create_task(self._notify())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        def release() -> None:
            """Callable from any thread (graph nodes run on worker threads)."""
            loop.call_soon_threadsafe(free)

        try:
            yield release
        finally:
            free()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _acquire(self, units: int) -> None:
        async with self._changed:
            if self.waiting == 0 and self.in_flight + units <= self.max_in_flight:
                self.in_flight += units
                return
            if self.waiting >= self.max_queue:
                raise OverloadedError(
                    f"server busy: {self.in_flight} in flight and {self.waiting} waiting "
                    f"(server.max_in_flight {self.max_in_flight}, server.max_queue {self.max_queue})",
                    retry_after_s=self.retry_after_s(),
                    status=429,
                    reason="queue_full",
                )
            self.waiting += 1
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.in_flight + units <= self.max_in_flight),
                    self.queue_timeout_s,
                )
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                raise OverloadedError(
                    f"server busy: no slot within {self.queue_timeout_s:g} s (server.queue_timeout_s)",
                    retry_after_s=self.retry_after_s(),
                    status=503,
                    reason="queue_timeout",
                ) from None
            finally:
                self.waiting -= 1
            self.in_flight += units
