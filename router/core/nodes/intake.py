"""Intake: clean the text and detect its language (guard), then score it against the routes (classify).

A translated message (router/core/nodes/translate.py) is scored by its translation, as one intent: its
clauses would be English while the translation agent of a multi-intent step needs the source text.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

import numpy as np

from slm_router.agents.langid import detect_language
from slm_router.policies import Policy
from slm_router.router.core.components import Components
from slm_router.router.core.index import RouteScores
from slm_router.router.core.intents import detect, split_request
from slm_router.router.core.nodes.translate import routing_text
from slm_router.router.core.state import Info, RouterState
from slm_router.router.errors import EmptyInputError, InputTooLargeError

_CONTROL = {"Cc", "Cf"}
_KEEP = {"\n", "\t"}

FOLLOW_UP = re.compile(
    r"^\s*(and|also|what about|how about|same|it|that|this one|the other)\b", re.IGNORECASE
)


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


def guard(state: RouterState, c: Components) -> tuple[RouterState, Info]:
    text = normalise(state["request"].text, c.policy.limits.max_chars)
    language, conf = detect_language(text)
    info = {"chars": len(text), "language": language, "language_confidence": round(conf, 3)}
    return {"text": text, "language": language, "language_confidence": conf}, info


class EmbeddingInputs(NamedTuple):
    """What classify embeds for one request: its routing text, and the clauses of a request that asks for
    several things (two or more, else none) with the payload they apply to."""

    text: str
    clauses: list[str]
    payload: str

    @property
    def texts(self) -> list[str]:
        return [self.text, *self.clauses]


def embedding_inputs(state: RouterState, policy: Policy) -> EmbeddingInputs:
    """Shared by classify and the batch lane (router/core/batch.py), which embeds many requests' inputs
    in one forward pass."""
    text = routing_text(state)
    split = policy.router.multi_intent and not state["request"].route and not state.get("translation")
    clauses, payload = split_request(text) if split else ([], text)
    if len(clauses) >= 2 and detect_language(" ".join(clauses))[0] not in (*policy.languages.native, "und"):
        clauses = []  # an instruction in another language: the embedder reads English
    return EmbeddingInputs(text, clauses if len(clauses) >= 2 else [], payload)


def classify(state: RouterState, c: Components) -> tuple[RouterState, Info]:
    inputs = embedding_inputs(state, c.policy)
    vectors = c.embedder.encode_shared(inputs.texts)  # the clauses ride along in the request's forward pass
    return classified(state, c, inputs, vectors, c.index.score(vectors[0]))


def classified(
    state: RouterState, c: Components, inputs: EmbeddingInputs, vectors: np.ndarray, scores: RouteScores
) -> tuple[RouterState, Info]:
    """classify once the inputs are embedded (`vectors`, in `inputs.texts` order) and the first scored."""
    multi = detect(inputs.clauses, inputs.payload, vectors[1:], c.policy, c.index)
    context = _with_context(state, c, scores)
    if context is not None:
        scores = context
    info = {
        "used_context": context is not None,
        "multi_intent": multi.describe() if multi else None,
        "top": scores.top,
        "confidence": round(scores.confidence, 4),
        "margin": round(scores.margin, 4),
        "classifier": scores.classifier,
        "in_scope_p": scores.in_scope_p,
        "max_similarity": None if scores.max_similarity is None else round(scores.max_similarity, 4),
        "ood": scores.ood,
        "probabilities": scores.probabilities,
    }
    return {"embedding": vectors[0], "scores": scores, "multi": multi}, info


def _with_context(state: RouterState, c: Components, scores: RouteScores) -> RouteScores | None:
    """A follow-up ("and what about my other order?") is scored together with the previous turn; the
    context wins when it is confident and the message alone is not, or reads as a follow-up."""
    history = state.get("history") or []
    if not history:
        return None
    text = routing_text(state)
    alone_ok = not scores.ood and scores.confidence >= c.policy.threshold(scores.top)
    if alone_ok and not FOLLOW_UP.match(text):
        return None
    joined = c.index.score(c.embedder.encode_one(f"{history[-1].text}\n{text}"))
    if joined.ood or joined.confidence < c.policy.threshold(joined.top):
        return None
    return joined
