"""Where agents run. `LocalPool` keeps them in-process; the controller only sees `AgentPool.run`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Protocol

from agents.base import Agent, AgentError, AgentInput, AgentResult


class AgentPool(Protocol):
    def names(self) -> list[str]: ...

    def run(self, name: str, items: list[AgentInput]) -> list[AgentResult]: ...


class LocalPool:
    """Agents in this process. Each call runs on a worker thread so a hung agent times out, not the router."""

    def __init__(self, agents: dict[str, Agent], timeout_s: float = 30.0, workers: int = 4) -> None:
        self.agents = agents
        self.timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slm-agent")

    def names(self) -> list[str]:
        return sorted(self.agents)

    def run(self, name: str, items: list[AgentInput]) -> list[AgentResult]:
        agent = self.agents.get(name)
        if agent is None:
            raise AgentError(name, f"no such agent; this pool hosts {self.names()}")
        future = self._executor.submit(agent.predict_batch, items)
        try:
            results = future.result(timeout=self.timeout_s)
        except FutureTimeout:
            future.cancel()
            raise AgentError(name, f"timed out after {self.timeout_s:g} s") from None
        except AgentError:
            raise
        except Exception as exc:  # a specialist bug must not take the router down
            raise AgentError(name, f"crashed: {type(exc).__name__}: {exc}") from exc
        if len(results) != len(items):
            raise AgentError(name, f"returned {len(results)} results for {len(items)} inputs")
        return results

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
