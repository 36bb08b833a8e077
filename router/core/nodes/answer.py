"""Who answers: each node gathers evidence, asks `rules.escalation`, and acts on the verdict.

decide (the router's verdict; a flow serves it when the route or the request's intents ask for one),
specialist (run it), check (keep its answer or escalate), fallback (ask the fallback, or answer locally
when the budget is spent or the fallback fails; the async one waits on the fallback's own bulkhead).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from langchain_core.runnables import RunnableConfig
from langgraph.config import get_config

from slm_router.agents.base import AgentError, AgentInput, AgentOverloaded, AgentResult
from slm_router.agents.fallback.agent import CALL_OPTIONS, CallOptions
from slm_router.policies import Policy
from slm_router.router.core import telemetry
from slm_router.router.core.budget import refusal
from slm_router.router.core.components import Components
from slm_router.router.core.flows import seconds_left
from slm_router.router.core.intents import as_flow
from slm_router.router.core.nodes.translate import specialist_input
from slm_router.router.core.rules import (
    Decision,
    Evidence,
    MultiIntentRoute,
    RoutingEvidence,
    SpecialistOutcome,
    Verdict,
    escalation,
)
from slm_router.router.core.state import Info, RouterState
from slm_router.router.errors import FallbackError, OverloadedError


def decide(state: RouterState, c: Components) -> tuple[RouterState, Info]:
    verdict = escalation(_evidence(state, c), c.policy)
    decision = verdict.decision
    assert decision is not None  # a request's verdict always carries the router's decision
    update: RouterState = {"decision": decision, "verdict": verdict, "escalation": verdict.escalation}
    if verdict.action == "specialist":
        update |= _flow_for(state, c.policy, decision)
    return update, decision.model_dump()


def specialist(state: RouterState, c: Components) -> tuple[RouterState, Info]:
    agent, item = specialist_call(state, c)
    return specialist_ran(state, c, agent, _ask(c, agent, item, state["deadline"]))


def specialist_ran(
    state: RouterState, c: Components, agent: str, outcome: AgentResult | AgentError
) -> tuple[RouterState, Info]:
    """The specialist node once its agent answered or failed (the batch lane asks for many requests at
    once); a failure is announced as the escalation here already."""
    update, info = _specialist_update(agent, outcome)
    if "specialist_error" in update:
        ran: RouterState = {**state, **update}
        update["escalation"] = escalation(_evidence(ran, c), c.policy).escalation
    return update, info


def check(state: RouterState, c: Components) -> tuple[RouterState, Info]:
    verdict = escalation(_evidence(state, c), c.policy)
    if verdict.action == "specialist":
        info: Info = {"escalate": None, "kept_despite": verdict.kept_despite}
        return {"verdict": verdict, "answer": state["specialist"]}, info
    why = verdict.escalation
    update: RouterState = {"verdict": verdict}
    if why != state.get("escalation"):  # a failed specialist's was announced by its own node
        update["escalation"] = why
    return update, {"escalate": why.reason if why else None}


def fallback(
    state: RouterState, c: Components, config: RunnableConfig | None = None
) -> tuple[RouterState, Info]:
    """The fallback node on the sync path. The caller's `CallOptions` come from the run's config: the batch
    lane passes each request's, and in the graph LangGraph keeps it in context (`get_config`)."""
    assert c.fallback is not None
    evidence, verdict, info = _ask_budget(state, c)
    if verdict.action != "fallback":
        return _locally(state, c, evidence, verdict, info)
    try:
        with telemetry.agent_span("fallback"):
            answer = c.fallback.answer(
                *_fallback_call(state, c), options=_traced(_call_options(config or _run_config()))
            )
    except AgentError as exc:
        return _fallback_failed(state, c, exc)
    return {"answer": answer}, {"model": c.fallback.label}


async def afallback(state: RouterState, c: Components, config: RunnableConfig) -> tuple[RouterState, Info]:
    """The fallback node on the async path: the call waits on the fallback's own bounded pool (its
    bulkhead), never on the shared executor the specialists run on, so a slow or hung fallback cannot
    delay specialist traffic.

    `configurable.release_admission`, when the caller passes it (the HTTP service does), is called first:
    from here on the request is bounded by the fallback's bulkhead, so it stops holding one of the
    service's admission slots, which are for work on this machine's CPUs.

    `configurable.fallback_options` (`CallOptions`, the OpenAI endpoint's) carries the caller's sampling
    settings and instructions, and where to stream the answer's text; flow steps never stream."""
    assert c.fallback is not None
    release = (config.get("configurable") or {}).get("release_admission")
    if callable(release):
        release()
    evidence, verdict, info = _ask_budget(state, c)
    if verdict.action != "fallback":
        return await asyncio.to_thread(_locally, state, c, evidence, verdict, info)
    try:
        with telemetry.agent_span("fallback"):
            answer = await c.fallback.aanswer(
                *_fallback_call(state, c), options=_traced(_call_options(config))
            )
    except AgentError as exc:
        return await asyncio.to_thread(_fallback_failed, state, c, exc)
    return {"answer": answer}, {"model": c.fallback.label}


def _run_config() -> RunnableConfig:
    try:
        return get_config()
    except RuntimeError:  # called outside a graph run: the batch lane steps nodes itself
        return {}


def _call_options(config: RunnableConfig) -> CallOptions | None:
    options = (config.get("configurable") or {}).get(CALL_OPTIONS)
    return options if isinstance(options, CallOptions) else None


def _traced(options: CallOptions | None) -> CallOptions | None:
    """The options with the current (fallback agent) span's trace context as headers, when tracing is on."""
    headers = telemetry.trace_headers()
    return replace(options or CallOptions(), headers=headers) if headers else options


