"""The typed request and result at the boundary of the Python API, the CLI and (later) HTTP."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from agents.base import AgentDetails
from router.decision import ReasonCode


class RouteRequest(BaseModel):
    text: str
    route: str | None = Field(default=None, description="Force this route (skips the router's choice).")
    conversation_id: str | None = Field(
        default=None, max_length=200, description="Earlier turns of this conversation help route follow-ups."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Passed to the agent, e.g. target_language."
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Carried through to the result.")


class TraceStep(BaseModel):
    node: str
    ms: float
    info: dict[str, Any] = Field(default_factory=dict)


class RouteResult(BaseModel):
    """One routed request: who answered, how sure each step was, and why it went where it went."""

    route: str
    action: Literal["specialist", "flow", "fallback", "reject"]
    output: str
    details: AgentDetails | None = None
    answered_by: str
    confidence: float = Field(description="Calibrated router probability of `route` (the chosen route).")
    specialist_confidence: float | None = Field(default=None, description="The specialist's own confidence.")
    escalated: bool
    reason: str
    reason_code: ReasonCode = Field(description="Stable label of `reason`, for metrics and dashboards.")
    language: str
    degraded: bool = Field(
        default=False, description="True when the fallback failed and a weaker answer was kept."
    )
    budget_exceeded: bool = Field(
        default=False, description="The escalation budget was spent: answered locally (or rejected) instead."
    )
    cost: float = Field(default=0.0, description="Estimated cost of the models called (pricing.currency).")
    metadata: dict[str, Any] = Field(default_factory=dict)
    trace: list[TraceStep]
    total_ms: float
