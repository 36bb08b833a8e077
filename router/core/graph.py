"""The controller: guard -> classify -> decide -> specialist -> check -> fallback/respond, as a LangGraph.

A route served by a flow (or a multi-intent request) fans out instead: decide -> flow_step (one `Send` per
step of a stage, run concurrently) -> flow_join -> next stage ... -> respond. Every node appends timed
`TraceStep`s, so a result explains itself. A conversation's earlier turns come in as `history` and the
updated turns go out with the result (router/conversations.py keeps them between requests).
"""

from __future__ import annotations

import asyncio
import operator
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypedDict, cast

import numpy as np
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from slm_router.agents.base import AgentError, AgentInput, AgentOverloaded, AgentResult
from slm_router.agents.langid import detect_language
from slm_router.policies.schema import FlowConfig
from slm_router.router.core.components import Components
from slm_router.router.core.conversations import Turn
from slm_router.router.core.costs import answer_cost
from slm_router.router.core.flows import StepResult, StepTask, merge, next_text, run_step, seconds_left
from slm_router.router.core.index import RouteScores
from slm_router.router.core.intents import MultiIntent, as_flow, detect, split_request
from slm_router.router.core.rules import Decision, Escalation, ReasonCode, check_specialist, decide
from slm_router.router.errors import EmptyInputError, FallbackError, InputTooLargeError, OverloadedError
from slm_router.router.result import RouteRequest, RouteResult, TraceStep

_CONTROL = {"Cc", "Cf"}
_KEEP = {"\n", "\t"}


FOLLOW_UP = re.compile(
    r"^\s*(and|also|what about|how about|same|it|that|this one|the other)\b", re.IGNORECASE
)


class RouterState(TypedDict, total=False):
    request: RouteRequest
    deadline: float
    text: str
    language: str
    language_confidence: float
    embedding: np.ndarray
    scores: RouteScores
    decision: Decision
    specialist: AgentResult | None
    escalation: Escalation | None
    answer: AgentResult
    degraded: bool
    budget_exceeded: bool
    result: RouteResult
    trace: Annotated[list[TraceStep], operator.add]
    history: list[Turn]
    multi: MultiIntent | None
    flow: FlowConfig
    flow_name: str
    flow_stage: int
    flow_text: str
    flow_steps: Annotated[list[StepResult], operator.add]


def normalise(text: str, max_chars: int) -> str:
    """Reject what cannot be routed; drop invisible control characters that confuse tokenisers."""
    if len(text) > max_chars:
        raise InputTooLargeError(
            f"text has {len(text):,} characters; the limit is {max_chars:,} (limits.max_chars)"
        )
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch for ch in text if ch in _KEEP or unicodedata.category(ch) not in _CONTROL).strip()
    if not text:
        raise EmptyInputError("text is empty or only whitespace/control characters")
    return text


def fresh_state(request: RouteRequest, deadline: float, history: list[Turn] | None = None) -> dict[str, Any]:
    """The input of one request: its deadline (`time.monotonic()`) and the conversation's earlier turns.

    The graph keeps nothing between requests, so every other key starts unset."""
    return {"request": request, "deadline": deadline, "history": history or []}


def _remaining(state: RouterState) -> float:
    return seconds_left(state["deadline"])


def _traced(name: str, start: float, update: dict[str, Any]) -> dict[str, Any]:
    info = update.pop("_info", {})
    step = TraceStep(node=name, ms=round((time.perf_counter() - start) * 1000, 3), info=info)
    return {**update, "trace": [step]}


def _timed(name: str, fn: Callable[[RouterState], dict[str, Any]]) -> Callable[[RouterState], dict[str, Any]]:
    def node(state: RouterState) -> dict[str, Any]:
        return _traced(name, time.perf_counter(), fn(state))

    return node


def _atimed(
    name: str, fn: Callable[[RouterState, RunnableConfig], Awaitable[dict[str, Any]]]
) -> Callable[[RouterState, RunnableConfig], Awaitable[dict[str, Any]]]:
    async def node(state: RouterState, config: RunnableConfig) -> dict[str, Any]:
        start = time.perf_counter()
        return _traced(name, start, await fn(state, config))

    return node


