"""The review queue and operator labels: decisions the router doubted, and what an operator says they were.

A decision is worth a look when it escalated (or was rejected: the fallback may be off), when its top two
routes were close (`low_margin`) or when shadow mode saw the specialist disagree with the fallback. Labels
(the right route, or out of scope, and for sentiment/extraction the right answer) are stored in the
decision log's own SQLite file, so retention and "forget this conversation" remove them with their
decision. Text and answers are returned only when the caller says the privacy policy allows it
(`show_text`), and are stored only when `privacy.log_text` was on.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from slm_router.router.errors import SlmRouterError
from slm_router.router.ops.decision_log import DecisionLog, scrub_quotes

QueueKind = Literal["escalated", "low_margin", "shadow_disagree"]
DISAGREE_BELOW = 0.5  # shadow agreement (0-1) under which the specialist and the fallback disagree
TOP_ROUTES = 3


class ReviewError(SlmRouterError):
    """A label cannot be saved: unknown decision, unknown route, or contradictory fields."""


class Label(BaseModel):
    """What an operator says a decision should have been: a route, or out of scope (route None)."""

    decision_id: int
    route: str | None = None
    out_of_scope: bool = False
    answer: str | None = Field(default=None, description="The right answer (sentiment label, entities, ...).")

    @model_validator(mode="after")
    def _one_of(self) -> Label:
        if self.out_of_scope and self.route is not None:
            raise ValueError("route: an out-of-scope label has no route (send route null)")
        if not self.out_of_scope and self.route is None:
            raise ValueError("route: name the right route, or set out_of_scope")
        return self


class QueueItem(BaseModel):
    decision_id: int
    ts: float
    kinds: list[QueueKind]
    route: str
    action: str
    answered_by: str
    reason: str
    reason_code: str
    confidence: float
    margin: float | None
    top_routes: list[tuple[str, float]]
    answer: str | None = Field(description="The answer given; None unless stored and show_text.")
    text: str | None = Field(description="The request text; None unless stored and show_text.")
    shadow_agreement: float | None
    label: Label | None


class LabelledDecision(BaseModel):
    """A labelled decision with what the router did, for learning and what-if accuracy."""

    decision_id: int
    ts: float
    text: str | None
    routed: str
    escalated: bool
    reason_code: str
    confidence: float
    scores: dict[str, float]
    label: Label
    labelled_by: str
    labelled_at: float


def _label(row: sqlite3.Row, show_text: bool) -> Label | None:
    if row["label_ts"] is None:
        return None
    route = row["label_route"]
    answer = row["label_answer"] if show_text else None
    return Label(decision_id=row["id"], route=route, out_of_scope=route is None, answer=answer)


def _top(scores_json: str) -> list[tuple[str, float]]:
    scores: dict[str, float] = json.loads(scores_json)
    return sorted(((r, round(float(p), 4)) for r, p in scores.items()), key=lambda rp: -rp[1])[:TOP_ROUTES]


def save_label(log: DecisionLog, label: Label, labelled_by: str, routes: list[str]) -> None:
    """Store (or replace) the label of one decision. `labelled_by` is a fingerprint of the operator's key,
    never the key; `routes` are the policy's routes the label must name."""
    if label.route is not None and label.route not in routes:
        raise ReviewError(f"route {label.route!r} is not in the policy; routes are {sorted(routes)}")
    if not log.query("SELECT 1 FROM decisions WHERE id = ?", (label.decision_id,)):
        raise ReviewError(f"no decision {label.decision_id} in the log (pruned or forgotten?)")
    log.execute(
        "INSERT OR REPLACE INTO labels (decision_id, route, answer, labelled_by, ts) VALUES (?, ?, ?, ?, ?)",
        (label.decision_id, label.route, label.answer, labelled_by, time.time()),
    )


def queue(
    log: DecisionLog, limit: int = 50, show_text: bool = False, margin_below: float = 0.1
) -> list[QueueItem]:
    """Decisions worth reviewing, unlabelled first, newest first."""
    rows = log.query(
        "SELECT d.id, d.ts, d.route, d.action, d.answered_by, d.escalated, d.reason, d.reason_code, "
        "d.confidence, d.margin, d.scores_json, d.text, d.output, s.agreement, "
        "l.route AS label_route, l.answer AS label_answer, l.ts AS label_ts "
        "FROM decisions d "
        "LEFT JOIN (SELECT decision_id, MIN(agreement) AS agreement FROM shadow "
        "WHERE decision_id IS NOT NULL GROUP BY decision_id) s ON s.decision_id = d.id "
        "LEFT JOIN labels l ON l.decision_id = d.id "
        "WHERE d.escalated = 1 OR d.action = 'reject' OR d.margin < ? OR s.agreement < ? "
        "ORDER BY l.ts IS NOT NULL, d.id DESC LIMIT ?",
        (margin_below, DISAGREE_BELOW, limit),
    )
    items = []
    for r in rows:
        kinds: list[QueueKind] = []
        if r["escalated"] or r["action"] == "reject":
            kinds.append("escalated")
        if r["margin"] is not None and r["margin"] < margin_below:
            kinds.append("low_margin")
        if r["agreement"] is not None and r["agreement"] < DISAGREE_BELOW:
            kinds.append("shadow_disagree")
        items.append(
            QueueItem(
                decision_id=r["id"],
                ts=r["ts"],
                kinds=kinds,
                route=r["route"],
                action=r["action"],
                answered_by=r["answered_by"],
                reason=r["reason"] if show_text else scrub_quotes(r["reason"]),
                reason_code=r["reason_code"],
                confidence=r["confidence"],
                margin=r["margin"],
                top_routes=_top(r["scores_json"]),
                answer=r["output"] if show_text else None,
                text=r["text"] if show_text else None,
                shadow_agreement=r["agreement"],
                label=_label(r, show_text),
            )
        )
    return items


def labels(log: DecisionLog, show_text: bool = False) -> list[LabelledDecision]:
    """Every labelled decision, oldest label first. Learning needs the text: pass
    `show_text=policy.privacy.log_text` (text is only stored when that was on anyway)."""
    rows = log.query(
        "SELECT d.id, d.ts, d.text, d.route, d.escalated, d.reason_code, d.confidence, d.scores_json, "
        "l.route AS label_route, l.answer AS label_answer, l.ts AS label_ts, l.labelled_by "
        "FROM labels l JOIN decisions d ON d.id = l.decision_id ORDER BY l.ts"
    )
    out = []
    for r in rows:
        label = _label(r, show_text)
        if label is None:
            continue
        out.append(
            LabelledDecision(
                decision_id=r["id"],
                ts=r["ts"],
                text=r["text"] if show_text else None,
                routed=r["route"],
                escalated=bool(r["escalated"]),
                reason_code=r["reason_code"],
                confidence=r["confidence"],
                scores=json.loads(r["scores_json"]),
                label=label,
                labelled_by=r["labelled_by"],
                labelled_at=r["label_ts"],
            )
        )
    return out
