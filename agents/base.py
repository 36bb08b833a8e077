"""The contract every specialist honours, so the controller and the pools can treat them alike."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class AgentInput(BaseModel):
    """One request for an agent. The embedding is the router's, passed along so it is computed once."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str
    language: str | None = None
    embedding: np.ndarray | None = Field(default=None, exclude=True)
    params: dict[str, Any] = Field(default_factory=dict)


class SentimentOutput(BaseModel):
    kind: Literal["sentiment"] = "sentiment"
    label: str
    probabilities: dict[str, float]


class Entity(BaseModel):
    label: str
    text: str
    start: int
    end: int
    score: float
    source: Literal["pattern", "model"]


class ExtractionOutput(BaseModel):
    kind: Literal["extraction"] = "extraction"
    entities: list[Entity]


class TranslationOutput(BaseModel):
    kind: Literal["translation"] = "translation"
    source_language: str
    target_language: str
    source_text: str
    translation: str | None
    backend: str | None


class FallbackOutput(BaseModel):
    kind: Literal["fallback"] = "fallback"
    model: str
    redacted: bool
    redactions: int = 0
    input_chars: int = 0
    output_chars: int = 0
    input_tokens: int | None = Field(default=None, description="As reported by the provider, when it does.")
    output_tokens: int | None = None


class StepOutput(BaseModel):
    """One step of a flow, as the merged result reports it."""

    agent: str
    output: str
    confidence: float | None
    escalated: bool
    reason: str | None = None


class FlowOutput(BaseModel):
    kind: Literal["flow"] = "flow"
    flow: str
    steps: list[StepOutput]


class TriageOutput(BaseModel):
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


class GenericOutput(BaseModel):
    """For custom agents whose output has no built-in shape."""

    kind: Literal["generic"] = "generic"
    data: dict[str, Any] = Field(default_factory=dict)


AgentDetails = Annotated[
    SentimentOutput
    | ExtractionOutput
    | TranslationOutput
    | FallbackOutput
    | FlowOutput
    | TriageOutput
    | GenericOutput,
    Field(discriminator="kind"),
]


class AgentResult(BaseModel):
    """What a specialist answers: a readable output, its structured details, and how sure it is.

    `supported=False` means the agent cannot do this request at all (e.g. an unknown language pair);
    the controller escalates instead of trusting a made-up answer.
    """

    agent: str
    output: str
    details: AgentDetails | None = None
    confidence: float = Field(ge=0.0, le=1.0)
    supported: bool = True
    note: str | None = None


@runtime_checkable
class Agent(Protocol):
    """A specialist: batched prediction with its own confidence. Knows nothing about policies."""

    name: str

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]: ...


class AgentError(RuntimeError):
    """A specialist failed on a request (crash, timeout, missing model)."""

    def __init__(self, agent: str, message: str) -> None:
        super().__init__(f"agent {agent!r}: {message}")
        self.agent = agent


class AgentOverloaded(AgentError):
    """An agent pool refused work because it is full (its queue bound is reached): retry later.

    Raised at once instead of queueing behind a backlog, so callers can shed load (HTTP 503/429 with
    Retry-After) rather than wait out a timeout.
    """

    def __init__(self, agent: str, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(agent, message)
        self.retry_after_s = retry_after_s
