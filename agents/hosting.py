"""Where agents run. `LocalPool` keeps them in-process; the controller only sees `AgentPool`."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Protocol

from agents.base import Agent, AgentError, AgentInput, AgentResult


class AgentPool(Protocol):
    """What the controller needs from a set of hosted agents. `run` is called from many threads at once."""

    def names(self) -> list[str]: ...

    def run(self, name: str, items: list[AgentInput]) -> list[AgentResult]:
        """Results in input order; raises AgentError for an unknown agent, a crash or a timeout."""
        ...

    def queue_depth(self) -> dict[str, int]:
        """Items waiting or in flight per agent (a backlog gauge)."""
        ...

    def health(self) -> dict[str, bool]:
        """Per agent: can it serve a request now."""
        ...

    def close(self) -> None: ...


def predict_groups(agent: Agent, groups: list[list[AgentInput]]) -> list[list[AgentResult] | Exception]:
    """Run several callers' items as one batch; if it fails, retry caller by caller.

    One poisoned request must not fail the neighbours it happened to be batched with, so a failed merged
    batch is re-run per group and each group gets its own results or its own exception.
    """
    if len(groups) > 1:
        try:
            results = _checked_predict(agent, [item for group in groups for item in group])
        except Exception:
            pass  # fall through to the retry group by group
        else:
            split: list[list[AgentResult] | Exception] = []
            start = 0
            for group in groups:
                split.append(results[start : start + len(group)])
                start += len(group)
            return split
    outcomes: list[list[AgentResult] | Exception] = []
    for group in groups:
        try:
            outcomes.append(_checked_predict(agent, group))
        except Exception as exc:  # a specialist bug is reported to its caller, never to the batcher
            outcomes.append(exc)
    return outcomes


def _checked_predict(agent: Agent, items: list[AgentInput]) -> list[AgentResult]:
    results = agent.predict_batch(items)
    if len(results) != len(items):
        raise AgentError(agent.name, f"returned {len(results)} results for {len(items)} inputs")
    return results


def failure_message(exc: Exception) -> str:
    """What a caller is told: an AgentError's own words, anything else reported as a crash."""
    if isinstance(exc, AgentError):
        return str(exc).removeprefix(f"agent {exc.agent!r}: ")
    return f"crashed: {type(exc).__name__}: {exc}"


@dataclass
class _Request:
    items: list[AgentInput]
    future: Future[list[AgentResult]] = field(default_factory=Future)


class _Batcher:
    """One agent's micro-batcher: a thread merging concurrent requests into one `predict_batch` call.

    A batch closes when it holds `max_batch_size` items or `wait_s` after its first request (0: take only
    what is already queued). A request is never split, so one larger than `max_batch_size` runs alone.

    A hung agent cannot be interrupted (Python threads cannot be killed): the thread stays inside that
    call, its callers and those queued behind it time out on their own, `stuck` turns True (health), and
    when the call returns the thread skips the requests whose callers have already given up.
    """

    def __init__(self, agent: Agent, max_batch_size: int, wait_s: float, timeout_s: float) -> None:
        self.agent = agent
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.timeout_s = timeout_s
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._held: _Request | None = None  # the request that did not fit in the previous batch
        self._lock = threading.Lock()
        self._pending = 0
        self._busy_since: float | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"slm-batcher-{agent.name}", daemon=True)
        self._thread.start()

    def submit(self, items: list[AgentInput]) -> Future[list[AgentResult]]:
        request = _Request(items)
        with self._lock:
            if self._closed:
                raise AgentError(self.agent.name, "pool is closed")
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
                outcomes = predict_groups(self.agent, [r.items for r in live]) if live else []
            finally:
                self._busy_since = None
            for request, outcome in zip(live, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(outcome)
            with self._lock:
                self._pending -= sum(len(r.items) for r in batch)

    def _collect(self) -> list[_Request] | None:
        """The next batch, or None once the pool is closed and everything queued before that has run."""
        first = self._held or self._queue.get()
        self._held = None
        if first is None:
            return None
        batch, size = [first], len(first.items)
        deadline = time.monotonic() + self.wait_s
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
        return batch


class LocalPool:
    """Agents in this process, each behind a micro-batcher so concurrent requests share model calls."""

    def __init__(
        self,
        agents: dict[str, Agent],
        timeout_s: float = 30.0,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.002,
    ) -> None:
        self.timeout_s = timeout_s
        self._batchers = {
            name: _Batcher(agent, max_batch_size, batch_wait_timeout_s, timeout_s)
            for name, agent in agents.items()
        }

    def names(self) -> list[str]:
        return sorted(self._batchers)

    def run(self, name: str, items: list[AgentInput]) -> list[AgentResult]:
        batcher = self._batchers.get(name)
        if batcher is None:
            raise AgentError(name, f"no such agent; this pool hosts {self.names()}")
        if not items:
            return []
        future = batcher.submit(items)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            future.cancel()  # if still queued, the batcher skips it
            raise AgentError(name, f"timed out after {self.timeout_s:g} s") from None
        except AgentError:
            raise
        except Exception as exc:
            raise AgentError(name, failure_message(exc)) from exc

    def queue_depth(self) -> dict[str, int]:
        return {name: b.pending for name, b in self._batchers.items()}

    def health(self) -> dict[str, bool]:
        return {name: b.alive and not b.stuck for name, b in self._batchers.items()}

    def close(self) -> None:
        """Stops the batchers: new requests are refused, those already queued still run."""
        for batcher in self._batchers.values():
            batcher.close()