class Controller:
    def __init__(self, components: Components) -> None:
        self.c = components

    def guard(self, state: RouterState) -> dict[str, Any]:
        text = normalise(state["request"].text, self.c.policy.limits.max_chars)
        language, conf = detect_language(text)
        return {
            "text": text,
            "language": language,
            "language_confidence": conf,
            "_info": {"chars": len(text), "language": language, "language_confidence": round(conf, 3)},
        }

    def classify(self, state: RouterState) -> dict[str, Any]:
        policy = self.c.policy
        text = state["text"]
        clauses, payload = (
            split_request(text) if policy.router.multi_intent and not state["request"].route else ([], text)
        )
        if len(clauses) >= 2 and detect_language(" ".join(clauses))[0] not in (
            *policy.languages.native,
            "und",
        ):
            clauses = []  # an instruction in another language: the embedder reads English
        if len(clauses) >= 2:  # the clauses ride along in the request's own forward pass
            vectors = self.c.embedder.encode_shared([text, *clauses])
            embedding, clause_vectors = vectors[0], vectors[1:]
        else:
            embedding, clause_vectors = self.c.embedder.encode_one(text), None
        scores = self.c.index.score(embedding)
        multi = (
            None if clause_vectors is None else detect(clauses, payload, clause_vectors, policy, self.c.index)
        )
        context = self._with_context(state, scores)
        if context is not None:
            scores = context
        return {
            "embedding": embedding,
            "scores": scores,
            "multi": multi,
            "_info": {
                "used_context": context is not None,
                "multi_intent": multi.describe() if multi else None,
                "top": scores.top,
                "confidence": round(scores.confidence, 4),
                "margin": round(scores.margin, 4),
                "max_similarity": round(scores.max_similarity, 4),
                "ood": scores.ood,
                "probabilities": scores.probabilities,
            },
        }

    def _with_context(self, state: RouterState, scores: RouteScores) -> RouteScores | None:
        """A follow-up ("and what about my other order?") is scored together with the previous turn; the
        context wins when it is confident and the message alone is not, or reads as a follow-up."""
        history = state.get("history") or []
        if not history:
            return None
        text = state["text"]
        alone_ok = not scores.ood and scores.confidence >= self.c.policy.threshold(scores.top)
        if alone_ok and not FOLLOW_UP.match(text):
            return None
        joined = self.c.index.score(self.c.embedder.encode_one(f"{history[-1].text}\n{text}"))
        if joined.ood or joined.confidence < self.c.policy.threshold(joined.top):
            return None
        return joined

    def decide(self, state: RouterState) -> dict[str, Any]:
        decision = decide(
            state["scores"],
            self.c.policy,
            state["language"],
            state["language_confidence"],
            state["request"].route,
        )
        if decision.action == "fallback" and self.c.fallback is None:
            decision = decision.model_copy(
                update={"action": "reject", "reason": f"{decision.reason}; no fallback"}
            )
        escalation = (
            None
            if decision.action == "specialist"
            else Escalation(code=decision.code, reason=decision.reason)
        )
        update: dict[str, Any] = {
            "decision": decision,
            "escalation": escalation,
            "_info": decision.model_dump(),
        }
        multi = state.get("multi")
        flow_name = (
            self.c.policy.routes[decision.route].flow if decision.route in self.c.policy.routes else None
        )
        if multi is not None and decision.action != "reject":
            decision = Decision(
                action="specialist", route=multi.route, code="multi_intent", reason=multi.describe()
            )
            update |= {
                "decision": decision,
                "flow": as_flow(multi, self.c.policy),
                "flow_name": "multi-intent",
                "flow_text": multi.payload,
                "_info": decision.model_dump(),
            }
        elif flow_name and decision.action == "specialist":
            update |= {
                "flow": self.c.policy.flows[flow_name],
                "flow_name": flow_name,
                "flow_text": state["text"],
            }
        return update

    def specialist(self, state: RouterState) -> dict[str, Any]:
        agent = self.c.policy.routes[state["decision"].route].agent
        assert agent is not None  # decide() only sends routes with an agent here
        return self._run_specialist(state, agent)

    def _run_specialist(self, state: RouterState, agent: str) -> dict[str, Any]:
        item = AgentInput(
            text=state["text"],
            language=state["language"],
            embedding=state["embedding"],
            params=state["request"].params,
        )
        try:
            result = self.c.pool.run(agent, [item], timeout_s=_remaining(state))[0]
        except AgentOverloaded:
            raise OverloadedError(f"agent {agent!r} is full; try again shortly") from None
        except AgentError as exc:
            return {
                "specialist": None,
                "escalation": Escalation(code="specialist_failed", reason=f"specialist failed: {exc}"),
                "_info": {"agent": agent, "error": str(exc)},
            }
        return {
            "specialist": result,
            "_info": {
                "agent": agent,
                "confidence": round(result.confidence, 4),
                "supported": result.supported,
            },
        }

    def check(self, state: RouterState) -> dict[str, Any]:
        result = state.get("specialist")
        if result is None:
            failed = state.get("escalation")
            return {"_info": {"escalate": failed.reason if failed else None}}
        route = state["decision"].route
        escalation = check_specialist(
            result.confidence,
            result.supported,
            result.note,
            self.c.policy.routes[route].min_confidence,
            f"route {route}",
        )
        if escalation and self.c.fallback is not None:
            return {"escalation": escalation, "_info": {"escalate": escalation.reason}}
        kept = escalation.reason if escalation else None
        return {"answer": result, "_info": {"escalate": None, "kept_despite": kept}}

    def _over_budget_reason(self) -> str | None:
        """Why the escalation budget withholds the fallback now, or None when it allows it."""
        if self.c.budget is None:
            return None
        allowed, why_not = self.c.budget.allows()
        return None if allowed else why_not

    def fallback(self, state: RouterState) -> dict[str, Any]:
        assert self.c.fallback is not None
        why_not = self._over_budget_reason()
        if why_not is not None:
            return self._answer_locally(state, "budget_exceeded", why_not)
        try:
            answer = self.c.fallback.answer(*self._fallback_call(state))
        except AgentError as exc:
            return self._fallback_failed(state, exc)
        return {"answer": answer, "_info": {"model": self.c.fallback.label}}

    async def afallback(self, state: RouterState, config: RunnableConfig) -> dict[str, Any]:
        """The fallback node on the async path: the call waits on the fallback's own bounded pool (its
        bulkhead), never on the shared executor the specialists run on, so a slow or hung fallback
        cannot delay specialist traffic.

        `configurable.release_admission`, when the caller passes it (the HTTP service does), is called
        first: from here on the request is bounded by the fallback's bulkhead, so it stops holding one of
        the service's admission slots, which are for work on this machine's CPUs."""
        assert self.c.fallback is not None
        release = (config.get("configurable") or {}).get("release_admission")
        if callable(release):
            release()
        why_not = self._over_budget_reason()
        if why_not is not None:
            return await asyncio.to_thread(self._answer_locally, state, "budget_exceeded", why_not)
        try:
            answer = await self.c.fallback.aanswer(*self._fallback_call(state))
        except AgentError as exc:
            return await asyncio.to_thread(self._fallback_failed, state, exc)
        return {"answer": answer, "_info": {"model": self.c.fallback.label}}

    def _fallback_call(self, state: RouterState) -> tuple[str, str | None, list[tuple[str, str]], float]:
        prompt = self.c.policy.routes[state["decision"].route].fallback_prompt
        history = [(t.text, t.output) for t in state.get("history") or []]
        return state["text"], prompt, history, state["deadline"]

    def _fallback_failed(self, state: RouterState, exc: AgentError) -> dict[str, Any]:
        """The fallback could not answer: keep the specialist's best answer, flagged `degraded`, or fail
        with FallbackError (503, with `Retry-After` when the breaker knows when to try again)."""
        why = state.get("escalation")
        retry_after_s = getattr(exc, "retry_after_s", None)
        update = self._answer_locally(state, "fallback_failed", str(exc))
        if update["answer"] is None:
            raise FallbackError(
                f"{exc} (needed because: {why.reason if why else '?'})", retry_after_s=retry_after_s
            ) from exc
        return update | {"degraded": True}

    def _answer_locally(self, state: RouterState, code: ReasonCode, why_not: str) -> dict[str, Any]:
        """No fallback this time (budget spent, or it is down): keep (or get) the best-guess specialist's
        answer and say why; `answer` is None when no specialist can serve the request."""
        why = state.get("escalation")
        reason = f"{why.reason if why else 'escalation'}; {why_not}"
        kept = state.get("specialist")
        agent = self.c.policy.routes[state["decision"].route].agent
        info: dict[str, Any] = {code: why_not}
        if code == "budget_exceeded" and self.c.policy.escalation.budget.when_exceeded == "reject":
            kept = None
        elif kept is None and agent and _remaining(state) > 0:
            ran = self._run_specialist(state, agent)
            kept = ran.get("specialist")
            info |= ran["_info"]
        return {
            "answer": kept,
            "specialist": kept,
            "budget_exceeded": code == "budget_exceeded",
            "escalation": Escalation(code=code, reason=reason),
            "_info": info,
        }

    def after_check(self, state: RouterState) -> str:
        """To the fallback when an escalation left no answer and there is a fallback to ask."""
        needs = state.get("answer") is None and state.get("escalation") is not None
        return "fallback" if needs and self.c.fallback is not None else "respond"

    def after_decide(self, state: RouterState) -> str | list[Send]:
        decision = state["decision"]
        if decision.action == "specialist" and state.get("flow") is not None:
            return self._sends(state, stage=0, text=state["flow_text"])
        return {"specialist": "specialist", "fallback": "fallback"}.get(decision.action, "respond")

    def _sends(self, state: RouterState, stage: int, text: str) -> list[Send]:
        """Fan out one stage: every step is its own task, and LangGraph runs them concurrently."""
        name, language = state["flow_name"], state["language"]
        return [
            Send(
                "flow_step",
                {
                    "task": StepTask(
                        flow=name,
                        stage=stage,
                        step=step,
                        text=text,
                        language=language,
                        deadline=state["deadline"],
                    )
                },
            )
            for step in state["flow"].stages[stage]
        ]

    def flow_step(self, payload: dict[str, StepTask]) -> dict[str, Any]:
        over_budget = self._over_budget_reason()
        return {"flow_steps": [run_step(payload["task"], self.c.pool, self.c.fallback, over_budget)]}

    def flow_join(self, state: RouterState) -> dict[str, Any]:
        """After a stage: its steps go to the trace, and a translation becomes the next stage's text."""
        flow = self._flow(state)
        stage = state.get("flow_stage", 0)
        done = [r for r in state.get("flow_steps", []) if r.stage == stage]
        text = next_text(state.get("flow_text") or state["text"], flow.stages[stage], done)
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

    def after_join(self, state: RouterState) -> str | list[Send]:
        stage = state["flow_stage"]
        if stage < len(self._flow(state).stages):
            return self._sends(state, stage=stage, text=state["flow_text"])
        return "respond"

    def _flow(self, state: RouterState) -> FlowConfig:
        return state["flow"]

    def respond(self, state: RouterState) -> dict[str, Any]:
        result = self._flow_result(state) if state.get("flow_steps") else self._result(state)
        if self.c.budget is not None:
            spent = result.cost if result.escalated else 0.0
            self.c.budget.record(result.escalated, spent)
        turn = Turn(text=state["text"], route=result.route, output=result.output)
        history = [*(state.get("history") or []), turn][-self.c.policy.memory.turns :]
        return {"result": result, "history": history}

    def _result(self, state: RouterState) -> RouteResult:
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
        pricing, text = self.c.policy.pricing, state["text"]
        cost = answer_cost(pricing, answer, text)
        if specialist is not None and specialist is not answer:
            cost += answer_cost(pricing, specialist, text)
        result = RouteResult(
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
            degraded=state.get("degraded", False),
            budget_exceeded=state.get("budget_exceeded", False),
            cost=round(cost, 8),
            metadata=state["request"].metadata,
            trace=steps,
            total_ms=round(sum(s.ms for s in steps), 3),
        )
        return result

    def _flow_result(self, state: RouterState) -> RouteResult:
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
            name, self._flow(state), steps, state.get("flow_text") or state["text"], state["language"]
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
            degraded=any(s.error for s in steps),
            budget_exceeded=any(s.budget_exceeded for s in steps),
            cost=round(sum(answer_cost(self.c.policy.pricing, s.result, s.text) for s in steps), 8),
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


