"""The batch lane: many requests through the graph's own nodes, one stage at a time.

Run one by one, every request pays a forward pass of its own, a scoring call, a specialist call and
LangGraph's scheduling, and a batch loses most of the encoder's throughput. Here the same node functions
run in the same order as in the graph (router/core/graph.py); only the schedule differs: every request's
text (and clauses) is embedded in one forward pass, the routes are scored in one matrix product, each
specialist gets its requests as one call, and the fallback comes last. So each request gets the result
`Router.invoke` would give it (tests/test_batch_lane.py compares them).

What only the graph does, a request gets by running through the graph alone: a flow's fan-out (a
multi-intent request or a route served by a flow), and a translation the local agent cannot make (the
graph asks the fallback). The local agent's translations are asked for in one call per micro-batch. A
request that fails (bad input, a full agent, a fallback that cannot answer) fails alone.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, cast, get_origin, get_type_hints

import numpy as np
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_executor_for_config

from slm_router.agents.base import AgentError, AgentInput, AgentResult
from slm_router.router.core import telemetry
from slm_router.router.core.components import Components
from slm_router.router.core.flows import seconds_left
from slm_router.router.core.graph import Graph
from slm_router.router.core.nodes import afallback, check, decide, fallback, guard, respond
from slm_router.router.core.nodes.answer import specialist_call, specialist_ran
from slm_router.router.core.nodes.intake import EmbeddingInputs, classified, embedding_inputs
from slm_router.router.core.nodes.translate import (
    fallback_refused,
    translate,
    translate_locally,
    untranslatable,
    wants_translation,
)
from slm_router.router.core.state import GraphInput, GraphOutput, Info, RouterState
from slm_router.router.result import TraceStep

Outcome = GraphOutput | Exception

_APPENDED = {
    key
    for key, hint in get_type_hints(RouterState, include_extras=True).items()
    if get_origin(hint) is Annotated
}
"""State keys the graph appends to (their reducer is `operator.add`); every other key is overwritten."""


@dataclass(eq=False)
class Lane:
    """One request on the lane: its state so far, what failed it, or that the graph runs it instead."""

    start: GraphInput
    config: RunnableConfig
    state: RouterState = field(init=False)
    error: Exception | None = None
    in_graph: bool = False

    def __post_init__(self) -> None:
        self.state = cast(RouterState, dict(self.start))

    @property
    def open(self) -> bool:
        return self.error is None and not self.in_graph

    def action(self) -> str | None:
        verdict = self.state.get("verdict")
        return verdict.action if verdict is not None and self.open else None

    def step(
        self, node: str, run: Callable[..., tuple[RouterState, Info]], *args: Any, shared_ms: float = 0.0
    ) -> None:
        """Run one node, time it into a `TraceStep` and a span as the graph does (plus its share of the
        stage's batched work), and merge its update; an exception fails this request only."""
        start = time.perf_counter()
        try:
            with telemetry.node_span(node) as span:
                update, info = run(*args)
                telemetry.describe(span, update)
        except Exception as exc:
            self.error = exc
            return
        ms = round((time.perf_counter() - start) * 1000 + shared_ms, 3)
        self.merge({**update, "trace": [TraceStep(node=node, ms=ms, info=info)]})

    def merge(self, update: RouterState) -> None:
        state = cast(dict[str, object], self.state)
        for key, value in update.items():
            appended = key in _APPENDED
            state[key] = (
                [*cast(list[object], state.get(key, [])), *cast(list[object], value)] if appended else value
            )


def run_batch(
    graph: Graph, c: Components, starts: Sequence[GraphInput], configs: Sequence[RunnableConfig]
) -> list[Outcome]:
    """Every request's outcome, in order: the graph's output, or the exception `invoke` would raise."""
    lanes = [Lane(s, cfg) for s, cfg in zip(starts, configs, strict=True)]
    _to_check(lanes, c)
    waiting = [lane for lane in lanes if lane.action() == "fallback"]
    alone = [lane for lane in lanes if lane.in_graph]
    with get_executor_for_config(configs[0] if configs else None) as executor:
        # The fallback and the graph wait on I/O or on their own agents: run them concurrently.
        list(executor.map(lambda lane: lane.step("fallback", fallback, lane.state, c, lane.config), waiting))
        alone_out = list(executor.map(lambda lane: _invoke(graph, lane), alone))
    return _finish(lanes, c, dict(zip(map(id, alone), alone_out, strict=True)))


async def arun_batch(
    graph: Graph, c: Components, starts: Sequence[GraphInput], configs: Sequence[RunnableConfig]
) -> list[Outcome]:
    """`run_batch` for the event loop: the CPU stages on a worker thread, the fallback on its own bulkhead
    (`afallback`), the requests the graph runs alone concurrently."""
    lanes = [Lane(s, cfg) for s, cfg in zip(starts, configs, strict=True)]
    await asyncio.to_thread(_to_check, lanes, c)
    waiting = [lane for lane in lanes if lane.action() == "fallback"]
    alone = [lane for lane in lanes if lane.in_graph]
    await asyncio.gather(*(_afallback(lane, c) for lane in waiting))
    alone_out = await asyncio.gather(*(_ainvoke(graph, lane) for lane in alone))
    return _finish(lanes, c, dict(zip(map(id, alone), alone_out, strict=True)))


def _to_check(lanes: list[Lane], c: Components) -> None:
    """guard, classify and decide for every request, then its specialist and check: up to the fallback."""
    for lane in lanes:
        lane.step("guard", guard, lane.state, c)
    _translate([lane for lane in lanes if lane.open and wants_translation(lane.state, c.policy)], c)
    _classify([lane for lane in lanes if lane.open], c)
    for lane in lanes:
        if lane.open:
            lane.step("decide", decide, lane.state, c)
        if lane.open and lane.state.get("flow") is not None:
            lane.in_graph = True
    asked = [lane for lane in lanes if lane.action() == "specialist"]
    _specialists(asked, c)
    for lane in asked:
        if lane.open:
            lane.step("check", check, lane.state, c)


def _translate(lanes: list[Lane], c: Components) -> None:
    """The local agent translates every message that wants it in one call per micro-batch; a message it
    cannot translate goes through the graph alone when the fallback may translate it (on its own
    bulkhead), else the node records why it stays untranslated."""
    target = c.policy.languages.native[0] if lanes else ""
    wanted = [lane for lane in lanes if untranslatable(lane.state["text"]) is None]
    size = c.policy.hosting.max_batch_size
    for first in range(0, len(wanted), size):
        chunk = wanted[first : first + size]
        start = time.perf_counter()
        messages = [(lane.state["text"], lane.state["language"]) for lane in chunk]
        deadline = min(lane.state["deadline"] for lane in chunk)
        found = translate_locally(c.pool, messages, target, deadline)
        shared_ms = (time.perf_counter() - start) * 1000 / len(chunk)
        for lane, local in zip(chunk, found, strict=True):
            if local.translation is None and fallback_refused(c) is None:
                lane.in_graph = True  # the fallback may translate it: the graph asks, on its bulkhead
            else:
                lane.step("translate", translate, lane.state, c, local, shared_ms=shared_ms)
    asked = {id(lane) for lane in wanted}
    for lane in lanes:
        if id(lane) not in asked:  # asks to translate a part of itself: the node says so, nobody is asked
            lane.step("translate", translate, lane.state, c)


def _classify(lanes: list[Lane], c: Components) -> None:
    """One forward pass for every request's texts, one scoring call for their routing vectors."""
    if not lanes:
        return
    start = time.perf_counter()
    inputs = [embedding_inputs(lane.state, c.policy) for lane in lanes]
    try:
        vectors = c.embedder.encode([t for i in inputs for t in i.texts])
    except Exception:  # a text the tokenizer cannot take: embed one request at a time, so it fails alone
        for lane, i in zip(lanes, inputs, strict=True):
            lane.step("classify", _classify_one, lane, c, i)
        return
    bounds = np.cumsum([0, *(len(i.texts) for i in inputs)])
    scores = c.index.score_many(vectors[bounds[:-1]])
    shared_ms = (time.perf_counter() - start) * 1000 / len(lanes)
    for n, (lane, i) in enumerate(zip(lanes, inputs, strict=True)):
        mine = vectors[bounds[n] : bounds[n + 1]]
        lane.step("classify", classified, lane.state, c, i, mine, scores[n], shared_ms=shared_ms)


def _classify_one(lane: Lane, c: Components, inputs: EmbeddingInputs) -> tuple[RouterState, Info]:
    vectors = c.embedder.encode(inputs.texts)
    return classified(lane.state, c, inputs, vectors, c.index.score(vectors[0]))


def _specialists(lanes: list[Lane], c: Components) -> None:
    """Each agent gets its requests as one call per `hosting.max_batch_size`; the time is shared out."""
    by_agent: dict[str, list[tuple[Lane, AgentInput]]] = defaultdict(list)
    for lane in lanes:
        agent, item = specialist_call(lane.state, c)
        by_agent[agent].append((lane, item))
    size = c.policy.hosting.max_batch_size
    for agent, asked in by_agent.items():
        for first in range(0, len(asked), size):
            chunk = asked[first : first + size]
            start = time.perf_counter()
            outcomes = _ask_many(c, agent, chunk)
            shared_ms = (time.perf_counter() - start) * 1000 / len(chunk)
            for (lane, _), outcome in zip(chunk, outcomes, strict=True):
                lane.step("specialist", specialist_ran, lane.state, c, agent, outcome, shared_ms=shared_ms)


def _ask_many(
    c: Components, agent: str, chunk: list[tuple[Lane, AgentInput]]
) -> list[AgentResult | AgentError]:
    """One pool call for the chunk, within its earliest deadline; when it fails, each request is asked
    alone, so a poisoned one fails only itself."""
    timeout = min(seconds_left(lane.state["deadline"]) for lane, _ in chunk)
    try:
        with telemetry.agent_span(agent, len(chunk)):
            return list(c.pool.run(agent, [item for _, item in chunk], timeout_s=timeout))
    except AgentError as exc:
        if len(chunk) == 1:
            return [exc]
    outcomes: list[AgentResult | AgentError] = []
    for lane, item in chunk:
        try:
            with telemetry.agent_span(agent):
                outcome = c.pool.run(agent, [item], timeout_s=seconds_left(lane.state["deadline"]))[0]
            outcomes.append(outcome)
        except AgentError as exc:
            outcomes.append(exc)
    return outcomes


async def _afallback(lane: Lane, c: Components) -> None:
    start = time.perf_counter()
    try:
        with telemetry.node_span("fallback") as span:
            update, info = await afallback(lane.state, c, lane.config)
            telemetry.describe(span, update)
    except Exception as exc:
        lane.error = exc
        return
    ms = round((time.perf_counter() - start) * 1000, 3)
    lane.merge({**update, "trace": [TraceStep(node="fallback", ms=ms, info=info)]})


def _invoke(graph: Graph, lane: Lane) -> Outcome:
    try:
        return cast(GraphOutput, graph.invoke(lane.start, config=lane.config))
    except Exception as exc:
        return exc


async def _ainvoke(graph: Graph, lane: Lane) -> Outcome:
    try:
        return cast(GraphOutput, await graph.ainvoke(lane.start, config=lane.config))
    except Exception as exc:
        return exc


def _finish(lanes: list[Lane], c: Components, alone: dict[int, Outcome]) -> list[Outcome]:
    """respond for every request still on the lane; the graph's output for those it ran."""
    outcomes: list[Outcome] = []
    for lane in lanes:
        if lane.in_graph:
            outcomes.append(alone[id(lane)])
            continue
        if lane.error is None:
            try:
                with telemetry.node_span("respond") as span:
                    update = respond(lane.state, c)
                    telemetry.describe(span, update)
                lane.merge(update)
            except Exception as exc:
                lane.error = exc
        if lane.error is not None:
            outcomes.append(lane.error)
        else:
            outcomes.append({"result": lane.state["result"], "history": lane.state["history"]})
    return outcomes
