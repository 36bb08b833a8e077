"""Where agents run. `LocalPool` keeps them in-process; the controller only sees `AgentPool`."""

from __future__ import annotations

from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from typing import Protocol

from slm_router.agents.base import Agent, AgentError, AgentInput, AgentResult, AgentTimeout
from slm_router.agents.hosting.batching import MicroBatcher, run_isolated


class AgentPool(Protocol):
    """What the controller needs from a set of hosted agents. `run` is called from many threads at once."""

    def names(self) -> list[str]: ...

    def run(self, name: str, items: list[AgentInput], timeout_s: float | None = None) -> list[AgentResult]:
        """Results in input order; raises AgentError for an unknown agent, a crash or a timeout, and
        AgentOverloaded (an AgentError) at once when the agent's queue is full.

        `timeout_s` shortens the pool's own timeout for this call (e.g. to a request deadline); None
        keeps it.
        """
        ...

    def queue_depth(self) -> dict[str, int]:
        """Items waiting or in flight per agent (a backlog gauge)."""
        ...

    def health(self) -> dict[str, bool]:
        """Per agent: can it serve a request now."""
        ...

    def close(self) -> None: ...


def predict_groups(agent: Agent, groups: list[list[AgentInput]]) -> list[list[AgentResult] | Exception]:
    """Several callers' items as one batch; a poisoned request fails alone (see `run_isolated`)."""
    return run_isolated(partial(_checked_predict, agent), groups)


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


class LocalPool:
    """Agents in this process, each behind a micro-batcher so concurrent requests share model calls."""

    def __init__(
        self,
        agents: dict[str, Agent],
        timeout_s: float = 30.0,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.002,
        max_pending: int | None = 256,
    ) -> None:
        """`max_pending`: most items waiting or in flight per agent; more are refused (AgentOverloaded)."""
        self.timeout_s = timeout_s
        self._batchers: dict[str, MicroBatcher[AgentInput, AgentResult]] = {
            name: MicroBatcher(
                name,
                partial(predict_groups, agent),
                max_batch_size,
                batch_wait_timeout_s,
                timeout_s,
                max_pending=max_pending,
            )
            for name, agent in agents.items()
        }

    def names(self) -> list[str]:
        return sorted(self._batchers)

    def run(self, name: str, items: list[AgentInput], timeout_s: float | None = None) -> list[AgentResult]:
        batcher = self._batchers.get(name)
        if batcher is None:
            raise AgentError(name, f"no such agent; this pool hosts {self.names()}")
        if not items:
            return []
        limit = self.timeout_s if timeout_s is None else max(min(timeout_s, self.timeout_s), 0.0)
        future = batcher.submit(items)  # AgentOverloaded when the agent's backlog is full
        try:
            return future.result(timeout=limit)
        except FutureTimeout:
            future.cancel()  # if still queued, the batcher skips it
            raise AgentTimeout(name, f"timed out after {limit:g} s") from None
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
