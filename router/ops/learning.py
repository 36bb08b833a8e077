"""Learn from escalations: requests the router was unsure about become new route examples.

Labels come from an operator (a JSONL file of text + route, e.g. `slm-router log export` with a route filled
in) or from the fallback model as a teacher: it is shown the router's top candidate routes with examples
and must name exactly one of them; anything else is not learned. The routes are refit (same embedder, the
calibration refit on the larger example set) and compared with the current policy on a held-out labelled
file, so the operator sees what the new examples buy before writing the policy (the distillation flywheel:
the large model's answers teach the small router, which then escalates less).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel

from slm_router.agents.base import AgentError
from slm_router.agents.fallback import FallbackAgent
from slm_router.policies import Policy, policy_from_dict
from slm_router.router.core.embedder import Embedder
from slm_router.router.core.flows import SENTIMENT_WORDS
from slm_router.router.core.index import RouteIndex, load_utterances
from slm_router.router.ops.evaluation import EvalReport, report, score

LEARNABLE = {"low_confidence", "low_margin", "ood", "fallback_route"}  # escalated by the router itself
TEACHER_PROMPT = (
    "Classify the customer's message into one of these request types. Reply with the type name only, "
    "exactly as written, or 'none' if no type fits.\n{options}"
)


class Example(BaseModel):
    text: str
    route: str
    source: str  # "operator" or "teacher"


class LearnResult(BaseModel):
    candidates: int
    learned: dict[str, int]
    skipped: int
    before: EvalReport
    after: EvalReport


def _normal(value: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "", value.lower())


def teach(
    rows: Iterable[dict[str, Any]],
    teacher: FallbackAgent,
    utterances: dict[str, list[str]],
    candidates: int = 5,
    progress: Callable[[], None] | None = None,
) -> tuple[list[Example], int]:
    """Ask the teacher to label logged escalations (rows of `DecisionLog.tail`, text included); returns the
    examples it labelled with one of the offered routes, and how many it did not."""
    learned: list[Example] = []
    skipped = 0
    for row in rows:
        if progress:
            progress()
        scores: dict[str, float] = row.get("scores") or {}
        offered = [r for r in sorted(scores, key=lambda r: -scores[r]) if r in utterances][:candidates]
        if not row.get("text") or not offered:
            skipped += 1
            continue
        options = "\n".join(
            f"- {r}: e.g. " + " | ".join(f'"{u}"' for u in utterances[r][:2]) for r in offered
        )
        try:
            reply = teacher.answer(row["text"], TEACHER_PROMPT.format(options=options)).output
        except AgentError:
            skipped += 1
            continue
        named = [r for r in offered if _normal(r) == _normal(reply.split("\n")[0])]
        if len(named) == 1:
            learned.append(Example(text=row["text"], route=named[0], source="teacher"))
        else:
            skipped += 1
    return learned, skipped


def sentiment_rows(
    examples: list[Example], routes: set[str], teacher: FallbackAgent, prompt: str | None
) -> list[dict[str, str]]:
    """Head training data: the teacher's sentiment label for each learned example of a sentiment route
    (rows for `slm-router train sentiment --extra`); answers without a label word are left out."""
    rows = []
    for ex in examples:
        if ex.route not in routes:
            continue
        try:
            said = SENTIMENT_WORDS.search(teacher.answer(ex.text, prompt).output)
        except AgentError:
            continue
        if said:
            rows.append({"text": ex.text, "label": said.group(1).lower()})
    return rows


def learnable_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Logged decisions worth learning from: escalated by the router's own doubt, with the text stored."""
    return [r for r in rows if r["escalated"] and r["reason_code"] in LEARNABLE and r.get("text")]


def with_examples(policy: Policy, examples: list[Example]) -> tuple[dict[str, Any], dict[str, int]]:
    """The policy (YAML-ready data) with the new examples added inline to their routes; duplicates of an
    existing example are dropped. Returns the data and how many examples each route gained."""
    current = load_utterances(policy)
    data = policy.portable_data()
    added: dict[str, int] = {}
    for ex in examples:
        route = data["routes"].get(ex.route)
        if route is None:
            raise ValueError(f"route {ex.route!r} is not in the policy; routes are {sorted(data['routes'])}")
        known = current.setdefault(ex.route, [])
        if ex.text.strip() and ex.text.strip() not in known:
            known.append(ex.text.strip())
            route.setdefault("utterances", []).append(ex.text.strip())
            added[ex.route] = added.get(ex.route, 0) + 1
    return data, added


def compare(
    policy: Policy,
    examples: list[Example],
    embedder: Embedder,
    heldout: tuple[list[str], list[str]],
    skipped: int = 0,
) -> tuple[LearnResult, dict[str, Any]]:
    """Refit the routes with the new examples and report both policies on the held-out rows."""
    data, added = with_examples(policy, examples)
    new_policy = policy_from_dict(data, base_dir=policy.base_dir)
    texts, routes = heldout
    results = []
    for p in (policy, new_policy):
        index = RouteIndex.from_policy(p, embedder)
        results.append(report(score(texts, routes, p, index, embedder, show_progress=False), p)[0])
    return (
        LearnResult(
            candidates=len(examples) + skipped,
            learned=added,
            skipped=skipped,
            before=results[0],
            after=results[1],
        ),
        data,
    )
