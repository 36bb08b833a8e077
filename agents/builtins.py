"""The built-in specialists' factories: each builds its agent from its config section and the shared parts.

A config section is read as plain attributes (the protocols below), so agents never import the policy
package; `policies.schema` `agents.sentiment`, `agents.extract` and `agents.translate` satisfy them as they
are. The registry (`agents/registry.py`) registers these factories like any custom agent's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from slm_router.agents.base import Agent
from slm_router.agents.extraction import ExtractionAgent
from slm_router.agents.sentiment import SentimentAgent
from slm_router.agents.translation import (
    FastTranslateBackend,
    Seq2SeqBackend,
    TranslationAgent,
    TranslationBackend,
)

if TYPE_CHECKING:
    from slm_router.agents.registry import SharedParts


class SentimentConfig(Protocol):
    @property
    def backend(self) -> Literal["model", "head"]: ...
    @property
    def path(self) -> str | None: ...
    @property
    def int8(self) -> bool: ...


class ExtractionConfig(Protocol):
    @property
    def spacy_model(self) -> str: ...
    @property
    def tagger(self) -> str | None: ...
    @property
    def use_tagger(self) -> bool: ...


class Seq2SeqModelConfig(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def pairs(self) -> Sequence[str]: ...


class TranslationConfig(Protocol):
    @property
    def fast_translate(self) -> bool: ...
    @property
    def seq2seq(self) -> Sequence[Seq2SeqModelConfig]: ...
    @property
    def default_target(self) -> str: ...
    @property
    def max_chars(self) -> int: ...
    @property
    def chunk_chars(self) -> int: ...


def sentiment(config: SentimentConfig, parts: SharedParts) -> SentimentAgent:
    """The head backend reads the router's own vector; the model backend runs its own fine-tuned encoder."""
    path = parts.resolve(config.path) if config.path else None
    return SentimentAgent(parts.encode, config.backend, path, int8=config.int8)


def extraction(config: ExtractionConfig, parts: SharedParts) -> ExtractionAgent:
    tagger = parts.resolve(config.tagger) if config.tagger else None
    return ExtractionAgent(config.spacy_model, tagger=tagger, use_tagger=config.use_tagger)


def translation(config: TranslationConfig, parts: SharedParts) -> TranslationAgent:
    """Backends in the order they are tried: the packaged engine first, then the configured seq2seq models."""
    backends: list[TranslationBackend] = [FastTranslateBackend()] if config.fast_translate else []
    backends += [Seq2SeqBackend(str(parts.resolve(s.path)), s.pairs) for s in config.seq2seq]
    return TranslationAgent(
        backends,
        default_target=config.default_target,
        max_chars=config.max_chars,
        chunk_chars=config.chunk_chars,
        timeout_s=parts.timeout_s,
    )


BUILTIN_FACTORIES: dict[str, Callable[[Any, SharedParts], Agent]] = {
    "sentiment": sentiment,
    "extract": extraction,
    "translate": translation,
}
"""Keyed by agent name, which is also the name of the agent's section in a policy's `agents`."""
