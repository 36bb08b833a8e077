"""The fallback's bulkhead: its own bounded threads, so a slow fallback never takes the specialists'."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from slm_router.agents.fallback.unavailable import FallbackUnavailable


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
