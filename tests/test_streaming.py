"""Node-by-node progress: `astream_progress`, LangChain's `astream_events`, and server-sent events."""

from __future__ import annotations

import asyncio
import json

from slm_router.router.runnable import RouteEvent, Router


def _collect(router: Router, request: object) -> list[RouteEvent]:
    async def run() -> list[RouteEvent]:
        return [event async for event in router.astream_progress(request)]  # type: ignore[arg-type]

    return asyncio.run(run())


def test_progress_for_a_specialist(router: Router) -> None:
    events = _collect(router, "Order #A12345 was charged $49.99 twice")
    assert [e.node for e in events if e.event == "node"] == [
        "guard",
        "classify",
        "decide",
        "specialist",
        "check",
    ]
    assert events[-1].event == "result" and events[-1].result is not None
    assert events[-1].result.route == "extract"
    decided = next(e for e in events if e.node == "decide")
    assert decided.info["action"] == "specialist" and decided.ms is not None


def test_escalation_is_announced_before_the_fallback_runs(router: Router) -> None:
    events = _collect(router, "What is the best way to grow tomatoes on a balcony?")
    kinds = [(e.event, e.node) for e in events]
    assert kinds.index(("escalation", "decide")) < kinds.index(("node", "fallback"))
    escalation = next(e for e in events if e.event == "escalation")
    assert escalation.info["code"] == "fallback_route"


def test_each_flow_agent_reports_when_done(router: Router) -> None:
    events = _collect(router, {"text": "O meu pedido 48213 chegou danificado!", "route": "triage"})
    done = [e.node for e in events if e.event == "node" and (e.node or "").startswith("flow:")]
    assert done[0] == "flow:translate" and sorted(done[1:]) == ["flow:extract", "flow:sentiment"]
    assert events[-1].result is not None and events[-1].result.action == "flow"


def test_langchain_astream_events_sees_every_node(router: Router) -> None:
    """A Portuguese complaint passes every node of a specialist answer, translate included."""
    complaint = "Estou muito irritado, o produto chegou partido e ninguém me responde!"

    async def names() -> list[str]:
        return [
            e["name"]
            async for e in router.astream_events(complaint, version="v2")
            if e["event"] == "on_chain_end"
        ]

    seen = asyncio.run(names())
    assert {"guard", "translate", "classify", "decide", "specialist", "check", "respond"} <= set(seen)


def parse_sse(body: str) -> list[tuple[str, dict]]:
    events = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events
