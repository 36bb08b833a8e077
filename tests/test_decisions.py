"""The decision log: real routed requests appended to SQLite, read back by the API and the CLI."""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slm_router.policies import Policy
from slm_router.router.cli import app
from slm_router.router.cli.output import console
from slm_router.router.ops.decision_log import DecisionLog, DecisionLogError, default_log_path, open_log
from slm_router.router.runnable import Router
from tests.conftest import policy_with

COMPLAINT = "I am really angry, my package arrived broken and nobody answers my emails!"
ORDER = "Order #A12345 was charged $49.99 twice, please refund me at jane.doe@example.com"
OFF_TOPIC = "What is the best way to grow tomatoes on a balcony?"


def _router(base: Router, policy: Policy, db: Path, **updates: object) -> Router:
    conf = policy_with(policy, **{"decision_log.path": str(db), **updates})
    return Router(conf, embedder=base.embedder)


def _db_bytes(db: Path) -> bytes:
    """The database and its WAL / shared-memory files: everything SQLite wrote."""
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


@pytest.fixture(scope="module")
def logged(
    router: Router, default_policy: Policy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Router]:
    """A router whose log holds: complaint, order (ainvoke), off-topic (escalates), order (stream)."""
    db = tmp_path_factory.mktemp("decisions") / "d.db"
    r = _router(router, default_policy, db)
    r.invoke(COMPLAINT)
    asyncio.run(r.ainvoke({"text": ORDER}))

    async def stream() -> None:
        async for _ in r.astream_progress({"text": ORDER, "conversation_id": "conv-1"}):
            pass

    r.invoke(OFF_TOPIC)
    asyncio.run(stream())
    yield r
    assert r.decision_log is not None
    r.decision_log.close()


def _log(r: Router) -> DecisionLog:
    assert r.decision_log is not None
    return r.decision_log


