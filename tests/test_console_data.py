"""The console's data layer over real decision logs: retention and "forget me", labels and the review queue,
overview and quality aggregates, what-if replays and learning from labels. Decisions come from a real Router
(fallback disabled, so escalations are rejections and no LLM runs) writing through `DecisionLog.record`."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from slm_router.policies import Policy
from slm_router.router.cli import app
from slm_router.router.ops import overview, review, whatif
from slm_router.router.ops.decision_log import SCHEMA, DecisionLog, DecisionLogError
from slm_router.router.ops.learning import LearnError, learn_from_labels
from slm_router.router.ops.review import Label, ReviewError
from slm_router.router.ops.shadow import ShadowRecord
from slm_router.router.runnable import Router
from tests.conftest import policy_with

CONFIDENT = [
    "I am really angry, my package arrived broken and nobody answers my emails!",
    "Order #A12345 was charged $49.99 twice, please refund me at jane.doe@example.com",
    "Translate to Portuguese: good morning, how are you?",
    "I love this product, thank you so much!",
]
DOUBTFUL = [
    "where is my parcel right now",
    "has my package shipped yet",
    "tracking for my delivery please",
    "What is the best way to grow tomatoes on a balcony?",
    "the migratory patterns of arctic terns",
    "can you tell me about the weather on mars",
]
TEXTS = CONFIDENT + DOUBTFUL


def _router(base: Router, policy: Policy, db: Path, log_text: bool) -> Router:
    conf = policy_with(
        policy,
        **{"decision_log.path": str(db), "privacy.log_text": log_text, "fallback.enabled": False},
    )
    return Router(conf, embedder=base.embedder)


def _fill(r: Router) -> None:
    """Each text twice: as tenant a in conversation c1, and as tenant b in conversation c1 (same id)."""
    for tenant in ("a", "b"):
        for text in TEXTS:
            r.invoke({"text": text, "conversation_id": "c1"}, config={"configurable": {"tenant": tenant}})


@pytest.fixture(scope="module")
def routed(
    router: Router, default_policy: Policy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Router, Router]]:
    """Two routers over the same traffic: one logging text (and answers), one not."""
    root = tmp_path_factory.mktemp("console")
    with_text = _router(router, default_policy, root / "text.db", log_text=True)
    without = _router(router, default_policy, root / "hashed.db", log_text=False)
    for r in (with_text, without):
        _fill(r)
        log = _log(r)
        first = log.tail(1)[0]["id"] - len(TEXTS) * 2 + 1
        for i, agreement in enumerate((0.9, 0.2, 0.8, 0.1)):
            log.record_shadow(
                ShadowRecord(
                    decision_id=first + i,
                    route="sentiment",
                    agent="s",
                    agreement=agreement,
                    fallback_ms=5,
                    cost=0.01,
                )
            )
    yield with_text, without
    for r in (with_text, without):
        r.close()


def _log(r: Router) -> DecisionLog:
    assert r.decision_log is not None
    return r.decision_log


def _copy(log: DecisionLog, tmp_path: Path) -> DecisionLog:
    """A private copy, for tests that delete rows."""
    out = tmp_path / "copy.db"
    with sqlite3.connect(out) as dst:
        src = sqlite3.connect(log.path)
        src.backup(dst)
        src.close()
    return DecisionLog(out)


def test_record_keeps_tenant_margin_and_the_answer_only_with_log_text(routed: tuple[Router, Router]) -> None:
    with_text, without = routed
    for r, logged in ((with_text, True), (without, False)):
        rows = _log(r).tail(len(TEXTS) * 2)
        assert {row["tenant"] for row in rows} == {"a", "b"}
        assert all(row["margin"] is not None and 0 <= row["margin"] <= 1 for row in rows)
        assert all((row["output"] is not None) == logged for row in rows)
        assert all((row["text"] is not None) == logged for row in rows)


def test_forget_deletes_only_that_tenants_conversation_with_its_labels(
    router: Router, default_policy: Policy, tmp_path: Path
) -> None:
    r = _router(router, default_policy, tmp_path / "d.db", log_text=False)
    _fill(r)
    r.invoke({"text": CONFIDENT[0], "conversation_id": "c2"}, config={"configurable": {"tenant": "a"}})
    log = _log(r)
    ids = [row["id"] for row in log.tail(100) if row["tenant"] == "a" and row["conversation_id"] == "c1"]
    review.save_label(log, Label(decision_id=ids[0], route="extract"), "fp", r.routes)
    assert r.forget("c1", tenant="a")
    left = log.tail(100)
    assert len(left) == len(TEXTS) + 1
    assert {(row["tenant"], row["conversation_id"]) for row in left} == {("b", "c1"), ("a", "c2")}
    assert review.labels(log) == []
    assert not r.forget("c1", tenant="a")
    assert log.delete_conversation("c1", "b") == len(TEXTS)
    r.close()


def test_prune_by_age_and_size_takes_labels_and_shadow_rows(
    routed: tuple[Router, Router], tmp_path: Path
) -> None:
    log = _copy(_log(routed[1]), tmp_path)
    ids = [row["id"] for row in reversed(log.tail(100))]
    review.save_label(log, Label(decision_id=ids[0], out_of_scope=True), "fp", [])
    log.execute("UPDATE decisions SET ts = ts - 40 * 86400 WHERE id <= ?", (ids[2],))  # three are 40 days old
    assert log.prune(retention_s=30 * 86400, max_rows=None) == 3
    assert review.labels(log) == []
    assert [r[0] for r in log.query("SELECT decision_id FROM shadow ORDER BY decision_id")] == [ids[3]]
    assert log.prune(retention_s=None, max_rows=5) == len(ids) - 3 - 5
    assert [row["id"] for row in reversed(log.tail(100))] == ids[-5:]
    assert log.query("SELECT COUNT(*) FROM shadow")[0][0] == 0


def test_writing_prunes_by_the_policys_retention(tmp_path: Path, routed: tuple[Router, Router]) -> None:
    source = _copy(_log(routed[1]), tmp_path)
    source.execute("UPDATE decisions SET ts = ts - 2 * 86400")
    source.close()
    log = DecisionLog(source.path, retention_s=86400, max_rows=None)
    result = routed[1].invoke(CONFIDENT[0])
    assert log.record(result, CONFIDENT[0], log_text=False) is not None
    log.settle(30)  # the first write starts a retention pass; later ones only every PRUNE_EVERY_*
    assert len(log.tail(100)) == 1


def test_retention_runs_beside_the_request_and_its_failure_loses_no_decision(
    tmp_path: Path,
    routed: tuple[Router, Router],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`record` returns while the retention pass is still running (held on an event here), and a pass
    that fails is logged; the decision it followed keeps its id (shadow mode links by it)."""
    log = DecisionLog(tmp_path / "decisions.db", retention_s=86400, max_rows=None)
    release, entered = threading.Event(), threading.Event()

    def held(retention_s: float | None, max_rows: int | None) -> int:
        entered.set()
        assert release.wait(30)
        raise DecisionLogError("cannot prune: disk I/O error", log.path)

    monkeypatch.setattr(log, "prune", held)
    result = routed[1].invoke(CONFIDENT[0])
    first = log.record(result, CONFIDENT[0], log_text=False)
    assert first is not None and entered.wait(30)
    second = log.record(result, CONFIDENT[0], log_text=False)  # the pass is still held: no second one
    assert second == first + 1
    release.set()
    log.settle(30)
    assert "retention pass failed" in caplog.text
    assert [row["id"] for row in log.tail(10)] == [second, first]
    log.close()


