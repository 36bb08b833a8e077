"""The decision log: every routed request appended to SQLite, for `slm-router log tail|stats|export`.

Writing never fails a request (a full disk logs a warning); reading raises `DecisionLogError`.
The text (and the answer) is stored only when the policy allows it (`privacy.log_text`); otherwise the
text's SHA-256. Operator labels (`labels`) and shadow comparisons live in the same file and go with their
decision: retention (`decision_log.retention_days`, `max_rows`) and "forget this conversation" delete them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel

from slm_router.router.errors import SlmRouterError

if TYPE_CHECKING:
    from slm_router.policies import Policy
    from slm_router.router.ops.shadow import ShadowRecord
    from slm_router.router.result import RouteResult

log = logging.getLogger(__name__)

COLUMNS = (
    "id",
    "ts",
    "route",
    "action",
    "answered_by",
    "escalated",
    "reason_code",
    "reason",
    "confidence",
    "specialist_confidence",
    "total_ms",
    "language",
    "text",
    "text_sha256",
    "nodes_json",
    "scores_json",
    "conversation_id",
    "cost",
    "budget_exceeded",
    "tenant",
    "output",
    "margin",
)
# Columns added after the first release: an older log gets them on open (ALTER TABLE), old rows read 0 or
# NULL (a NULL tenant is nobody's: "forget" by a tenant never deletes it; retention does).
_ADDED = {
    "cost": "REAL NOT NULL DEFAULT 0",
    "budget_exceeded": "INTEGER NOT NULL DEFAULT 0",
    "tenant": "TEXT",
    "output": "TEXT",
    "margin": "REAL",
}
# After the migration: indexes on added columns, and the labels table.
_AFTER = """
CREATE INDEX IF NOT EXISTS decisions_conversation ON decisions (conversation_id, tenant)
    WHERE conversation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS shadow_decision ON shadow (decision_id);
CREATE TABLE IF NOT EXISTS labels (
    decision_id INTEGER PRIMARY KEY,
    route TEXT,
    answer TEXT,
    labelled_by TEXT NOT NULL,
    ts REAL NOT NULL
);
"""
PRUNE_EVERY_WRITES = 1000  # retention runs on open, then at most once per this many writes ...
PRUNE_EVERY_S = 600.0  # ... or this many seconds (whichever comes first, and only when something was written)

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    route TEXT NOT NULL,
    action TEXT NOT NULL,
    answered_by TEXT NOT NULL,
    escalated INTEGER NOT NULL,
    reason_code TEXT NOT NULL,
    reason TEXT NOT NULL,
    confidence REAL NOT NULL,
    specialist_confidence REAL,
    total_ms REAL NOT NULL,
    language TEXT NOT NULL,
    text TEXT,
    text_sha256 TEXT NOT NULL,
    nodes_json TEXT NOT NULL,
    scores_json TEXT NOT NULL,
    conversation_id TEXT
);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts);
CREATE TABLE IF NOT EXISTS shadow (
    decision_id INTEGER,
    ts REAL NOT NULL,
    route TEXT NOT NULL,
    agent TEXT NOT NULL,
    agreement REAL NOT NULL,
    fallback_ms REAL NOT NULL,
    cost REAL NOT NULL
);
"""

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def scrub_quotes(reason: str) -> str:
    """Reasons are built without message text, but an agent's error may quote its input ('...'): without
    `privacy.log_text`, quoted parts never reach the log."""
    return _QUOTED.sub("'…'", reason)


_INSERT = f"INSERT INTO decisions ({', '.join(COLUMNS[1:])}) VALUES ({', '.join('?' * (len(COLUMNS) - 1))})"


