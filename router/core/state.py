"""The graph's state, every key declared, and the only keys a run can start from.

A run starts from `GraphInput` alone (LangGraph drops any other key given), so nothing of an earlier
request can enter one except the conversation's `history`, which is plain `Turn`s.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import numpy as np

from slm_router.agents.base import AgentResult
from slm_router.policies.schema import FlowConfig
from slm_router.router.core.conversations import Turn
from slm_router.router.core.flows import StepResult
from slm_router.router.core.index import RouteScores
from slm_router.router.core.intents import MultiIntent
from slm_router.router.core.rules import Decision, Escalation, Verdict
from slm_router.router.result import RouteRequest, RouteResult, TraceStep, Translation


class GraphInput(TypedDict):
    request: RouteRequest
    deadline: float
    history: list[Turn]


class GraphOutput(TypedDict):
    result: RouteResult
    history: list[Turn]


class RouterState(TypedDict, total=False):
    """Total=False: a node returns the keys it sets, and mypy rejects any key not declared here."""

    request: RouteRequest
    deadline: float
    history: list[Turn]
    text: str
    language: str
    language_confidence: float
    translation: Translation | None
    translation_cost: float
    embedding: np.ndarray
    scores: RouteScores
    multi: MultiIntent | None
    decision: Decision
    verdict: Verdict
    escalation: Escalation | None
    specialist: AgentResult | None
    specialist_error: str
    answer: AgentResult | None
    degraded: bool
    budget_exceeded: bool
    flow: FlowConfig
    flow_name: str
    flow_stage: int
    flow_text: str
    flow_steps: Annotated[list[StepResult], operator.add]
    trace: Annotated[list[TraceStep], operator.add]
    result: RouteResult


Info = dict[str, Any]
"""What a node reports in its `TraceStep` (the demo, the tests and the decision log read it)."""


def fresh_state(request: RouteRequest, deadline: float, history: list[Turn] | None = None) -> GraphInput:
    """The input of one request: its deadline (`time.monotonic()`) and the conversation's earlier turns."""
    return {"request": request, "deadline": deadline, "history": history or []}
