"""Learn from escalations: requests the router was unsure about become new route examples.

Labels come from an operator (a JSONL file of text + route, e.g. `slm-router log export` with a route filled
in) or from the fallback model as a teacher: it is shown the router's top candidate routes with examples
and must name exactly one of them; anything else is not learned. The routes are refit (same embedder, the
calibration refit on the larger example set) and compared with the current policy on a held-out labelled
file, so the operator sees what the new examples buy before writing the policy (the distillation flywheel:
the large model's answers teach the small router, which then escalates less). `learn_from_labels` does the
same with the console's review labels (`router/ops/review.py`), scored on a held-out split of them.
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
from slm_router.router.errors import SlmRouterError
from slm_router.router.ops.evaluation import EvalReport, report, score
from slm_router.router.ops.review import LabelledDecision
from slm_router.router.ops.training import split_of

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
    progress: Callable[[float], None] | None = None,
) -> tuple[LearnResult, dict[str, Any]]:
    """Refit the routes with the new examples and report both policies on the held-out rows; `progress`
    hears 0.5 after the current policy's report and 1.0 after the new one's."""
    data, added = with_examples(policy, examples)
    new_policy = policy_from_dict(data, base_dir=policy.base_dir)
    texts, routes = heldout
    results = []
    for done, p in ((0.5, policy), (1.0, new_policy)):
        index = RouteIndex.from_policy(p, embedder)
        results.append(report(score(texts, routes, p, index, embedder, show_progress=False), p)[0])
        if progress:
            progress(done)
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


class LearnError(SlmRouterError):
    """Labels cannot be learned from (no labels, or their text was not logged)."""


class LabelLearnResult(BaseModel):
    labelled: int
    with_text: int
    learned: dict[str, int]
    out_of_scope: int
    heldout: int
    heldout_is_split: bool  # False: too few labels to hold some out; scored on the learned labels themselves
    escalation_rate_before: float
    escalation_rate_after: float
    accuracy_before: float
    accuracy_after: float
    before: EvalReport
    after: EvalReport
    policy: dict[str, Any]  # the candidate policy (YAML-ready); nothing is written


def learn_from_labels(
    policy: Policy,
    embedder: Embedder,
    labelled: list[LabelledDecision],
    progress: Callable[[float], None] | None = None,
) -> LabelLearnResult:
    """Learn the operator's route labels as new examples and compare the candidate policy with `policy` on
    held-out labels (a stable hash split of the text, as `training.split_of`: calibration and test rows
    are held out). Out-of-scope labels are never learned as examples, only scored (the router should
    escalate them). With too few labels for both sides, both are the same rows, and the result says so.
    The labels need their text: `review.labels(log, show_text=True)` on a log with `privacy.log_text`."""
    if not labelled:
        raise LearnError("no labelled decisions yet: label some in the review queue first")
    rows = [d for d in labelled if d.text]
    if not rows:
        raise LearnError(
            f"none of the {len(labelled)} labelled decisions has its text in the decision log: text is "
            "logged only with privacy.log_text: true, so there is nothing to learn from"
        )
    unknown = sorted({d.label.route for d in rows if d.label.route and d.label.route not in policy.routes})
    if unknown:
        raise LearnError(f"labels name routes the policy does not have: {unknown}")

    def report_progress(done: float) -> None:
        if progress:
            progress(0.1 + 0.9 * done)

    if progress:
        progress(0.0)
    train = [d for d in rows if split_of(d.text or "") == "train"]
    held = [d for d in rows if split_of(d.text or "") != "train"]
    is_split = bool(held) and any(d.label.route for d in train)
    if not is_split:
        train = held = rows
    examples = [
        Example(text=d.text or "", route=d.label.route, source="operator") for d in train if d.label.route
    ]
    heldout = ([d.text or "" for d in held], [d.label.route or "oos" for d in held])
    if progress:
        progress(0.1)
    result, data = compare(policy, examples, embedder, heldout, progress=report_progress)
    return LabelLearnResult(
        labelled=len(labelled),
        with_text=len(rows),
        learned=result.learned,
        out_of_scope=sum(d.label.route is None for d in train),
        heldout=len(held),
        heldout_is_split=is_split,
        escalation_rate_before=result.before.escalation_rate,
        escalation_rate_after=result.after.escalation_rate,
        accuracy_before=result.before.in_scope_accuracy,
        accuracy_after=result.after.in_scope_accuracy,
        before=result.before,
        after=result.after,
        policy=data,
    )
