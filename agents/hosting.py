"""Where agents run. `LocalPool` keeps them in-process; the controller only sees `AgentPool`."""

from __future__ import annotations

from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from typing import Protocol

from agents.base import Agent, AgentError, AgentInput, AgentResult
from agents.batching import MicroBatcher


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
        self._batchers: dict[str, MicroBatcher[AgentInput, AgentResult]] = {
            name: MicroBatcher(
                name, partial(predict_groups, agent), max_batch_size, batch_wait_timeout_s, timeout_s
            )
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
