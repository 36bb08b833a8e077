"""What a flow answers: the router's own output types, carried in `RouteResult.details` like an agent's."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from slm_router.agents.base import AgentOutput, Entity


class StepOutput(BaseModel):
    """One step of a flow, as the merged result reports it."""

    agent: str
    output: str
    confidence: float | None
    escalated: bool
    reason: str | None = None


class FlowOutput(AgentOutput):
    kind: Literal["flow"] = "flow"
    flow: str
    steps: list[StepOutput]


class TriageOutput(AgentOutput):
    """A support ticket, triaged by small models working together."""

    kind: Literal["triage"] = "triage"
    flow: str
    language: str
    english_text: str
    sentiment: str | None
    sentiment_confidence: float | None
    entities: list[Entity]
    priority: Literal["low", "normal", "high"]
    queue: Literal["billing", "orders", "general"]
    escalated_steps: list[str]
    steps: list[StepOutput]