def test_cli_prune(routed: tuple[Router, Router], tmp_path: Path) -> None:
    log = _copy(_log(routed[1]), tmp_path)
    log.execute("UPDATE decisions SET ts = ts - 3 * 3600 WHERE id % 2 = 0")
    even = log.query("SELECT COUNT(*) FROM decisions WHERE id % 2 = 0")[0][0]
    out = CliRunner().invoke(app, ["log", "prune", "--db", str(log.path), "--older-than", "2h"])
    assert out.exit_code == 0, out.output
    assert f"deleted {even} decisions" in out.output
    out = CliRunner().invoke(app, ["log", "prune", "--db", str(log.path), "--max-rows", "4"])
    assert (
        "deleted" in out.output and len(log.tail(100)) == 2
    )  # the newest 4 ids, half of them pruned already


def test_retention_settings_are_validated(default_policy: Policy) -> None:
    with pytest.raises(ValidationError, match=r"decision_log\.retention_days"):
        policy_with(default_policy, **{"decision_log.retention_days": 0})
    with pytest.raises(ValidationError, match=r"decision_log\.max_rows"):
        policy_with(default_policy, **{"decision_log.max_rows": 0})
    assert (
        policy_with(default_policy, **{"decision_log.retention_days": None}).decision_log.retention_days
        is None
    )


