"""`Router` behaves like any LangChain Runnable: its run is named `slm-router` and ends with the
`RouteResult`, the caller's config reaches every node, and the standard wrappers compose with it."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableConfig, RunnableLambda

from slm_router.agents.fallback import CALL_OPTIONS, CallOptions
from slm_router.policies import Policy
from slm_router.router.errors import InvalidInputError
from slm_router.router.result import RouteResult
from slm_router.router.runnable import Router
from tests.conftest import policy_with
from tests.fake_llm import FakeLLM

NODES = {"guard", "classify", "decide", "specialist", "check", "respond"}


class Runs(BaseCallbackHandler):
    """Every chain run a tracer would see: name, parent, tags, metadata, and how it ended."""

    def __init__(self) -> None:
        self.started: dict[UUID, dict[str, Any]] = {}
        self.ended: dict[UUID, Any] = {}
        self.failed: list[BaseException] = []

    def on_chain_start(
        self,
        serialized: Any,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        self.started[run_id] = {
            "name": kw.get("name"),
            "parent": parent_run_id,
            "tags": tags or [],
            "metadata": metadata or {},
        }

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kw: Any) -> None:
        self.ended[run_id] = outputs

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kw: Any) -> None:
        self.failed.append(error)

    def roots(self) -> list[UUID]:
        return [run for run, info in self.started.items() if info["parent"] is None]

    def named(self, names: set[str]) -> list[dict[str, Any]]:
        return [info for info in self.started.values() if info["name"] in names]


def test_one_root_run_named_slm_router_ending_with_the_result(router: Router) -> None:
    runs = Runs()
    result = router.invoke("I love this blender", config={"callbacks": [runs]})
    [root] = runs.roots()
    assert runs.started[root]["name"] == "slm-router" and router.get_name() == "slm-router"
    assert runs.ended[root] == result and isinstance(result, RouteResult)
    router.invoke("I love this blender", config={"callbacks": [runs], "run_name": "mine"})
    assert runs.started[runs.roots()[-1]]["name"] == "mine"


def test_tags_metadata_and_callbacks_reach_every_node(router: Router) -> None:
    runs = Runs()
    config: RunnableConfig = {"callbacks": [runs], "tags": ["ticket-42"], "metadata": {"team": "support"}}
    router.invoke("Order #A12345 was charged $49.99 twice", config=config)
    nodes = runs.named(NODES)
    assert {n["name"] for n in nodes} == NODES
    for node in nodes:
        assert "ticket-42" in node["tags"], node
        assert node["metadata"].get("team") == "support", node


def test_astream_events_ends_with_the_route_result(router: Router) -> None:
    async def events() -> list[dict[str, Any]]:
        return [e async for e in router.astream_events("I love this blender", version="v2")]

    seen = asyncio.run(events())
    assert seen[0]["event"] == "on_chain_start" and seen[0]["name"] == "slm-router"
    last = seen[-1]
    assert last["event"] == "on_chain_end" and last["name"] == "slm-router"
    assert isinstance(last["data"]["output"], RouteResult)
    assert last["data"]["output"].route == "sentiment"
    assert {e["name"] for e in seen if e["event"] == "on_chain_end"} >= NODES


def test_with_config_binds_tags_and_run_name(router: Router) -> None:
    runs = Runs()
    bound = router.with_config(run_name="triage", tags=["bound"], callbacks=[runs])
    result = bound.invoke("I love this blender")
    [root] = runs.roots()
    assert runs.started[root]["name"] == "triage" and "bound" in runs.started[root]["tags"]
    assert result.route == "sentiment"
    assert asyncio.run(bound.ainvoke("I love this blender")).route == "sentiment"


def test_with_retry_retries_the_router_and_keeps_its_typed_error(router: Router) -> None:
    runs = Runs()
    retrying = router.with_retry(
        retry_if_exception_type=(InvalidInputError,), stop_after_attempt=3, wait_exponential_jitter=False
    )
    with pytest.raises(InvalidInputError):
        retrying.invoke("   ", config={"callbacks": [runs]})
    attempts = [e for e in runs.failed if isinstance(e, InvalidInputError)]
    assert len({id(e) for e in attempts}) == 3  # each attempt ran the router again
    assert retrying.invoke("I love this blender").route == "sentiment"


def test_with_fallbacks_answers_when_the_router_raises(router: Router) -> None:
    safe = router.with_fallbacks(
        [RunnableLambda(lambda _: "sorry, could not route that")], exceptions_to_handle=(InvalidInputError,)
    )
    assert safe.invoke("   ") == "sorry, could not route that"
    routed = safe.invoke("I love this blender")
    assert isinstance(routed, RouteResult) and routed.route == "sentiment"


def test_a_chain_of_runnables_passes_the_router_its_input(router: Router) -> None:
    chain = RunnableLambda(lambda ticket: ticket["body"]) | router | RunnableLambda(lambda r: r.route)
    assert chain.invoke({"body": "Order #A12345 was charged $49.99 twice"}) == "extract"
    assert chain.batch([{"body": "I love this blender"}, {"body": "Order #A12345 was charged twice"}]) == [
        "sentiment",
        "extract",
    ]


GENERAL = ["Which wine goes with grilled sardines at a summer party?", "What is a good novel about sailing?"]


@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "batch", "abatch"])
def test_per_call_fallback_options_ride_in_the_config(
    mode: str, default_policy: Policy, router: Router, fake_llm: FakeLLM
) -> None:
    """`configurable.fallback_options` sets the fallback's sampling and instructions for one call, on the
    sync and async paths and in the batch lane (the OpenAI endpoint uses the same key)."""
    fallback = fake_llm.fallback_config()
    library = Router(
        policy_with(default_policy, fallback=fallback), embedder=router.embedder, pool=router.pool
    )
    options = CallOptions(sampling={"max_tokens": 7, "temperature": 0.1}, instructions="Answer in French.")
    config: RunnableConfig = {"configurable": {CALL_OPTIONS: options}}
    calls = {
        "invoke": lambda: [library.invoke(GENERAL[0], config)],
        "ainvoke": lambda: [asyncio.run(library.ainvoke(GENERAL[0], config))],
        "batch": lambda: library.batch(GENERAL, config),
        "abatch": lambda: asyncio.run(library.abatch(GENERAL, config)),
    }
    try:
        results = calls[mode]()
        assert all(result.answered_by == "fallback" for result in results)
        for sent in fake_llm.requests[-len(results) :]:
            assert (
                sent.get("max_completion_tokens", sent.get("max_tokens")) == 7 and sent["temperature"] == 0.1
            )
            assert "Answer in French." in sent["messages"][0]["content"]
        library.invoke(GENERAL[0])
        assert fake_llm.requests[-1]["temperature"] != 0.1  # one call only
    finally:
        library.close()