def test_default_path_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLM_ROUTER_DATA_DIR", str(tmp_path / "data"))
    assert default_log_path() == tmp_path / "data" / "decisions.db"
    monkeypatch.delenv("SLM_ROUTER_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_log_path() == tmp_path / "xdg" / "slm-router" / "decisions.db"


def test_relative_path_resolves_against_the_policy(default_policy: Policy) -> None:
    policy = policy_with(default_policy, **{"decision_log.path": "logs/d.db"})
    log = open_log(policy)
    assert log is not None and policy.base_dir is not None
    assert log.path == policy.base_dir / "logs" / "d.db"
    assert not log.path.exists()  # nothing is created before the first decision


def test_routed_requests_appear_in_tail(logged: Router) -> None:
    rows = _log(logged).tail(10)
    assert len(rows) == 4
    newest, off_topic, order, complaint = rows
    assert complaint["route"] == "sentiment" and complaint["action"] == "specialist"
    assert complaint["reason_code"] == "confident" and not complaint["escalated"]
    assert set(complaint["nodes"]) >= {"guard", "classify", "decide", "specialist"}
    assert all(ms >= 0 for ms in complaint["nodes"].values()) and complaint["total_ms"] > 0
    assert complaint["scores"]["sentiment"] == pytest.approx(complaint["confidence"], abs=1e-3)
    assert order["route"] == "extract" and order["conversation_id"] is None
    assert off_topic["action"] == "fallback" and off_topic["escalated"]
    assert newest["route"] == "extract" and newest["conversation_id"] == "conv-1"  # the stream's result
    assert rows[0]["ts"] >= rows[-1]["ts"]
    assert [r["id"] for r in _log(logged).tail(2)] == [newest["id"], off_topic["id"]]


def test_text_is_hashed_unless_the_policy_allows_it(
    logged: Router, router: Router, default_policy: Policy, tmp_path: Path
) -> None:
    import hashlib

    rows = _log(logged).tail(10)
    assert all(r["text"] is None for r in rows)
    assert rows[-1]["text_sha256"] == hashlib.sha256(COMPLAINT.encode()).hexdigest()
    assert logged.decision_log is not None
    written = _db_bytes(logged.decision_log.path)
    for text in (COMPLAINT, ORDER, OFF_TOPIC, "jane.doe@example.com", "A12345"):
        assert text.encode() not in written

    db = tmp_path / "with-text.db"
    r = _router(router, default_policy, db, **{"privacy.log_text": True})
    r.invoke(COMPLAINT)
    assert _log(r).tail(1)[0]["text"] == COMPLAINT
    assert COMPLAINT.encode() in _db_bytes(db)


def test_stats_count_routes_and_escalations(logged: Router) -> None:
    stats = _log(logged).stats()
    assert stats.total == 4
    assert stats.by_route == {"sentiment": 1, "extract": 2, "other": 1}
    assert stats.by_action["specialist"] == 3 and stats.by_action["fallback"] == 1
    assert stats.escalated == 1 and stats.escalation_rate == pytest.approx(0.25)
    assert sum(stats.escalation_rate_by_reason.values()) == pytest.approx(0.25)
    assert stats.p50_ms is not None and stats.p95_ms is not None and 0 < stats.p50_ms <= stats.p95_ms
    assert _log(logged).stats(since_s=3600).total == 4
    empty = _log(logged).stats(since_s=1e-9)
    assert empty.total == 0 and empty.p50_ms is None and empty.escalation_rate == 0.0


def test_export_jsonl_and_csv(logged: Router, tmp_path: Path) -> None:
    assert _log(logged).export(tmp_path / "d.jsonl", "jsonl") == 4
    lines = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [row["route"] for row in lines] == ["sentiment", "extract", "other", "extract"]  # oldest first
    assert _log(logged).export(tmp_path / "d.csv", "csv") == 4
    with open(tmp_path / "d.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and json.loads(rows[0]["nodes_json"])["classify"] >= 0


def test_cli_tail_stats_export(logged: Router, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "_width", 200)  # the table, unfolded
    runner = CliRunner()
    db = str(_log(logged).path)
    out = runner.invoke(app, ["log", "tail", "-n", "2", "--json", "--db", db])
    assert out.exit_code == 0, out.output
    assert [json.loads(line)["route"] for line in out.stdout.splitlines()] == ["extract", "other"]
    out = runner.invoke(app, ["log", "tail", "--db", db])
    assert out.exit_code == 0 and "sentiment" in out.stdout and "sha256" in out.stdout
    out = runner.invoke(app, ["log", "stats", "--since", "1h", "--json", "--db", db])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["total"] == 4
    out = runner.invoke(app, ["log", "stats", "--db", db])
    assert out.exit_code == 0 and "escalated 1 (25.0%)" in out.stdout
    out = runner.invoke(app, ["log", "export", str(tmp_path / "e.csv"), "--format", "csv", "--db", db])
    assert out.exit_code == 0 and "4 decisions" in out.stdout
    assert len((tmp_path / "e.csv").read_text().splitlines()) == 5


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = tmp_path / "nope.db"
    out = runner.invoke(app, ["log", "tail", "--db", str(missing)])
    assert out.exit_code == 1 and "no decision log" in out.output and str(missing) in out.output
    assert "Traceback" not in out.output
    out = runner.invoke(app, ["log", "stats", "--since", "soon", "--db", str(missing)])
    assert out.exit_code == 2 and "--since" in out.output
    out = runner.invoke(app, ["log", "export", str(tmp_path / "x"), "--format", "xml", "--db", str(missing)])
    assert out.exit_code == 2 and "--format" in out.output


def test_reading_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(DecisionLogError) as missing:
        DecisionLog(tmp_path / "missing.db").tail()
    assert missing.value.path == tmp_path / "missing.db"
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(DecisionLogError, match=r"garbage\.db"):
        DecisionLog(garbage).stats()


def test_disabled_log_writes_nothing(router: Router, default_policy: Policy, tmp_path: Path) -> None:
    db = tmp_path / "off.db"
    r = _router(router, default_policy, db, **{"decision_log.enabled": False})
    assert r.decision_log is None
    assert r.invoke(COMPLAINT).route == "sentiment"
    assert list(tmp_path.iterdir()) == []


def test_unwritable_log_does_not_fail_routing(
    router: Router, default_policy: Policy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    r = _router(router, default_policy, blocker / "d.db")
    with caplog.at_level(logging.WARNING, logger="slm_router.router.ops.decision_log"):
        assert r.invoke(COMPLAINT).route == "sentiment"
        assert r.invoke(ORDER).route == "extract"
    warnings = [rec for rec in caplog.records if rec.name == "slm_router.router.ops.decision_log"]
    assert len(warnings) == 1 and "a-file" in warnings[0].getMessage()  # once, not per request


def test_concurrent_records_are_all_kept(router: Router, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    result = router.invoke(COMPLAINT)
    log = DecisionLog(tmp_path / "threads.db")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: log.record(result, f"text {i}", log_text=True), range(200)))
    assert log.stats().total == 200
    log.close()
    assert sqlite3.connect(tmp_path / "threads.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_multi_intent_reasons_keep_no_text_in_the_log(
    router: Router, default_policy: Policy, tmp_path: Path
) -> None:
    """The reason of a multi-intent request names clauses by number: without privacy.log_text no clause
    (here one holding an e-mail address) reaches the log through it."""
    db = tmp_path / "multi.db"
    r = _router(router, default_policy, db)
    text = "Please translate this into Portuguese and also write to ana.silva@example.com: my order is late"
    result = r.invoke(text)
    assert result.reason.startswith("multi-intent:"), result.reason
    row = _log(r).tail(1)[0]
    assert "clause 1" in row["reason"] and "ana.silva" not in row["reason"]
    assert b"ana.silva" not in _db_bytes(db) and b"Portuguese" not in _db_bytes(db)


def test_quoted_parts_of_a_reason_are_blanked_without_log_text() -> None:
    from slm_router.router.ops.decision_log import scrub_quotes

    assert scrub_quotes("specialist failed: cannot parse 'jane@example.com' near \"Jane\"") == (
        "specialist failed: cannot parse '…' near '…'"
    )