def test_an_older_log_is_migrated(tmp_path: Path, routed: tuple[Router, Router]) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA)  # the first release's tables: no cost, tenant, output, margin
        conn.execute(
            "INSERT INTO decisions VALUES "
            "(1, ?, 'other', 'reject', 'router', 1, 'ood', 'r', 0.2, NULL, 3, 'en', NULL, 'x', '{}', '{}', "
            "'c1')",
            (time.time(),),
        )
    log = DecisionLog(db)
    log.record(routed[1].invoke(CONFIDENT[0]), CONFIDENT[0], log_text=False, tenant="a")
    old, new = reversed(log.tail(2))
    assert old["tenant"] is None and old["margin"] is None and new["tenant"] == "a"
    assert log.delete_conversation("c1", "default") == 0  # a row without a tenant is nobody's to forget
    assert [item.decision_id for item in review.queue(log)] == [1]


def test_labels_are_validated_and_replaced(routed: tuple[Router, Router], tmp_path: Path) -> None:
    log = _copy(_log(routed[0]), tmp_path)
    routes = routed[0].routes
    decision = log.tail(1)[0]["id"]
    with pytest.raises(ReviewError, match=r"route 'refunds' is not in the policy; routes are \["):
        review.save_label(log, Label(decision_id=decision, route="refunds"), "fp", routes)
    with pytest.raises(ReviewError, match="no decision 99999"):
        review.save_label(log, Label(decision_id=99999, route="extract"), "fp", routes)
    with pytest.raises(ValidationError, match="out-of-scope label has no route"):
        Label(decision_id=decision, route="extract", out_of_scope=True)
    with pytest.raises(ValidationError, match="name the right route"):
        Label(decision_id=decision)
    review.save_label(log, Label(decision_id=decision, route="sentiment", answer="negative"), "fp1", routes)
    review.save_label(log, Label(decision_id=decision, out_of_scope=True), "fp2", routes)
    (only,) = review.labels(log, show_text=True)
    assert only.label.out_of_scope and only.label.route is None and only.labelled_by == "fp2"
    assert only.text == TEXTS[-1]


def test_queue_lists_doubts_unlabelled_first_with_top_routes(
    routed: tuple[Router, Router], tmp_path: Path
) -> None:
    log = _copy(_log(routed[0]), tmp_path)
    items = review.queue(log, limit=100, show_text=True, margin_below=0.1)
    rows = {row["id"]: row for row in log.tail(100)}
    disagreeing = {i for (i,) in log.query("SELECT decision_id FROM shadow WHERE agreement < 0.5")}
    local = {"specialist", "flow", "fallback"}
    expected = {
        i for i, row in rows.items() if row["action"] not in local or row["margin"] < 0.1 or i in disagreeing
    }
    assert {item.decision_id for item in items} == expected and disagreeing <= expected
    assert [item.decision_id for item in items] == sorted(expected, reverse=True)
    for item in items:
        row = rows[item.decision_id]
        assert ("escalated" in item.kinds) == (row["action"] == "reject")  # the fallback is off
        assert ("shadow_disagree" in item.kinds) == (item.decision_id in disagreeing)
        assert item.text == row["text"] and item.answer == row["output"]
        assert item.top_routes[0][0] == max(row["scores"], key=row["scores"].get)
        assert len(item.top_routes) == 3
    newest = items[0].decision_id
    review.save_label(log, Label(decision_id=newest, route="extract", answer="x"), "fp", routed[0].routes)
    items = review.queue(log, limit=100, show_text=True)
    assert items[-1].decision_id == newest and items[-1].label == Label(
        decision_id=newest, route="extract", answer="x"
    )
    hidden = review.queue(log, limit=100, show_text=False)
    assert all(i.text is None and i.answer is None for i in hidden) and hidden[-1].label.answer is None  # type: ignore[union-attr]


