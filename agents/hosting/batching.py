"""Micro-batching: concurrent callers' items merged into one model call, each caller answered on its own.

Written out rather than taken from Ray Serve's `@serve.batch` (which the Ray backend does use): the local
backend must not need Ray, and here a failed merged call is retried caller by caller (`run_isolated`), a
full backlog is refused at once (`max_pending`) and a hung model call shows in health (`stuck`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from slm_router.agents.base import AgentError, AgentOverloaded

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Request(Generic[T, R]):
    items: list[T]
    future: Future[list[R]] = field(default_factory=Future)


class MicroBatcher(Generic[T, R]):
    """A thread merging concurrent requests into one call of `run_groups` (one agent, or the embedder).

    `run_groups` gets every caller's items as one group each and answers per group: results, or the
    exception for that caller alone.

    A batch closes when it holds `max_batch_size` items or `wait_s` after its first request (0: take only
    what is already queued); it waits only while the previous batch merged several callers, so a lone
    request at low traffic does not pay `wait_s`. A request is never split, so one larger than
    `max_batch_size` runs alone.

    A hung agent cannot be interrupted (Python threads cannot be killed): the thread stays inside that
    call, its callers and those queued behind it time out on their own, `stuck` turns True (health), and
    when the call returns the thread skips the requests whose callers have already given up.

    `max_pending` bounds the backlog: a request that would take the items waiting or in flight past it is
    refused at once with AgentOverloaded (an idle batcher still takes a request of any size). None: no
    bound.
    """

    def __init__(
        self,
        name: str,
        run_groups: Callable[[list[list[T]]], list[list[R] | Exception]],
        max_batch_size: int,
        wait_s: float,
        timeout_s: float,
        max_pending: int | None = None,
    ) -> None:
        self.name = name
        self.max_pending = max_pending
        self.run_groups = run_groups
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.timeout_s = timeout_s
        self._queue: queue.SimpleQueue[_Request[T, R] | None] = queue.SimpleQueue()
        self._held: _Request[T, R] | None = None  # the request that did not fit in the previous batch
        self._last_batch = 1
        self._lock = threading.Lock()
        self._pending = 0
        self._busy_since: float | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"slm-batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, items: list[T]) -> Future[list[R]]:
        request: _Request[T, R] = _Request(items)
        with self._lock:
            if self._closed:
                raise AgentError(self.name, "pool is closed")
            limit = self.max_pending
            if limit is not None and self._pending and self._pending + len(items) > limit:
                raise AgentOverloaded(
                    self.name, f"overloaded: {self._pending} items pending (max_pending {limit})"
                )
            self._pending += len(items)
            self._queue.put(request)  # under the lock, so nothing is queued after close()'s sentinel
        return request.future

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def stuck(self) -> bool:
        since = self._busy_since
        return since is not None and time.monotonic() - since > self.timeout_s

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def close(self) -> None:
        """Refuse new requests; the thread ends once it has run those already queued."""
        with self._lock:
            self._closed = True
            self._queue.put(None)

    def _loop(self) -> None:
        while (batch := self._collect()) is not None:
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            self._busy_since = time.monotonic()
            try:
                outcomes = self.run_groups([r.items for r in live]) if live else []
            finally:
                self._busy_since = None
            for request, outcome in zip(live, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(outcome)
            with self._lock:
                self._pending -= sum(len(r.items) for r in batch)

    def _collect(self) -> list[_Request[T, R]] | None:
        """The next batch, or None once the pool is closed and everything queued before that has run."""
        first = self._held or self._queue.get()
        self._held = None
        if first is None:
            return None
        batch, size = [first], len(first.items)
        # Adaptive: wait for company only while there is load (the last batch merged several callers);
        # a lone request at low traffic goes straight through instead of paying `wait_s`.
        deadline = time.monotonic() + (self.wait_s if self._last_batch > 1 else 0.0)
        while size < self.max_batch_size:
            try:
                remaining = deadline - time.monotonic()
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:  # closing: finish this batch, stop at the next _collect
                self._queue.put(None)
                break
            if size + len(nxt.items) > self.max_batch_size:
                self._held = nxt
                break
            batch.append(nxt)
            size += len(nxt.items)
        self._last_batch = len(batch)
        return batch


def run_isolated(run: Callable[[list[T]], list[R]], groups: list[list[T]]) -> list[list[R] | Exception]:
    """Run several callers' items as one call; if it fails, again caller by caller.

    One poisoned request must not fail the neighbours it happened to be batched with, so a failed merged
    call is re-run per group and each group gets its own results or its own exception.
    """
    if len(groups) > 1:
        try:
            merged = run([item for group in groups for item in group])
        except Exception:
            pass  # fall through to the retry group by group
        else:
            split: list[list[R] | Exception] = []
            start = 0
            for group in groups:
                split.append(merged[start : start + len(group)])
                start += len(group)
            return split
    outcomes: list[list[R] | Exception] = []
    for group in groups:
        try:
            outcomes.append(run(group))
        except Exception as exc:  # reported to that caller alone, never to the batcher
            outcomes.append(exc)
    return outcomes
