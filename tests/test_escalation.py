"""Escalation budget, shadow mode and cost estimates: the pure parts, then the real router and fallback."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slm_router.agents.base import AgentResult, Entity, ExtractionOutput, FallbackOutput, SentimentOutput
from slm_router.policies import Policy, PolicyError, policy_from_dict
from slm_router.policies.schema import BudgetConfig, PricingConfig
from slm_router.router.cli import app
from slm_router.router.core.budget import EscalationBudget
from slm_router.router.core.costs import answer_cost
from slm_router.router.ops.decision_log import DecisionLog
from slm_router.router.ops.shadow import agreement
from slm_router.router.runnable import Router
from tests.conftest import policy_with

AMBIGUOUS = "I have a problem with my last purchase"  # low confidence, top route `other` (the fallback's)
UNSURE = "not sure how I feel about this order"  # low confidence, top route `sentiment`
OFF_TOPIC = "What is the best way to grow tomatoes on a balcony?"  # out of distribution: no specialist
COMPLAINT = "I am really angry, my package arrived broken and nobody answers my emails!"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_share_cap_applies_after_min_requests_and_forgets_old_requests() -> None:
    clock = Clock()
    budget = EscalationBudget(BudgetConfig(max_share=0.5, min_requests=4, window_s=60), clock)
    for _ in range(3):
        budget.record(escalated=True)
    assert budget.allows()[0]  # 3 < min_requests: too few to judge a share
    budget.record(escalated=False)
    allowed, why = budget.allows()
    assert not allowed and "75.0% of the last 4 requests" in why and "max_share" in why
    assert budget.retry_after_s() == 60  # when the oldest escalation leaves the window
    clock.now += 61  # the window slides past them
    assert budget.allows()[0] and budget.usage() == (0.0, 0.0, 0)
    assert budget.retry_after_s() is None
    never = EscalationBudget(BudgetConfig(max_share=0.0, min_requests=2, window_s=60), clock)
    never.record(escalated=False)
    clock.now += 10
    never.record(escalated=False)  # refused with no escalation in the window: lifts when one request leaves
    assert not never.allows()[0] and never.retry_after_s() == 50


def test_cost_cap_counts_shadow_spend_over_an_hour() -> None:
    clock = Clock()
    budget = EscalationBudget(BudgetConfig(max_cost_per_hour=1.0, window_s=60), clock)
    budget.record(escalated=True, cost=0.6)
    clock.now += 120  # past the share window, still inside the hour
    assert budget.allows()[0]
    budget.charge(0.5)
    allowed, why = budget.allows()
    assert not allowed and "max_cost_per_hour" in why
    wait = budget.retry_after_s()
    assert wait == 3600 - 120  # the first 0.6 leaves the hour, and 0.5 is under the cap
    clock.now += wait - 1
    assert not budget.allows()[0]
    clock.now += 1.1
    assert budget.allows()[0] and budget.retry_after_s() is None


def test_pricing_and_answer_cost() -> None:
    pricing = PricingConfig(models={"fallback": {"per_request": 0.01, "per_1k_output_tokens": 1.0}})
    reported = AgentResult(
        agent="fallback",
        output="x" * 400,
        confidence=1.0,
        details=FallbackOutput(model="m", redacted=False, input_chars=40, output_chars=400, output_tokens=50),
    )
    assert answer_cost(pricing, reported, "hi") == pytest.approx(0.01 + 50 / 1000)  # provider tokens win
    estimated = reported.model_copy(
        update={"details": FallbackOutput(model="m", redacted=False, output_chars=400)}
    )
    assert answer_cost(pricing, estimated, "hi") == pytest.approx(0.01 + 100 / 1000)  # 400 chars / 4
    local = AgentResult(agent="sentiment", output="negative", confidence=0.9)
    assert answer_cost(pricing, local, "hi") == 0.0 and answer_cost(pricing, None, "hi") == 0.0


def test_budget_and_pricing_are_validated_with_field_names(default_policy: Policy) -> None:
    data = default_policy.model_dump(mode="json", exclude_none=True)
    data["escalation"] = {"budget": {"max_share": 1.5, "when_exceeded": "queue"}}
    with pytest.raises(PolicyError) as info:
        policy_from_dict(data)
    text = str(info.value)
    assert "escalation.budget.max_share" in text and "escalation.budget.when_exceeded" in text
    assert "'specialist' or 'reject'" in text


def test_agreement_reads_labels_for_sentiment_and_chrf_otherwise() -> None:
    negative = SentimentOutput(label="negative", probabilities={"negative": 0.9})
    assert agreement("negative", negative, "The message is negative: the parcel broke.") == 1.0
    assert agreement("negative", negative, "Positive, although not negative in tone.") == 0.0
    assert agreement("negative", negative, "I cannot tell.") == 0.0
    entities = ExtractionOutput(
        entities=[
            Entity(label=label, text=text, start=0, end=len(text), score=0.99, source="pattern")
            for label, text in (("ORDER_ID", "A12345"), ("MONEY", "$49.99"))
        ]
    )
    found = "ORDER_ID A12345; MONEY $49.99"
    assert agreement(found, entities, "The order number is A12345 and the amount is $49.99.") == 1.0
    assert agreement(found, entities, "The order is a12345.") == 0.5
    translation = "O meu pedido ainda não chegou."
    assert agreement(translation, None, "Meu pedido ainda não chegou.") > 0.7
    assert agreement(translation, None, "Olá, tudo bem?") < 0.3
    assert agreement("", None, "") == 1.0 and agreement("", None, "something") == 0.0


@pytest.fixture(scope="module")
def spent(router: Router, default_policy: Policy) -> Iterator[Router]:
    """A router whose budget is spent from the first request: every escalation hits the cap."""
    conf = policy_with(
        default_policy,
        **{"escalation.budget": {"max_share": 0.0, "min_requests": 1}, "decision_log.enabled": False},
    )
    r = Router(conf, embedder=router.embedder, pool=router.pool)
    r.invoke(COMPLAINT)
    yield r


def test_over_budget_answers_with_the_best_guess_specialist_and_flags_it(
    spent: Router, router: Router
) -> None:
    normal = router.invoke(UNSURE)
    assert normal.escalated and normal.answered_by == "fallback" and normal.cost > 0
    result = spent.invoke(UNSURE)
    assert result.budget_exceeded and not result.escalated and result.reason_code == "budget_exceeded"
    assert result.answered_by == result.route == "sentiment" and result.output
    assert "max_share" in result.reason and result.cost == 0.0


def test_over_budget_rejects_what_no_specialist_serves(spent: Router) -> None:
    for text in (OFF_TOPIC, AMBIGUOUS):
        result = spent.invoke(text)
        assert (
            result.action == "reject" and result.budget_exceeded and result.reason_code == "budget_exceeded"
        )


def test_over_budget_reject_policy(router: Router, default_policy: Policy) -> None:
    conf = policy_with(
        default_policy,
        **{
            "escalation.budget": {"max_share": 0.0, "min_requests": 1, "when_exceeded": "reject"},
            "decision_log.enabled": False,
        },
    )
    r = Router(conf, embedder=router.embedder, pool=router.pool)
    r.invoke(COMPLAINT)
    result = r.invoke(UNSURE)
    assert result.action == "reject" and result.budget_exceeded and result.output == ""
    assert r.invoke(COMPLAINT).action == "specialist"  # confident requests are untouched


def test_shadow_mode_records_agreement(router: Router, default_policy: Policy, tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    conf = policy_with(default_policy, **{"escalation.shadow.sample_rate": 1.0, "decision_log.path": str(db)})
    r = Router(conf, embedder=router.embedder, pool=router.pool)
    first = r.invoke(COMPLAINT)
    r.invoke(AMBIGUOUS)  # escalated: not a specialist answer, never shadowed
    assert r.shadow is not None and first.action == "specialist"
    r.shadow.drain()
    stats = DecisionLog(db).stats()
    assert stats.shadow_samples == {first.route: 1}
    assert 0.0 <= stats.shadow_agreement[first.route] <= 1.0
    assert stats.cost > 0  # the escalated request's fallback call
    r.close()
    shown = " ".join(CliRunner().invoke(app, ["log", "stats", "--db", str(db)]).output.split())
    assert "shadow mode" in shown and "estimated cost" in shown and first.route in shown


def test_an_older_log_gains_the_new_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, "
            "route TEXT NOT NULL, action TEXT NOT NULL, answered_by TEXT NOT NULL, "
            "escalated INTEGER NOT NULL, "
            "reason_code TEXT NOT NULL, reason TEXT NOT NULL, confidence REAL NOT NULL, "
            "specialist_confidence REAL, total_ms REAL NOT NULL, language TEXT NOT NULL, text TEXT, "
            "text_sha256 TEXT NOT NULL, nodes_json TEXT NOT NULL, scores_json TEXT NOT NULL, "
            "conversation_id TEXT)"
        )
        conn.execute(
            "INSERT INTO decisions (ts, route, action, answered_by, escalated, reason_code, reason, "
            "confidence, total_ms, language, text_sha256, nodes_json, scores_json) VALUES "
            "(1, 'sentiment', 'specialist', 'sentiment', 0, 'confident', 'ok', 0.9, 5, 'en', 'h', '{}', '{}')"
        )
    log = DecisionLog(db)
    stats = log.stats()
    assert stats.total == 1 and stats.cost == 0.0 and stats.budget_exceeded == 0
    assert log.tail(1)[0]["cost"] == 0.0