def build_graph(components: Components) -> Any:
    """The controller graph; it holds no state between requests."""
    controller = Controller(components)
    graph = StateGraph(RouterState)
    for name in ("guard", "classify", "decide", "specialist", "check"):
        graph.add_node(name, cast(Any, _timed(name, getattr(controller, name))))
    fallback = RunnableLambda(
        _timed("fallback", controller.fallback), afunc=_atimed("fallback", controller.afallback)
    )
    graph.add_node("fallback", cast(Any, fallback))
    graph.add_node("respond", controller.respond)
    graph.add_node("flow_step", cast(Any, controller.flow_step))
    graph.add_node("flow_join", controller.flow_join)
    graph.add_edge(START, "guard")
    graph.add_edge("guard", "classify")
    graph.add_edge("classify", "decide")
    graph.add_conditional_edges(
        "decide", controller.after_decide, ["specialist", "fallback", "respond", "flow_step"]
    )
    graph.add_edge("flow_step", "flow_join")
    graph.add_conditional_edges("flow_join", controller.after_join, ["flow_step", "respond"])
    graph.add_edge("specialist", "check")
    graph.add_conditional_edges("check", controller.after_check, ["fallback", "respond"])
    graph.add_edge("fallback", "respond")
    graph.add_edge("respond", END)
    return graph.compile()