def test_overview_stats_add_up(routed: tuple[Router, Router], default_policy: Policy) -> None:
    log = _log(routed[1])
    rows = log.tail(1000)
    now = time.time()
    budget = default_policy.escalation.budget.model_copy(update={"max_cost_per_hour": 2.5})
    o = overview.stats(log, now - 900, now + 1, bucket_s=60, budget=budget)
    assert o.totals.requests == len(rows) == sum(sum(s) for s in o.by_route.values())
    assert len(o.buckets) == len(o.by_route[rows[0]["route"]]) >= 15
    assert sum(sum(s) for s in o.by_answered.values()) == len(rows)
    assert set(o.by_answered) <= {"specialist", "fallback", "rejected"}
    assert sum(o.by_answered.get("rejected", [0])) == sum(r["action"] == "reject" for r in rows) > 0
    assert o.totals.escalated == sum(r["escalated"] for r in rows)
    assert sum(o.escalated_by_reason.values()) == o.totals.escalated
    assert o.escalation_rate_by_reason == pytest.approx(
        {k: v / len(rows) for k, v in o.escalated_by_reason.items()}
    )
    assert sum(o.cost_per_hour) == pytest.approx(sum(r["cost"] for r in rows))
    assert o.cost_cap_per_hour == 2.5
    assert {"classify", "total"} <= set(o.latency)
    assert (
        o.latency["total"].samples == len(rows)
        and o.latency["classify"].p50_ms <= o.latency["classify"].p95_ms
    )
    empty = overview.stats(log, now - 86400 * 10, now - 86400 * 9, bucket_s=overview.bucket_for(86400))
    assert empty.totals.requests == 0 and empty.by_route == {} and empty.latency == {}
    missing = overview.stats(DecisionLog(Path("/nonexistent/d.db")), now - 60, now)
    assert missing.totals.requests == 0


def test_quality_histograms_and_reliability(routed: tuple[Router, Router]) -> None:
    log = _log(routed[1])
    rows = log.tail(1000)
    now = time.time()
    q = overview.quality(log, now - 3600, now + 1, bucket_s=600)
    assert sum(sum(h) for h in q.confidence_histogram.values()) == len(rows)
    assert all(len(h) == 10 for h in q.confidence_histogram.values())
    assert sum(b.count for b in q.reliability) == 4
    assert sum(b.agreement * b.count for b in q.reliability) == pytest.approx(0.9 + 0.2 + 0.8 + 0.1)
    assert all(b.low <= b.mean_confidence <= b.high for b in q.reliability)
    assert q.shadow_samples == {"sentiment": 4}
    assert [v for v in q.shadow_agreement["sentiment"] if v is not None] == [pytest.approx(0.5)]


