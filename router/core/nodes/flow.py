"""Flows in the graph: one `Send` per step of a stage, each step on its own, and the join after a stage."""

from __future__ import annotations

from langgraph.types import Send

from slm_router.router.core.budget import refusal
from slm_router.router.core.components import Components
from slm_router.router.core.flows import StepTask, next_text, run_step
from slm_router.router.core.state import RouterState
from slm_router.router.result import TraceStep


def fan_out(state: RouterState, stage: int) -> list[Send]:
    """One stage: every step is its own task, and LangGraph runs them concurrently."""
    return [
        Send(
            "flow_step",
            StepTask(
                flow=state["flow_name"],
                stage=stage,
                step=step,
                text=state["flow_text"],
                language=state["language"],
                deadline=state["deadline"],
            ),
        )
        for step in state["flow"].stages[stage]
    ]


def flow_step(task: StepTask, c: Components) -> RouterState:
    return {"flow_steps": [run_step(task, c.pool, c.fallback, c.policy, refusal(c.budget))]}


def flow_join(state: RouterState) -> RouterState:
    """After a stage: its steps go to the trace, and a translation becomes the next stage's text."""
    stage = state.get("flow_stage", 0)
    done = [r for r in state.get("flow_steps", []) if r.stage == stage]
    text = next_text(state.get("flow_text") or state["text"], state["flow"].stages[stage], done)
    trace = [
        TraceStep(
            node=f"flow:{r.agent}",
            ms=r.ms,
            info={
                "stage": stage,
                "escalated": r.escalated,
                "reason": r.summary().reason,
                "confidence": r.result.confidence if r.result and not r.escalated else None,
            },
        )
        for r in done
    ]
    return {"flow_stage": stage + 1, "flow_text": text, "trace": trace}