def _ask_budget(state: RouterState, c: Components) -> tuple[Evidence, Verdict, Info]:
    """The verdict once the escalation budget has had its say: still "fallback" unless it is spent."""
    over_budget = refusal(c.budget)
    evidence = _evidence(state, c, over_budget=over_budget)
    return evidence, escalation(evidence, c.policy), {"budget_exceeded": over_budget}


def _fallback_failed(state: RouterState, c: Components, exc: AgentError) -> tuple[RouterState, Info]:
    """A degraded local answer, or FallbackError (503, with `Retry-After` when the breaker knows when)."""
    evidence = _evidence(state, c, fallback_error=str(exc))
    verdict = escalation(evidence, c.policy)
    return _locally(state, c, evidence, verdict, {"fallback_failed": str(exc)}, exc)


def _locally(
    state: RouterState,
    c: Components,
    evidence: Evidence,
    verdict: Verdict,
    info: Info,
    failure: AgentError | None = None,
) -> tuple[RouterState, Info]:
    """Act on a verdict reached without the fallback (its budget is spent, or it failed): keep the
    specialist's answer, or ask the specialist for a best guess first when the verdict wants one."""
    kept = state.get("specialist")
    if verdict.action == "specialist":
        ran, ran_info = _run_specialist(state, c)
        info = {**info, **ran_info}
        kept = ran.get("specialist")
        verdict = escalation(evidence.model_copy(update={"best_guess": _outcome(ran)}), c.policy)
    if verdict.action == "fail":
        retry_after_s = getattr(failure, "retry_after_s", None)
        raise FallbackError(verdict.error or "fallback failed", retry_after_s=retry_after_s) from failure
    if verdict.action == "reject":
        kept = None
    update: RouterState = {
        "verdict": verdict,
        "answer": kept,
        "specialist": kept,
        "budget_exceeded": verdict.flag == "budget_exceeded",
        "degraded": verdict.flag == "degraded",
        "escalation": verdict.escalation,
    }
    return update, info


def _flow_for(state: RouterState, policy: Policy, decision: Decision) -> RouterState:
    """The flow that serves a specialist decision: the request's several intents, or the route's flow."""
    multi = state.get("multi")
    if decision.code == "multi_intent" and multi is not None:
        return {"flow": as_flow(multi, policy), "flow_name": "multi-intent", "flow_text": multi.payload}
    name = policy.routes[decision.route].flow if decision.route in policy.routes else None
    if name is None:
        return {}
    return {"flow": policy.flows[name], "flow_name": name, "flow_text": state["text"]}


def _evidence(
    state: RouterState, c: Components, over_budget: str | None = None, fallback_error: str | None = None
) -> Evidence:
    """What the rules need to know of the request so far."""
    multi = state.get("multi")
    return Evidence(
        routing=RoutingEvidence(
            scores=state["scores"],
            language=state["language"],
            language_confidence=state["language_confidence"],
            forced_route=state["request"].route,
            translated=state.get("translation") is not None,
            multi_intent=MultiIntentRoute(route=multi.route, reason=multi.describe()) if multi else None,
        ),
        specialist=_outcome(state),
        has_fallback=c.fallback is not None,
        over_budget=over_budget,
        fallback_error=fallback_error,
        time_left=seconds_left(state["deadline"]) > 0,
    )


def _outcome(state: RouterState) -> SpecialistOutcome | None:
    """The specialist's answer or failure as the rules see it; None when it was not asked."""
    if "specialist_error" in state:
        return SpecialistOutcome(error=state["specialist_error"])
    result = state.get("specialist")
    if result is None:
        return None
    return SpecialistOutcome(confidence=result.confidence, supported=result.supported, note=result.note)


def specialist_call(state: RouterState, c: Components) -> tuple[str, AgentInput]:
    """The route's agent and what it reads."""
    agent = c.policy.routes[state["decision"].route].agent
    assert agent is not None  # the rules ask only for the specialist of a route with an agent
    text, language = specialist_input(state, agent)
    item = AgentInput(
        text=text, language=language, embedding=state["embedding"], params=state["request"].params
    )
    return agent, item


def _run_specialist(state: RouterState, c: Components) -> tuple[RouterState, Info]:
    agent, item = specialist_call(state, c)
    return _specialist_update(agent, _ask(c, agent, item, state["deadline"]))


def _ask(c: Components, agent: str, item: AgentInput, deadline: float) -> AgentResult | AgentError:
    try:
        with telemetry.agent_span(agent):
            return c.pool.run(agent, [item], timeout_s=seconds_left(deadline))[0]
    except AgentError as exc:
        return exc


def _specialist_update(agent: str, outcome: AgentResult | AgentError) -> tuple[RouterState, Info]:
    if isinstance(outcome, AgentOverloaded):
        raise OverloadedError(f"agent {agent!r} is full; try again shortly") from None
    if isinstance(outcome, AgentError):
        error = str(outcome)
        return {"specialist": None, "specialist_error": error}, {"agent": agent, "error": error}
    info: Info = {"agent": agent, "confidence": round(outcome.confidence, 4), "supported": outcome.supported}
    return {"specialist": outcome}, info


def _fallback_call(state: RouterState, c: Components) -> tuple[str, str | None, list[tuple[str, str]], float]:
    """The message as sent, even when it was translated to be routed: the large model reads its language
    and answers in it."""
    prompt = c.policy.routes[state["decision"].route].fallback_prompt
    history = [(t.text, t.output) for t in state.get("history") or []]
    return state["text"], prompt, history, state["deadline"]