class DecisionLogError(SlmRouterError):
    """The decision log cannot be read or written (missing, not a database, unwritable)."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


class DecisionStats(BaseModel):
    total: int
    since: float | None = None
    by_route: dict[str, int]
    by_action: dict[str, int]
    escalated: int
    escalation_rate: float
    escalation_rate_by_reason: dict[str, float]
    p50_ms: float | None
    p95_ms: float | None
    cost: float = 0.0
    cost_per_1k_requests: float = 0.0
    budget_exceeded: int = 0
    shadow_samples: dict[str, int] = {}
    shadow_agreement: dict[str, float] = {}


def default_log_path() -> Path:
    """$SLM_ROUTER_DATA_DIR, else $XDG_DATA_HOME/slm-router, else ~/.local/share/slm-router; decisions.db."""
    root = os.environ.get("SLM_ROUTER_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "slm-router"
    )
    return Path(root) / "decisions.db"


def margin_of(scores: dict[str, float]) -> float | None:
    """Top route probability minus the runner-up's: small = the router hesitated between two routes."""
    top = sorted(scores.values(), reverse=True)[:2]
    if not top:
        return None
    return float(top[0] - (top[1] if len(top) > 1 else 0.0))


def log_path(policy: Policy) -> Path:
    conf = policy.decision_log
    return policy.resolve(conf.path) if conf.path else default_log_path()


def open_log(policy: Policy) -> DecisionLog | None:
    """The policy's decision log, or None when it is disabled. Nothing is touched on disk yet."""
    conf = policy.decision_log
    if not conf.enabled:
        return None
    return DecisionLog(
        log_path(policy),
        retention_s=None if conf.retention_days is None else conf.retention_days * 86400,
        max_rows=conf.max_rows,
    )


def _row(values: sqlite3.Row) -> dict[str, Any]:
    row = dict(values)
    row["escalated"] = bool(row["escalated"])
    row["nodes"] = json.loads(row.pop("nodes_json"))
    row["scores"] = json.loads(row.pop("scores_json"))
    return row


