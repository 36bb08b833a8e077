"""The contract every specialist honours, so the controller and the pools can treat them alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    SerializeAsAny,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic.types import GetPydanticSchema
from pydantic_core import CoreSchema, core_schema


class AgentInput(BaseModel):
    """One request for an agent. The embedding is the router's, passed along so it is computed once."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str
    language: str | None = None
    embedding: np.ndarray | None = Field(default=None, exclude=True)
    params: dict[str, Any] = Field(default_factory=dict)


_OUTPUT_TYPES: dict[str, type[AgentOutput]] = {}


def _register(kind: str, cls: type[AgentOutput]) -> None:
    """One type per kind, or JSON could not tell them apart. The same class defined again (a module
    reloaded, a class unpickled by value in a Ray worker) replaces its earlier self."""
    known = _OUTPUT_TYPES.get(kind)
    if known is not None and _qualified(known) != _qualified(cls):
        raise TypeError(f"output kind {kind!r} of {_qualified(cls)} is already taken by {_qualified(known)}")
    _OUTPUT_TYPES[kind] = cls


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class AgentOutput(BaseModel):
    """The structured half of an answer. Subclass it, with a default `kind`, to give an agent typed output.

    Each concrete subclass is registered under its `kind`, so the type comes back from JSON (the HTTP
    response, a client's `RouteResult.model_validate`) and not only from pickles (the Ray pool):

        class RefundOutput(AgentOutput):
            kind: Literal["refund"] = "refund"
            order: str | None
    """

    kind: str

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        kind = cls.model_fields["kind"].default
        if isinstance(kind, str):  # a base for other outputs leaves `kind` open and is not registered
            _register(kind, cls)


class UnknownOutput(AgentOutput):
    """Output of a kind this process has no type for (a client without the agent's code): kept as data."""

    model_config = ConfigDict(extra="allow")


def output_types() -> dict[str, type[AgentOutput]]:
    """Every output type by kind: those of this package and of every agent imported so far."""
    return dict(_OUTPUT_TYPES)


def _by_kind(value: Any, handler: ValidatorFunctionWrapHandler) -> AgentOutput:
    """An output object stays as it is; a mapping becomes the type its `kind` names, else UnknownOutput."""
    if isinstance(value, AgentOutput):
        return value
    kind = value.get("kind") if isinstance(value, Mapping) else None
    if isinstance(kind, str):
        return _OUTPUT_TYPES.get(kind, UnknownOutput).model_validate(value)
    result: AgentOutput = handler(value)  # the base's own error: not an object, or no kind
    return result


def _any_of_known(_: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
    """Documents every output type registered when the schema is made, then any other kind."""
    known = [cls.__pydantic_core_schema__ for _, cls in sorted(_OUTPUT_TYPES.items())]
    # Handed over as one union, so each model becomes a named definition rather than an inlined copy.
    return handler(core_schema.union_schema([*known, UnknownOutput.__pydantic_core_schema__]))


AgentDetails = Annotated[
    SerializeAsAny[AgentOutput],
    WrapValidator(_by_kind),
    GetPydanticSchema(get_pydantic_json_schema=_any_of_known),
]
"""The type of an answer's `details`: open to every `AgentOutput` subclass, serialized with its own fields."""


class SentimentOutput(AgentOutput):
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


class ExtractionOutput(AgentOutput):
    kind: Literal["extraction"] = "extraction"
    entities: list[Entity]


class TranslationOutput(AgentOutput):
    kind: Literal["translation"] = "translation"
    source_language: str
    target_language: str
    source_text: str
    translation: str | None
    backend: str | None


class FallbackOutput(AgentOutput):
    kind: Literal["fallback"] = "fallback"
    model: str
    redacted: bool
    redactions: int = 0
    input_chars: int = 0
    output_chars: int = 0
    input_tokens: int | None = Field(default=None, description="As reported by the provider, when it does.")
    output_tokens: int | None = None


class GenericOutput(AgentOutput):
    """For custom agents whose output needs no type of its own."""

    kind: Literal["generic"] = "generic"
    data: dict[str, Any] = Field(default_factory=dict)


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


class AgentTimeout(AgentError):
    """A pool stopped waiting for an agent. The call itself may still be running (a thread or a Ray replica
    cannot be interrupted), so a model that was loading is loaded afterwards: start-up warm-up retries."""


class AgentOverloaded(AgentError):
    """An agent pool refused work because it is full (its queue bound is reached): retry later.

    Raised at once instead of queueing behind a backlog, so callers can shed load (HTTP 503/429 with
    Retry-After) rather than wait out a timeout.
    """

    def __init__(self, agent: str, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(agent, message)
        self.retry_after_s = retry_after_s
