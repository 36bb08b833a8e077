"""Multi-intent requests: "translate this and tell me how angry the customer is: ...".

Detection is per-clause routing: the instruction is split into clauses at "and", "also", "then" and ";"
(when the instruction is in a native language), each clause is embedded and scored like a request, and
when two or more clauses route confidently to different specialist routes, all of them run (as a flow).
`router.multi_intent: false` turns it off.
"""

from __future__ import annotations

import re

import numpy as np
from pydantic import BaseModel

from slm_router.agents.translation import requested_target
from slm_router.policies import Policy
from slm_router.policies.schema import FlowConfig, FlowStep
from slm_router.router.core.index import RouteIndex

# Only explicit coordination splits: sentence ends alone would make most multi-sentence messages pay for
# clause scoring (an extra embedding per clause) without asking for two things.
_SPLIT = re.compile(r"\s*(?:,?\s+and\s+(?:also\s+)?|,?\s+also\s+|,?\s+then\s+|;\s*)", re.I)


class Intent(BaseModel):
    clause: str
    route: str
    confidence: float


class MultiIntent(BaseModel):
    intents: list[Intent]
    payload: str

    @property
    def route(self) -> str:
        return "+".join(i.route for i in self.intents)

    @property
    def confidence(self) -> float:
        return min(i.confidence for i in self.intents)

    def describe(self) -> str:
        """Routes and confidences by clause number: reasons are logged, so they never quote the text."""
        parts = ", ".join(
            f"clause {n} -> {i.route} ({i.confidence:.2f})" for n, i in enumerate(self.intents, 1)
        )
        return f"multi-intent: {parts}"


def split_request(text: str) -> tuple[list[str], str]:
    """Clauses of the instruction, and the payload they apply to (after a colon, else the whole text)."""
    head, colon, tail = text.partition(":")
    instruction, payload = (
        (head, tail.strip()) if colon and tail.strip() and len(head) < 200 else (text, text)
    )
    clauses = [c.strip(" ,.") for c in _SPLIT.split(instruction)]
    return [c for c in clauses if len(c.split()) >= 2], payload


def detect(
    clauses: list[str], payload: str, vectors: np.ndarray, policy: Policy, index: RouteIndex
) -> MultiIntent | None:
    """`vectors` are the clauses' embeddings (computed with the request's own, in one forward pass)."""
    if len(clauses) < 2:
        return None
    found: dict[str, Intent] = {}
    for clause, scores in zip(clauses, index.score_many(vectors), strict=True):
        route = policy.routes[scores.top]
        if route.agent and not scores.ood and scores.confidence >= policy.threshold(scores.top):
            found.setdefault(
                scores.top, Intent(clause=clause, route=scores.top, confidence=scores.confidence)
            )
    return MultiIntent(intents=list(found.values()), payload=payload) if len(found) >= 2 else None


def _params(intent: Intent) -> dict[str, str]:
    """The clause may name what the payload alone cannot, e.g. the target language of a translation."""
    target = requested_target(intent.clause)
    return {"target_language": target} if target else {}


def as_flow(multi: MultiIntent, policy: Policy) -> FlowConfig:
    """One step per intent. A translation *into English* runs first and the others read its output;
    anything else runs side by side on the payload."""
    steps = []
    for intent in multi.intents:
        route = policy.routes[intent.route]
        params = _params(intent)
        steps.append(
            FlowStep(
                agent=route.agent or "",
                params=params,
                min_confidence=route.min_confidence or 0.0,
                fallback_prompt=route.fallback_prompt,
                output_as_text=route.agent == "translate" and params.get("target_language", "en") == "en",
            )
        )
    first = [s for s in steps if s.output_as_text]
    rest = [s for s in steps if not s.output_as_text]
    return FlowConfig(stages=[first, rest] if first and rest else [steps], merge="steps")