class DecisionLog:
    """One SQLite file (WAL mode), created on the first `record`; safe to share between threads.
    With `retention_s`/`max_rows`, writing prunes old rows now and then (`PRUNE_EVERY_*`), in a background
    thread: a backlog takes a fraction of a second, which no request should wait for."""

    def __init__(self, path: Path, retention_s: float | None = None, max_rows: int | None = None) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._last_error: str | None = None
        self._writes_since_prune = 0
        self._last_prune = 0.0
        self._pruner: threading.Thread | None = None

    def _connect(self, create: bool) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if not create and not self.path.is_file():
            raise DecisionLogError(f"no decision log at {self.path} (nothing routed yet?)", self.path)
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across crashes of the process
            conn.executescript(SCHEMA)
            present = {r[1] for r in conn.execute("PRAGMA table_info(decisions)")}
            for column, kind in _ADDED.items():
                if column not in present:
                    conn.execute(f"ALTER TABLE decisions ADD COLUMN {column} {kind}")
            conn.executescript(_AFTER)
        except (OSError, sqlite3.Error) as exc:
            raise DecisionLogError(f"cannot open decision log {self.path}: {exc}", self.path) from exc
        self._conn = conn
        return conn

    def record(
        self,
        result: RouteResult,
        text: str,
        log_text: bool,
        conversation_id: str | None = None,
        tenant: str | None = None,
    ) -> int | None:
        """Append one decision; returns its id. Never raises: a failure (full disk, bad path) is logged
        and dropped, and the id is None. The answer is kept only with `log_text` (it may quote the text)."""
        try:
            scores = next((t.info.get("probabilities") for t in result.trace if t.node == "classify"), None)
            values = (
                time.time(),
                result.route,
                result.action,
                result.answered_by,
                int(result.escalated),
                result.reason_code,
                result.reason if log_text else scrub_quotes(result.reason),
                result.confidence,
                result.specialist_confidence,
                result.total_ms,
                result.language,
                text if log_text else None,
                hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
                json.dumps({t.node: t.ms for t in result.trace}),
                json.dumps(scores or {}),
                conversation_id,
                result.cost,
                int(result.budget_exceeded),
                tenant,
                result.output if log_text else None,
                margin_of(scores or {}),
            )
            return self._write(_INSERT, values, prune=True)
        except Exception as exc:
            self._failed(exc)
            return None

    def record_shadow(self, record: ShadowRecord) -> None:
        """Append one shadow comparison (same never-raise rule as `record`)."""
        try:
            self._write(
                "INSERT INTO shadow VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.decision_id,
                    time.time(),
                    record.route,
                    record.agent,
                    record.agreement,
                    record.fallback_ms,
                    record.cost,
                ),
            )
        except Exception as exc:
            self._failed(exc)

    def _write(self, sql: str, values: tuple[Any, ...], prune: bool = False) -> int | None:
        with self._lock:
            conn = self._connect(create=True)
            with conn:
                row_id = conn.execute(sql, values).lastrowid
            if prune:
                self._writes_since_prune += 1
                if self._prune_due():
                    self._pruner = threading.Thread(
                        target=self._prune_now, name="decision-log-prune", daemon=True
                    )
                    self._pruner.start()
        self._last_error = None
        return row_id

    def _prune_now(self) -> None:
        """The retention pass `record` starts; a failure is logged like a failed write (never raised)."""
        try:
            self.prune(self.retention_s, self.max_rows)
        except Exception as exc:
            log.warning(
                "decision log %s: the retention pass failed (%s); the next one retries", self.path, exc
            )

    def settle(self, timeout_s: float | None = None) -> None:
        """Wait for a running retention pass (tests, `close`)."""
        pruner = self._pruner
        if pruner is not None:
            pruner.join(timeout_s)

    def _prune_due(self) -> bool:
        if self.retention_s is None and self.max_rows is None:
            return False
        if self._pruner is not None and self._pruner.is_alive():
            return False
        return (
            self._last_prune == 0.0
            or self._writes_since_prune >= PRUNE_EVERY_WRITES
            or time.monotonic() - self._last_prune >= PRUNE_EVERY_S
        )

    def _prune(self, conn: sqlite3.Connection, retention_s: float | None, max_rows: int | None) -> int:
        """Delete decisions older than `retention_s` or beyond the newest `max_rows`, with their labels
        and shadow rows (caller holds the lock). Uses the ts index and the primary key only."""
        self._writes_since_prune = 0
        self._last_prune = time.monotonic()
        cutoff_ts = -1.0 if retention_s is None else time.time() - retention_s
        cutoff_id = -1
        if max_rows is not None:  # ids only grow: the newest max_rows ids, from the primary key alone
            newest = conn.execute("SELECT MAX(id) FROM decisions").fetchone()[0]
            cutoff_id = -1 if newest is None else int(newest) - max_rows
        doomed = "SELECT id FROM decisions WHERE ts < ? OR id <= ?"
        with conn:
            conn.execute(f"DELETE FROM labels WHERE decision_id IN ({doomed})", (cutoff_ts, cutoff_id))
            conn.execute(
                f"DELETE FROM shadow WHERE ts < ? OR decision_id IN ({doomed})",
                (cutoff_ts, cutoff_ts, cutoff_id),
            )
            deleted = conn.execute(
                "DELETE FROM decisions WHERE ts < ? OR id <= ?", (cutoff_ts, cutoff_id)
            ).rowcount
        return int(deleted)

    @contextmanager
    def _writing(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock (the log must exist); a failure is a `DecisionLogError`
        saying what could not be done."""
        with self._lock:
            conn = self._connect(create=False)
            try:
                with conn:
                    yield conn
            except sqlite3.Error as exc:
                raise DecisionLogError(f"cannot {doing} decision log {self.path}: {exc}", self.path) from exc

    def prune(self, retention_s: float | None, max_rows: int | None) -> int:
        """Delete decisions older than `retention_s` seconds or outside the newest `max_rows` ids (None: no
        limit; ids freed by "forget" count, so a little fewer may stay), with their labels and shadow rows;
        returns how many decisions went."""
        with self._writing("prune") as conn:
            return self._prune(conn, retention_s, max_rows)

    def delete_conversation(self, conversation_id: str, tenant: str) -> int:
        """Forget one conversation of one tenant: its decisions, their labels and shadow rows; returns how
        many decisions went. Another tenant's conversation with the same id is untouched. No log: 0."""
        if not self.path.is_file() and self._conn is None:
            return 0
        match = "conversation_id = ? AND tenant = ?"
        key = (conversation_id, tenant)
        with self._writing("delete from") as conn:
            for table in ("labels", "shadow"):
                conn.execute(
                    f"DELETE FROM {table} WHERE decision_id IN (SELECT id FROM decisions WHERE {match})", key
                )
            return int(conn.execute(f"DELETE FROM decisions WHERE {match}", key).rowcount)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Read-only SQL for the console's aggregates (overview, review, what-if): rows by column name."""
        return self._query(sql, params)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """One write statement in its own transaction (labels); raises `DecisionLogError` on failure."""
        with self._writing("write") as conn:
            return int(conn.execute(sql, params).rowcount)

    def _failed(self, exc: Exception) -> None:
        """The request path must not fail because the log cannot be written; warn once per problem."""
        message = f"decision log {self.path}: {exc}"
        if message != self._last_error:
            log.warning("%s; decisions are not being recorded", message)
        self._last_error = message

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            conn = self._connect(create=False)
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise DecisionLogError(f"cannot read decision log {self.path}: {exc}", self.path) from exc

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        """The last `n` decisions, newest first."""
        return [_row(r) for r in self._query("SELECT * FROM decisions ORDER BY id DESC LIMIT ?", (n,))]

    def stats(self, since_s: float | None = None) -> DecisionStats:
        """Counts, escalation rates and latency percentiles over the last `since_s` seconds (or all)."""
        since = None if since_s is None else time.time() - since_s
        rows = self._query(
            "SELECT route, action, escalated, reason_code, total_ms, cost, budget_exceeded "
            "FROM decisions WHERE ts >= ?",
            (since or 0.0,),
        )
        shadow = self._query(
            "SELECT route, COUNT(*) AS n, AVG(agreement) AS mean FROM shadow WHERE ts >= ? GROUP BY route",
            (since or 0.0,),
        )
        total = len(rows)
        by_route: dict[str, int] = {}
        by_action: dict[str, int] = {}
        by_reason: dict[str, int] = {}
        for r in rows:
            by_route[r["route"]] = by_route.get(r["route"], 0) + 1
            by_action[r["action"]] = by_action.get(r["action"], 0) + 1
            if r["escalated"]:
                by_reason[r["reason_code"]] = by_reason.get(r["reason_code"], 0) + 1
        escalated = sum(by_reason.values())
        ms = np.array([r["total_ms"] for r in rows], dtype=float)
        cost = float(sum(r["cost"] for r in rows))
        return DecisionStats(
            total=total,
            since=since,
            by_route=by_route,
            by_action=by_action,
            escalated=escalated,
            escalation_rate=escalated / total if total else 0.0,
            escalation_rate_by_reason={k: v / total for k, v in sorted(by_reason.items())},
            p50_ms=float(np.percentile(ms, 50)) if total else None,
            p95_ms=float(np.percentile(ms, 95)) if total else None,
            cost=cost,
            cost_per_1k_requests=cost / total * 1000 if total else 0.0,
            budget_exceeded=sum(r["budget_exceeded"] for r in rows),
            shadow_samples={r["route"]: r["n"] for r in shadow},
            shadow_agreement={r["route"]: round(r["mean"], 4) for r in shadow},
        )

    def export(self, out: Path, fmt: Literal["jsonl", "csv"] = "jsonl") -> int:
        """Write every decision, oldest first, to `out`; returns the number of rows."""
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"format must be 'jsonl' or 'csv', got {fmt!r}")
        rows = self._query("SELECT * FROM decisions ORDER BY id")
        try:
            with open(out, "w", encoding="utf-8", newline="") as f:
                if fmt == "jsonl":
                    for r in rows:
                        f.write(json.dumps(_row(r), ensure_ascii=False) + "\n")
                else:
                    writer = csv.writer(f)
                    writer.writerow(COLUMNS)
                    writer.writerows(tuple(r) for r in rows)
        except OSError as exc:
            raise DecisionLogError(f"cannot write {out}: {exc}", self.path) from exc
        return len(rows)

    def close(self) -> None:
        self.settle()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