def test_whatif_replays_thresholds(
    routed: tuple[Router, Router], default_policy: Policy, tmp_path: Path
) -> None:
    log = _copy(_log(routed[0]), tmp_path)
    rows = log.tail(1000)
    not_local = [r["action"] == "reject" for r in rows]  # the fallback is off: escalating means rejecting
    fixed = [r for r in rows if r["reason_code"] not in whatif.THRESHOLD_CODES]
    low, high = whatif.curve(log, default_policy, None, [0.0, 1.0])
    (now,) = whatif.curve(log, default_policy, "sentiment", [default_policy.threshold("sentiment")])
    assert now.escalation_rate == pytest.approx(sum(not_local) / len(rows))  # the policy's own setting
    assert low.escalation_rate == pytest.approx(sum(r["action"] == "reject" for r in fixed) / len(rows))
    assert high.escalation_rate == 1.0  # every probability is below 1
    assert (
        low.accuracy is None and low.labelled == 0 and 0 < low.cost_per_1k < high.cost_per_1k
    )  # priced fallback
    off = policy_with(default_policy, **{"fallback.enabled": False})
    assert whatif.curve(log, off, None, [1.0])[0].cost_per_1k == 0.0  # everything rejected, for free
    rates = [p.escalation_rate for p in whatif.curve(log, default_policy, "sentiment", [0.0, 0.7, 0.8, 1.0])]
    assert rates == sorted(rates) and rates[0] < rates[-1] < 1.0  # only sentiment rows move
    confident = next(r for r in rows if r["reason_code"] == "confident")
    review.save_label(
        log, Label(decision_id=confident["id"], route=confident["route"]), "fp", routed[0].routes
    )
    review.save_label(log, Label(decision_id=fixed[0]["id"], out_of_scope=True), "fp", routed[0].routes)
    labelled = whatif.curve(log, default_policy, None, [0.0, 1.0])
    assert (
        labelled[0].labelled == 2 and labelled[0].accuracy == 1.0
    )  # right route kept, out of scope escalated
    review.save_label(log, Label(decision_id=confident["id"], route="triage"), "fp", routed[0].routes)
    wrong, everything = whatif.curve(log, default_policy, None, [0.0, 1.0])
    assert wrong.accuracy == 0.5 and everything.accuracy == 1.0  # an escalated request counts as right
    with pytest.raises(ValueError, match="route 'refunds' is not in the policy"):
        whatif.curve(log, default_policy, "refunds", [0.5])
    assert whatif.curve(DecisionLog(tmp_path / "none.db"), default_policy, None, [0.5]) == []


def test_learning_from_labels_lowers_escalation_on_held_out_labels(
    routed: tuple[Router, Router], tmp_path: Path
) -> None:
    r = routed[0]
    log = _copy(_log(r), tmp_path)
    doubted = [row for row in log.tail(1000) if row["text"] in DOUBTFUL[:3]]
    assert all(row["action"] == "reject" for row in doubted)
    for row in doubted:
        review.save_label(log, Label(decision_id=row["id"], route="extract"), "fp", r.routes)
    seen: list[float] = []
    result = learn_from_labels(r.policy, r.embedder, review.labels(log, show_text=True), progress=seen.append)
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    assert result.learned == {"extract": 3} and result.labelled == len(doubted) == 6
    assert result.escalation_rate_after < result.escalation_rate_before
    assert result.accuracy_after > result.accuracy_before
    assert set(result.policy["routes"]["extract"]["utterances"][-3:]) == set(DOUBTFUL[:3])
    with pytest.raises(LearnError, match=r"privacy\.log_text"):
        learn_from_labels(r.policy, r.embedder, review.labels(log, show_text=False))
    with pytest.raises(LearnError, match="no labelled decisions"):
        learn_from_labels(r.policy, r.embedder, [])


def test_nothing_returned_holds_text_or_answers_without_log_text(
    routed: tuple[Router, Router], default_policy: Policy, tmp_path: Path
) -> None:
    """The log without text: every console function's output is free of the messages and the answers."""
    log = _copy(_log(routed[1]), tmp_path)
    answers = {row["output"] for row in _log(routed[0]).tail(1000)}
    for item in review.queue(log, limit=3):
        review.save_label(log, Label(decision_id=item.decision_id, route="extract"), "fp", routed[1].routes)
    now = time.time()
    dumps = [
        *(i.model_dump_json() for i in review.queue(log, limit=100, show_text=True)),
        *(d.model_dump_json() for d in review.labels(log, show_text=True)),
        overview.stats(log, now - 3600, now + 1).model_dump_json(),
        overview.quality(log, now - 3600, now + 1).model_dump_json(),
        json.dumps([p.model_dump() for p in whatif.curve(log, default_policy, None, [0.3, 0.6])]),
    ]
    blob = "\n".join(dumps)
    assert len(review.labels(log)) == 3
    for secret in [*TEXTS, *(a for a in answers if a and len(a) > 12)]:
        assert secret not in blob
        assert json.dumps(secret)[1:-1] not in blob
    with pytest.raises(LearnError, match=r"privacy\.log_text"):
        learn_from_labels(routed[1].policy, routed[1].embedder, review.labels(log, show_text=True))
