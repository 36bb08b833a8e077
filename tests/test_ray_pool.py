"""RayPool on a real local Ray cluster: the built-in agents as Serve deployments, failures as AgentError.

Ray Serve is imported inside fixtures and tests: collecting this file in the default run stays quiet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest
import ray

from slm_router.agents.base import AgentError, AgentInput, AgentResult
from slm_router.policies import Policy
from slm_router.policies.schema import DeploymentConfig, HostingConfig
from slm_router.router.compose import agent_factories

if TYPE_CHECKING:
    from slm_router.agents.hosting.ray_serve import RayPool

pytestmark = pytest.mark.ray

# Small replicas so the three built-ins and the test agent fit on two CPUs together.
HOSTING = HostingConfig(
    backend="ray",
    max_batch_size=8,
    batch_wait_timeout_s=0.01,
    deployments={name: DeploymentConfig(num_cpus=0.25) for name in ("sentiment", "extract", "translate")},
)


class FlakyAgent:
    """Test agent, built inside a replica (module level, so it pickles by reference)."""

    name = "flaky"

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        if any(item.text == "boom" for item in items):
            raise RuntimeError("model file corrupted")
        if any(item.text == "sleep" for item in items):
            time.sleep(2)
        note = f"batch of {len(items)}"
        return [AgentResult(agent=self.name, output=i.text, confidence=1.0, note=note) for i in items]


@pytest.fixture(scope="module")
def pool(ray_cluster: None, default_policy: Policy) -> Iterator[RayPool]:
    from slm_router.agents.hosting.ray_serve import RayPool

    started = time.monotonic()
    pool = RayPool(agent_factories(default_policy), HOSTING, timeout_s=60.0)
    print(f"3 agents deployed in {time.monotonic() - started:.1f} s")
    yield pool
    pool.close()


def test_extract_returns_the_order_id(pool: RayPool) -> None:
    [result] = pool.run("extract", [AgentInput(text="Order #A12345 never arrived, where is it?")])
    assert result.agent == "extract"
    assert "ORDER_ID: A12345" in result.output


def test_sentiment_and_translate(pool: RayPool) -> None:
    [sentiment] = pool.run("sentiment", [AgentInput(text="This is the worst service ever, I am furious.")])
    assert sentiment.output == "negative"
    [translation] = pool.run("translate", [AgentInput(text="Quero cancelar meu pedido.", language="pt")])
    assert "cancel" in translation.output.lower() and "order" in translation.output.lower()


def test_concurrent_calls_all_succeed(pool: RayPool) -> None:
    texts = [f"Order #B{10000 + i} is late" for i in range(8)]
    with ThreadPoolExecutor(8) as executor:
        results = list(executor.map(lambda t: pool.run("extract", [AgentInput(text=t)]), texts))
    assert [r[0].output for r in results] == [f"ORDER_ID: B{10000 + i}" for i in range(8)]
    assert pool.queue_depth() == {"sentiment": 0, "extract": 0, "translate": 0}


def test_health_and_unknown_agent(pool: RayPool) -> None:
    assert pool.names() == ["extract", "sentiment", "translate"]
    assert pool.health() == {"sentiment": True, "extract": True, "translate": True}
    with pytest.raises(AgentError, match="no such agent"):
        pool.run("nope", [AgentInput(text="x")])


@pytest.fixture(scope="module")
def flaky(ray_cluster: None) -> Iterator[RayPool]:
    from slm_router.agents.hosting.ray_serve import RayPool

    pool = RayPool({"flaky": FlakyAgent}, HostingConfig(batch_wait_timeout_s=0.05), timeout_s=1.0)
    yield pool
    pool.close()


def _concurrently(pool: RayPool, texts: list[str]) -> list[Future[list[AgentResult]]]:
    with ThreadPoolExecutor(len(texts)) as executor:
        return [executor.submit(pool.run, "flaky", [AgentInput(text=t)]) for t in texts]


def test_replica_merges_concurrent_calls(flaky: RayPool) -> None:
    results = [f.result()[0] for f in _concurrently(flaky, ["a", "b", "c", "d"])]
    assert [r.output for r in results] == ["a", "b", "c", "d"]
    assert any(r.note != "batch of 1" for r in results)  # serve.batch took more than one call at once


def test_crash_fails_only_its_own_call(flaky: RayPool) -> None:
    futures = _concurrently(flaky, ["a", "boom", "b"])
    with pytest.raises(AgentError, match="crashed: RuntimeError: model file corrupted"):
        futures[1].result()
    assert [futures[i].result()[0].output for i in (0, 2)] == ["a", "b"]


def test_timeout(flaky: RayPool) -> None:
    with pytest.raises(AgentError, match="timed out after 1 s"):
        flaky.run("flaky", [AgentInput(text="sleep")])


def test_close_removes_only_the_pools_apps(flaky: RayPool) -> None:
    """Last in the file: it closes the module's test-agent pool."""
    from ray import serve

    from slm_router.agents.hosting.ray_serve import APP_PREFIX

    assert flaky.health() == {"flaky": True}
    flaky.close()
    assert APP_PREFIX + "flaky" not in serve.status().applications
    assert ray.is_initialized()  # the pool joined the cluster, so it leaves it running
    assert flaky.health() == {"flaky": False}
    with pytest.raises(AgentError, match="pool is closed"):
        flaky.run("flaky", [AgentInput(text="a")])
