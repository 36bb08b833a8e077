"""The last node: one `RouteResult` from what the run gathered; the budget and the conversation see it."""

from __future__ import annotations

from slm_router.router.core.components import Components
from slm_router.router.core.conversations import Turn
from slm_router.router.core.costs import answer_cost
from slm_router.router.core.flows import StepResult, merge
from slm_router.router.core.rules import Escalation
from slm_router.router.core.state import RouterState
from slm_router.router.result import RouteResult


def respond(state: RouterState, c: Components) -> RouterState:
    result = _flow_result(state, c) if state.get("flow_steps") else _route_result(state, c)
    if c.budget is not None:  # a fallback translation is fallback spend too, escalated or not
        spent = result.cost if result.escalated else state.get("translation_cost", 0.0)
        c.budget.record(result.escalated, spent)
    turn = Turn(text=state["text"], route=result.route, output=result.output)
    history = [*(state.get("history") or []), turn][-c.policy.memory.turns :]
    return {"result": result, "history": history}


def _route_result(state: RouterState, c: Components) -> RouteResult:
    """A request answered by its route's specialist, by the fallback, or by nobody (rejected)."""
    decision = state["decision"]
    answer = state.get("answer")
    specialist = state.get("specialist")
    escalated = answer is not None and answer.agent == "fallback"
    if decision.action == "reject" or answer is None:
        output, by, action = "", "none", "reject"
    else:
        output, by = answer.output, answer.agent
        action = "fallback" if escalated else "specialist"
    why = state.get("escalation") or Escalation(code=decision.code, reason=decision.reason)
    steps = [*state["trace"]]
    pricing, text = c.policy.pricing, state["text"]
    cost = answer_cost(pricing, answer, text) + state.get("translation_cost", 0.0)
    if specialist is not None and specialist is not answer:
        cost += answer_cost(pricing, specialist, text)
    return RouteResult(
        route=decision.route,
        action=action,
        output=output,
        details=answer.details if answer else None,
        answered_by=by,
        confidence=round(state["scores"].probabilities.get(decision.route, 0.0), 4),
        specialist_confidence=round(specialist.confidence, 4) if specialist else None,
        escalated=escalated,
        reason=why.reason,
        reason_code=why.code,
        language=state["language"],
        translation=state.get("translation"),
        degraded=state.get("degraded", False),
        budget_exceeded=state.get("budget_exceeded", False),
        cost=round(cost, 8),
        metadata=state["request"].metadata,
        trace=steps,
        total_ms=round(sum(s.ms for s in steps), 3),
    )


def _flow_result(state: RouterState, c: Components) -> RouteResult:
    """A request served by a flow: one merged output, escalated only where a step was too weak."""
    decision = state["decision"]
    name = state["flow_name"]
    steps = state["flow_steps"]
    multi = state.get("multi")
    confidence = (
        multi.confidence
        if decision.code == "multi_intent" and multi
        else state["scores"].probabilities.get(decision.route, 0.0)
    )
    output, record = merge(
        name, state["flow"], steps, state.get("flow_text") or state["text"], state["language"]
    )
    escalated = [s for s in steps if s.escalated or s.error or s.budget_exceeded]
    first = escalated[0].escalation if escalated and escalated[0].escalation else None
    why = decision.reason
    if escalated:
        why += "; escalated only " + ", ".join(f"{s.agent} ({s.summary().reason})" for s in escalated)
    trace = [*state["trace"]]
    return RouteResult(
        route=decision.route,
        action="flow",
        output=output,
        details=record,
        answered_by=f"flow:{name}",
        confidence=round(confidence, 4),
        escalated=any(s.escalated for s in steps),
        reason=why,
        reason_code=first.code if first else decision.code,
        language=state["language"],
        translation=state.get("translation"),
        degraded=any(s.error for s in steps),
        budget_exceeded=any(s.budget_exceeded for s in steps),
        cost=round(
            sum(answer_cost(c.policy.pricing, s.result, s.text) for s in steps)
            + state.get("translation_cost", 0.0),
            8,
        ),
        metadata=state["request"].metadata,
        trace=trace,
        total_ms=round(sum(t.ms for t in trace if not t.node.startswith("flow:")) + _stage_ms(steps), 3),
    )


def _stage_ms(steps: list[StepResult]) -> float:
    """Wall time of the flow: stages add up, the parallel steps of a stage overlap (the slowest counts)."""
    per_stage: dict[int, float] = {}
    for s in steps:
        per_stage[s.stage] = max(per_stage.get(s.stage, 0.0), s.ms)
    return sum(per_stage.values())
