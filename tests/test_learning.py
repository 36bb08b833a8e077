"""`slm-router learn`: operator labels and teacher-labelled escalations become route examples; the policy is
written only when asked, and the before/after report is computed on held-out rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slm_router.agents.base import AgentResult
from slm_router.policies import DEFAULT_POLICY, Policy, load_policy
from slm_router.router.cli import app
from slm_router.router.core.index import load_utterances
from slm_router.router.ops.learning import (
    Example,
    compare,
    learnable_rows,
    sentiment_rows,
    teach,
    with_examples,
)
from slm_router.router.runnable import Router
from tests.conftest import policy_with

LABELS = [
    ("where is my parcel right now", "extract"),
    ("has my package shipped yet", "extract"),
    ("tracking for my delivery please", "extract"),
]
HELD_OUT = [
    ("where is my package", "extract"),
    ("has my order shipped", "extract"),
    ("I am so happy with the service", "sentiment"),
    ("Translate to Portuguese: good morning", "translate"),
    ("the migratory patterns of arctic terns", "oos"),
]


def _jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "route": r}) + "\n" for t, r in rows))
    return path


def test_new_examples_are_added_once_and_move_the_held_out_numbers(router: Router) -> None:
    examples = [Example(text=t, route=r, source="operator") for t, r in LABELS]
    existing = load_utterances(router.policy)["extract"][0]
    data, added = with_examples(
        router.policy, [*examples, Example(text=existing, route="extract", source="x")]
    )
    assert added == {"extract": 3} and data["routes"]["extract"]["utterances"][-1] == LABELS[-1][0]
    heldout = ([t for t, _ in HELD_OUT], [r for _, r in HELD_OUT])
    result, _ = compare(router.policy, examples, router.embedder, heldout)
    assert result.after.escalation_rate < result.before.escalation_rate
    assert result.after.in_scope_accuracy > result.before.in_scope_accuracy
    with pytest.raises(ValueError, match="route 'refunds' is not in the policy"):
        with_examples(router.policy, [Example(text="x", route="refunds", source="operator")])


class Teacher:
    """Stands in for the fallback: answers from a fixed table (the real model is tested through the CLI)."""

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies = replies

    def answer(self, text: str, task_prompt: str | None = None, history: object = None) -> AgentResult:
        assert task_prompt is not None and "- extract:" in task_prompt
        return AgentResult(agent="fallback", output=self.replies[text], confidence=1.0)


def test_teacher_labels_only_when_it_names_one_offered_route(router: Router) -> None:
    scores = {"extract": 0.4, "sentiment": 0.3, "other": 0.2}
    rows = [
        {"text": "a", "scores": scores, "escalated": True, "reason_code": "low_confidence"},
        {"text": "b", "scores": scores, "escalated": True, "reason_code": "low_confidence"},
        {"text": "c", "scores": scores, "escalated": True, "reason_code": "low_margin"},
        {"text": None, "scores": scores, "escalated": True, "reason_code": "low_confidence"},
        {"text": "d", "scores": scores, "escalated": True, "reason_code": "fallback_failed"},
        {"text": "e", "scores": scores, "escalated": False, "reason_code": "confident"},
    ]
    usable = learnable_rows(rows)
    assert [r["text"] for r in usable] == ["a", "b", "c"]
    teacher = Teacher({"a": "extract", "b": "Sentiment.\nBecause...", "c": "I think extract or sentiment"})
    learned, skipped = teach(usable, teacher, load_utterances(router.policy))  # type: ignore[arg-type]
    assert [(e.text, e.route) for e in learned] == [("a", "extract"), ("b", "sentiment")] and skipped == 1
    labeller = Teacher({"a": "negative", "b": "It is Positive."})
    rows_ = sentiment_rows(learned, {"sentiment"}, labeller, "- extract: the task")  # type: ignore[arg-type]
    assert rows_ == [{"text": "b", "label": "positive"}]  # only sentiment-route examples


def test_cli_reports_and_writes_only_when_asked(tmp_path: Path) -> None:
    runner = CliRunner()
    labels, held = _jsonl(tmp_path / "labels.jsonl", LABELS), _jsonl(tmp_path / "held.jsonl", HELD_OUT)
    out = tmp_path / "learned.yaml"
    dry = runner.invoke(app, ["learn", "--heldout", str(held), "--labels", str(labels), "--out", str(out)])
    assert dry.exit_code == 0, dry.output
    assert "extract +3" in dry.output and "escalation rate" in dry.output and not out.exists()
    wrote = runner.invoke(
        app, ["learn", "--heldout", str(held), "--labels", str(labels), "--out", str(out), "--write"]
    )
    assert wrote.exit_code == 0, wrote.output
    assert LABELS[0][0] in load_policy(out).routes["extract"].utterances
    again = runner.invoke(
        app, ["learn", "--heldout", str(held), "--labels", str(labels), "--out", str(out), "--write"]
    )
    assert again.exit_code == 2 and "--force" in again.output
    nothing = runner.invoke(app, ["learn", "--heldout", str(held)])
    assert nothing.exit_code == 2 and "--labels" in nothing.output
    live = runner.invoke(
        app,
        ["learn", "--heldout", str(held), "--labels", str(labels), "--write", "--out", str(DEFAULT_POLICY)],
    )
    assert live.exit_code == 2 and "is the policy in use" in " ".join(live.output.split())


def test_cli_learns_from_logged_escalations_with_the_real_fallback(
    router: Router, default_policy: Policy, tmp_path: Path
) -> None:
    db = tmp_path / "d.db"
    policy_file = tmp_path / "policy.yaml"
    conf = policy_with(default_policy, **{"decision_log.path": str(db), "privacy.log_text": True})
    policy_file.write_text(json.dumps(conf.portable_data()))
    r = Router(conf, embedder=router.embedder, pool=router.pool)
    for text in ("order status", "not sure how I feel about this order"):
        assert r.invoke(text).escalated
    r.close()
    held = _jsonl(tmp_path / "held.jsonl", HELD_OUT)
    head = tmp_path / "head.jsonl"
    result = CliRunner().invoke(
        app,
        ["learn", "-p", str(policy_file), "--heldout", str(held), "--from-log", "--head-data", str(head)],
    )
    assert result.exit_code == 0, result.output
    assert head.exists() and all(json.loads(line)["label"] for line in head.read_text().splitlines())
    assert "learned examples" in result.output and "not learned" in result.output
