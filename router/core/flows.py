"""Flows: small declared graphs of agents (stages in order, steps of a stage in parallel), merged into one
typed result. Each step escalates on its own: a weak step goes to the fallback, the others stay local.
"""

from __future__ import annotations

import re
import time
from typing import Literal

from pydantic import BaseModel, Field

from slm_router.agents.base import (
    AgentError,
    AgentInput,
    AgentResult,
    Entity,
    ExtractionOutput,
    SentimentOutput,
)
from slm_router.agents.fallback import FallbackAgent
from slm_router.agents.hosting.local import AgentPool
from slm_router.policies import Policy
from slm_router.policies.schema import FlowConfig, FlowStep
from slm_router.router.core import telemetry
from slm_router.router.core.outputs import FlowOutput, StepOutput, TriageOutput
from slm_router.router.core.rules import Escalation, Evidence, FlowStepRef, SpecialistOutcome, escalation


def seconds_left(deadline: float) -> float:
    """Seconds before a request's deadline (a `time.monotonic()` value): node timeouts are cut to it."""
    return max(deadline - time.monotonic(), 0.0)


class StepTask(BaseModel):
    """What one `Send` carries to a flow step."""

    flow: str
    stage: int
    step: FlowStep
    text: str
    language: str
    deadline: float = Field(
        description="The request's deadline (`time.monotonic()`); the step never runs past it."
    )


class StepResult(BaseModel):
    agent: str
    stage: int
    result: AgentResult | None
    escalation: Escalation | None = None
    escalated: bool = False
    budget_exceeded: bool = False
    error: str | None = None
    text: str = ""
    ms: float

    def summary(self) -> StepOutput:
        output = self.result.output if self.result else ""
        confidence = None if self.escalated or self.result is None else round(self.result.confidence, 4)
        reason = self.error or (self.escalation.reason if self.escalation else None)
        return StepOutput(
            agent=self.agent, output=output, confidence=confidence, escalated=self.escalated, reason=reason
        )


def run_step(
    task: StepTask,
    pool: AgentPool,
    fallback: FallbackAgent | None,
    policy: Policy,
    over_budget: str | None = None,
) -> StepResult:
    """The agent, then `rules.escalation` for this step alone: the fallback when the step is too weak.

    `over_budget` says why the fallback is withheld (the escalation budget is spent)."""
    start = time.perf_counter()
    step = task.step
    result: AgentResult | None = None
    try:
        with telemetry.agent_span(step.agent):
            result = pool.run(
                step.agent,
                [AgentInput(text=task.text, language=task.language, params=step.params)],
                timeout_s=seconds_left(task.deadline),
            )[0]
        outcome = SpecialistOutcome(
            confidence=result.confidence, supported=result.supported, note=result.note
        )
    except AgentError as exc:
        outcome = SpecialistOutcome(error=str(exc))
    evidence = Evidence(
        step=FlowStepRef(flow=task.flow, step=step),
        specialist=outcome,
        has_fallback=fallback is not None,
        over_budget=over_budget,
    )
    verdict = escalation(evidence, policy)
    escalated = False
    if verdict.action == "fallback" and fallback is not None:
        try:
            with telemetry.agent_span("fallback"):
                result = fallback.answer(task.text, step.fallback_prompt, deadline=task.deadline)
            escalated = True
        except AgentError as exc:  # keep whatever the specialist said, and say the fallback failed
            verdict = escalation(evidence.model_copy(update={"fallback_error": str(exc)}), policy)
    return StepResult(
        agent=step.agent,
        stage=task.stage,
        result=result,
        escalation=verdict.escalation,
        escalated=escalated,
        budget_exceeded=verdict.flag == "budget_exceeded",
        error=verdict.error,
        text=task.text,
        ms=round((time.perf_counter() - start) * 1000, 3),
    )


def next_text(text: str, stage: list[FlowStep], results: list[StepResult]) -> str:
    """The text later stages work on: the output of a step marked `output_as_text`, if it produced one."""
    for step in stage:
        for r in results:
            if r.agent == step.agent and step.output_as_text and r.result is not None and r.result.output:
                return r.result.output
    return text


SENTIMENT_WORDS = re.compile(r"\b(negative|neutral|positive)\b", re.IGNORECASE)
_ORDER_LABELS = {"ORDER_ID", "TRACKING_NUMBER", "TICKET_ID"}
_BILLING_LABELS = {"MONEY", "CARD_NUMBER"}


def merge(
    name: str, flow: FlowConfig, results: list[StepResult], english_text: str, language: str
) -> tuple[str, FlowOutput | TriageOutput]:
    """One readable output and one typed record for the whole flow."""
    steps = [r.summary() for r in sorted(results, key=lambda r: r.stage)]
    if flow.merge == "steps":
        return "; ".join(f"{s.agent}: {s.output}" for s in steps), FlowOutput(flow=name, steps=steps)
    by_agent = {r.agent: r for r in results}
    sentiment, sentiment_conf = _sentiment(by_agent.get("sentiment"))
    entities = _entities(by_agent.get("extract"))
    labels = {e.label for e in entities}
    priority = _priority(sentiment, labels)
    queue = "billing" if labels & _BILLING_LABELS else "orders" if labels & _ORDER_LABELS else "general"
    record = TriageOutput(
        flow=name,
        language=language,
        english_text=english_text,
        sentiment=sentiment,
        sentiment_confidence=sentiment_conf,
        entities=entities,
        priority=priority,
        queue=queue,
        escalated_steps=[s.agent for s in steps if s.escalated],
        steps=steps,
    )
    found = ", ".join(f"{e.label} {e.text}" for e in entities) or "no entities"
    return f"priority {priority}, queue {queue}, sentiment {sentiment}; {found}", record


def _priority(sentiment: str | None, labels: set[str]) -> Literal["low", "normal", "high"]:
    """An unhappy customer with an order or money at stake comes first; a plain order question next."""
    if sentiment == "negative":
        return "high" if labels & (_ORDER_LABELS | _BILLING_LABELS) else "normal"
    return "normal" if labels & _ORDER_LABELS else "low"


def _sentiment(step: StepResult | None) -> tuple[str | None, float | None]:
    if step is None or step.result is None:
        return None, None
    if isinstance(step.result.details, SentimentOutput) and not step.escalated:
        return step.result.details.label, round(step.result.confidence, 4)
    found = SENTIMENT_WORDS.search(step.result.output)  # the fallback answered in words
    return (found.group(1).lower() if found else None), None


def _entities(step: StepResult | None) -> list[Entity]:
    if step is None or step.result is None or not isinstance(step.result.details, ExtractionOutput):
        return []
    return step.result.details.entities
