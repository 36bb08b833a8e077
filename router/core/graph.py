"""The controller: guard -> (translate) -> classify -> decide -> specialist -> check -> fallback/respond.

A non-native message is translated before classify (router/core/nodes/translate.py) when the policy's
languages.non_native is translate_then_route; other messages go from guard straight to classify.

A route served by a flow (or a multi-intent request) fans out instead: decide -> flow_step (one `Send` per
step of a stage, run concurrently) -> flow_join -> next stage ... -> respond. The nodes live in
router/core/nodes/, the rules they act on in router/core/rules.py; this module only wires them, and times
each traced node into one `TraceStep` and every node into one OpenTelemetry span when tracing is on
(router/core/telemetry.py). A run starts from `GraphInput` alone and keeps nothing afterwards:
the conversation's turns come in as `history` and go out with the result (router/core/conversations.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Protocol, TypeVar

from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Send

from slm_router.router.core import telemetry
from slm_router.router.core.components import Components
from slm_router.router.core.nodes import (
    afallback,
    check,
    classify,
    decide,
    fallback,
    fan_out,
    flow_join,
    flow_step,
    guard,
    respond,
    specialist,
)
from slm_router.router.core.nodes.translate import atranslate, translate, wants_translation
from slm_router.router.core.state import GraphInput, GraphOutput, Info, RouterState
from slm_router.router.result import TraceStep

Traced = Callable[[RouterState, Components], tuple[RouterState, Info]]
ATraced = Callable[[RouterState, Components, RunnableConfig], Awaitable[tuple[RouterState, Info]]]
Graph = CompiledStateGraph[RouterState, None, GraphInput, GraphOutput]


class Node(Protocol):
    """A node as LangGraph calls it: the state in, the keys it sets out."""

    def __call__(self, state: RouterState) -> RouterState: ...


def build_graph(components: Components) -> Graph:
    """The controller graph; it holds no state between requests (no checkpointer)."""
    c = components
    telemetry.tracer()  # configured by OTEL_* but the SDK is missing: say so now, not on the first request
    graph = StateGraph(RouterState, input_schema=GraphInput, output_schema=GraphOutput)
    traced: dict[str, Traced] = {
        "guard": guard,
        "classify": classify,
        "decide": decide,
        "specialist": specialist,
        "check": check,
    }
    for name, node in traced.items():
        graph.add_node(name, _timed(name, node, c))
    graph.add_node(
        "fallback", RunnableLambda(_timed("fallback", fallback, c), afunc=_atimed("fallback", afallback, c))
    )
    graph.add_node(
        "translate",
        RunnableLambda(_timed("translate", translate, c), afunc=_atimed("translate", _atranslate, c)),
    )
    # Wrapped, so LangGraph does not take the `StepTask` a `Send` carries for a state schema of its own.
    graph.add_node("flow_step", RunnableLambda(_spanned("flow_step", partial(flow_step, c=c))))
    graph.add_node("flow_join", _spanned("flow_join", flow_join))
    graph.add_node("respond", _spanned("respond", partial(respond, c=c)))
    graph.add_edge(START, "guard")
    graph.add_conditional_edges("guard", partial(_after_guard, c=c), ["translate", "classify"])
    graph.add_edge("translate", "classify")
    graph.add_edge("classify", "decide")
    graph.add_conditional_edges("decide", _after_decide, ["specialist", "fallback", "respond", "flow_step"])
    graph.add_edge("flow_step", "flow_join")
    graph.add_conditional_edges("flow_join", _after_join, ["flow_step", "respond"])
    graph.add_edge("specialist", "check")
    graph.add_conditional_edges("check", _after_check, ["fallback", "respond"])
    graph.add_edge("fallback", "respond")
    graph.add_edge("respond", END)
    # Named for traces: the controller run sits under the `slm-router` run of `Router.invoke`.
    return graph.compile(name="controller")


def _after_guard(state: RouterState, c: Components) -> str:
    return "translate" if wants_translation(state, c.policy) else "classify"


def _after_decide(state: RouterState) -> str | list[Send]:
    if state.get("flow") is not None:
        return fan_out(state, stage=0)
    return {"specialist": "specialist", "fallback": "fallback"}.get(state["verdict"].action, "respond")


def _after_check(state: RouterState) -> str:
    return "fallback" if state["verdict"].action == "fallback" else "respond"


def _after_join(state: RouterState) -> str | list[Send]:
    stage = state["flow_stage"]
    return fan_out(state, stage) if stage < len(state["flow"].stages) else "respond"


def _traced(name: str, start: float, ran: tuple[RouterState, Info]) -> RouterState:
    """The node's update plus its `TraceStep`: how long it took and what it reports."""
    update, info = ran
    step = TraceStep(node=name, ms=round((time.perf_counter() - start) * 1000, 3), info=info)
    traced: RouterState = {**update, "trace": [step]}
    return traced


def _timed(name: str, node: Traced, c: Components) -> Node:
    def run(state: RouterState) -> RouterState:
        with telemetry.node_span(name) as span:
            start = time.perf_counter()
            update = _traced(name, start, node(state, c))
            telemetry.describe(span, update)
            return update

    return run


def _atimed(
    name: str, node: ATraced, c: Components
) -> Callable[[RouterState, RunnableConfig], Awaitable[RouterState]]:
    async def run(state: RouterState, config: RunnableConfig) -> RouterState:
        with telemetry.node_span(name) as span:
            start = time.perf_counter()
            update = _traced(name, start, await node(state, c, config))
            telemetry.describe(span, update)
            return update

    return run


_In = TypeVar("_In", contravariant=True)
_Out = TypeVar("_Out", covariant=True)


class _Step(Protocol[_In, _Out]):
    """A node of one argument, named `state` as LangGraph's node protocol has it."""

    def __call__(self, state: _In) -> _Out: ...


def _spanned(name: str, node: Callable[[_In], _Out]) -> _Step[_In, _Out]:
    """A node that is not timed into the trace (flow steps keep their own record) still gets its span."""

    def run(state: _In) -> _Out:
        with telemetry.node_span(name) as span:
            update = node(state)
            if isinstance(update, dict):
                telemetry.describe(span, update)
            return update

    return run


async def _atranslate(state: RouterState, c: Components, config: RunnableConfig) -> tuple[RouterState, Info]:
    return await atranslate(state, c)
