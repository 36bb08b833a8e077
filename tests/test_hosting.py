"""LocalPool: micro-batching merges concurrent callers without mixing up or sharing their failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from slm_router.agents.base import AgentError, AgentInput, AgentOverloaded, AgentResult, GenericOutput
from slm_router.agents.hosting.local import LocalPool


class _Echo:
    """Answers each text upper-cased; records batch sizes; `poison` fails any batch that contains it."""

    name = "echo"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        with self._lock:
            self.batch_sizes.append(len(items))
        if any(item.text == "poison" for item in items):
            raise ValueError("poisoned input")
        time.sleep(self.delay_s)
        return [
            AgentResult(agent=self.name, output=i.text.upper(), details=GenericOutput(), confidence=1.0)
            for i in items
        ]


class _Hung:
    name = "hung"

    def __init__(self) -> None:
        self.release = threading.Event()

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        self.release.wait(10)
        return []


@pytest.fixture
def echo() -> _Echo:
    return _Echo(delay_s=0.01)


@pytest.fixture
def pool(echo: _Echo) -> Iterator[LocalPool]:
    pool = LocalPool({"echo": echo}, timeout_s=5.0, max_batch_size=16, batch_wait_timeout_s=0.05)
    yield pool
    pool.close()


def _call_concurrently(pool: LocalPool, texts: list[str]) -> list[list[str] | str]:
    """Each text from its own thread, all released at once; an AgentError is returned as its message."""
    barrier = threading.Barrier(len(texts))

    def call(text: str) -> list[str] | str:
        barrier.wait()
        try:
            return [r.output for r in pool.run("echo", [AgentInput(text=text), AgentInput(text=text + "!")])]
        except AgentError as exc:
            return str(exc)

    with ThreadPoolExecutor(len(texts)) as executor:
        return list(executor.map(call, texts))


def test_concurrent_calls_are_merged_and_each_caller_gets_its_own_results(
    pool: LocalPool, echo: _Echo
) -> None:
    texts = [f"req{i}" for i in range(8)]
    results = _call_concurrently(pool, texts)
    assert results == [[t.upper(), t.upper() + "!"] for t in texts]
    assert len(echo.batch_sizes) < len(texts)
    assert max(echo.batch_sizes) > 2 and sum(echo.batch_sizes) == 2 * len(texts)
    assert max(echo.batch_sizes) <= 16


def test_poisoned_request_fails_only_its_caller(pool: LocalPool) -> None:
    texts = ["a", "b", "poison", "c"]
    results = _call_concurrently(pool, texts)
    assert results[2] == "agent 'echo': crashed: ValueError: poisoned input"
    assert [results[i] for i in (0, 1, 3)] == [["A", "A!"], ["B", "B!"], ["C", "C!"]]


def test_zero_wait_batches_only_what_is_queued() -> None:
    echo = _Echo()
    pool = LocalPool({"echo": echo}, timeout_s=5.0, max_batch_size=4, batch_wait_timeout_s=0.0)
    try:
        for text in ("x", "y"):
            assert [r.output for r in pool.run("echo", [AgentInput(text=text)])] == [text.upper()]
        assert echo.batch_sizes == [1, 1]
    finally:
        pool.close()


def test_timeout_raises_and_marks_the_agent_unhealthy() -> None:
    hung = _Hung()
    pool = LocalPool({"hung": hung}, timeout_s=0.2, max_batch_size=4, batch_wait_timeout_s=0.0)
    try:
        started = time.monotonic()
        with pytest.raises(AgentError, match=r"timed out after 0\.2 s"):
            pool.run("hung", [AgentInput(text="x")])
        assert time.monotonic() - started < 2
        time.sleep(0.05)
        assert pool.health() == {"hung": False}
        assert pool.queue_depth() == {"hung": 1}
        hung.release.set()  # the stuck call returns (here: a wrong result count) and the batcher recovers
        deadline = time.monotonic() + 5
        while pool.queue_depth()["hung"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.health() == {"hung": True} and pool.queue_depth() == {"hung": 0}
    finally:
        pool.close()


def test_unknown_agent(pool: LocalPool) -> None:
    with pytest.raises(AgentError, match=r"no such agent; this pool hosts \['echo'\]"):
        pool.run("nope", [AgentInput(text="x")])


def test_wrong_result_count_is_an_agent_error() -> None:
    hung = _Hung()
    hung.release.set()
    pool = LocalPool({"hung": hung}, timeout_s=1.0, max_batch_size=4, batch_wait_timeout_s=0.0)
    try:
        with pytest.raises(AgentError, match="returned 0 results for 1 inputs"):
            pool.run("hung", [AgentInput(text="x")])
    finally:
        pool.close()


def test_queue_depth_health_and_close(pool: LocalPool) -> None:
    assert pool.names() == ["echo"]
    assert pool.queue_depth() == {"echo": 0}
    assert pool.health() == {"echo": True}
    assert pool.run("echo", []) == []
    pool.close()
    assert pool.health() == {"echo": False}
    with pytest.raises(AgentError, match="pool is closed"):
        pool.run("echo", [AgentInput(text="x")])


def test_full_backlog_is_refused_at_once_as_overloaded() -> None:
    hung = _Hung()
    pool = LocalPool({"hung": hung}, timeout_s=5.0, max_batch_size=4, batch_wait_timeout_s=0.0, max_pending=3)
    try:
        with ThreadPoolExecutor(1) as executor:
            stuck = executor.submit(pool.run, "hung", [AgentInput(text="a"), AgentInput(text="b")])
            deadline = time.monotonic() + 2
            while pool.queue_depth()["hung"] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            started = time.monotonic()
            with pytest.raises(
                AgentOverloaded, match=r"overloaded: 2 items pending \(max_pending 3\)"
            ) as info:
                pool.run("hung", [AgentInput(text="c"), AgentInput(text="d")])
            assert time.monotonic() - started < 0.5 and info.value.retry_after_s > 0
            assert isinstance(info.value, AgentError)  # callers that only know AgentError still handle it
            hung.release.set()
            with pytest.raises(AgentError, match="returned 0 results"):
                stuck.result(timeout=5)
    finally:
        pool.close()


def test_idle_agent_takes_a_request_larger_than_the_bound(echo: _Echo) -> None:
    pool = LocalPool({"echo": echo}, timeout_s=5.0, max_pending=1)
    try:
        results = pool.run("echo", [AgentInput(text="a"), AgentInput(text="b")])
        assert [r.output for r in results] == ["A", "B"]
    finally:
        pool.close()


def test_per_call_timeout_shortens_the_pool_timeout() -> None:
    hung = _Hung()
    pool = LocalPool({"hung": hung}, timeout_s=5.0, max_batch_size=4, batch_wait_timeout_s=0.0)
    try:
        started = time.monotonic()
        with pytest.raises(AgentError, match=r"timed out after 0\.2 s"):
            pool.run("hung", [AgentInput(text="x")], timeout_s=0.2)
        assert time.monotonic() - started < 2
    finally:
        hung.release.set()
        pool.close()
