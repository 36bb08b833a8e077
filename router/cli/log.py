"""`log`: read the decision log (every routed request): the latest rows, statistics, an export."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from slm_router.policies import PolicyError, load_policy
from slm_router.router.cli.options import DbOpt, PolicyOpt, open_decision_log
from slm_router.router.cli.output import console, fail, usage
from slm_router.router.errors import SlmRouterError

app = typer.Typer(help="Read the decision log (every routed request).", no_args_is_help=True)

SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_since(since: str) -> float:
    value, unit = since[:-1], since[-1:]
    try:
        seconds = float(value) * SINCE_UNITS[unit]
    except (KeyError, ValueError):
        usage(f"--since must look like 30m, 1h, 2d or 90s, got {since!r}")
    if seconds <= 0:
        usage(f"--since must be positive, got {since!r}")
    return seconds


@app.command("tail")
def log_tail(
    n: Annotated[int, typer.Option("-n", min=1, help="How many decisions, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    policy: PolicyOpt = None,
    db: DbOpt = None,
) -> None:
    """The latest decisions: route, action, escalation and why, latency."""
    try:
        rows = open_decision_log(policy, db).tail(n)
    except SlmRouterError as exc:
        fail(str(exc))
    if as_json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return
    table = Table(title=f"last {len(rows)} decisions", title_justify="left")
    for col in ("time", "route", "action", "answered by", "conf", "escalated", "reason", "ms", "text"):
        table.add_column(col, justify="right" if col in ("conf", "ms") else "left", overflow="fold")
    for r in rows:
        table.add_row(
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["ts"])),
            r["route"],
            r["action"],
            r["answered_by"],
            f"{r['confidence']:.2f}",
            "[yellow]yes[/]" if r["escalated"] else "no",
            r["reason_code"],
            f"{r['total_ms']:.0f}",
            (r["text"] or "")[:60] or f"[dim]sha256 {r['text_sha256'][:12]}[/]",
        )
    console.print(table)


@app.command("stats")
def log_stats(
    since: Annotated[str | None, typer.Option(help="Only the last 30m, 1h, 2d, ... (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    policy: PolicyOpt = None,
    db: DbOpt = None,
) -> None:
    """Requests per route and action, escalation rates (overall and per reason), p50/p95 latency, cost,
    and shadow-mode agreement per route."""
    seconds = None if since is None else _parse_since(since)
    try:
        stats = open_decision_log(policy, db).stats(seconds)
    except SlmRouterError as exc:
        fail(str(exc))
    if as_json:
        print(stats.model_dump_json(indent=2))
        return
    p50 = "-" if stats.p50_ms is None else f"{stats.p50_ms:.0f} ms"
    p95 = "-" if stats.p95_ms is None else f"{stats.p95_ms:.0f} ms"
    console.print(
        f"{stats.total} decisions{f' in the last {since}' if since else ''}; "
        f"escalated {stats.escalated} ({stats.escalation_rate:.1%}); latency p50 {p50}, p95 {p95}; "
        f"estimated cost {stats.cost:.4g} ({stats.cost_per_1k_requests:.4g} per 1k requests); "
        f"held back by the escalation budget {stats.budget_exceeded}"
    )
    for title, counts in (("route", stats.by_route), ("action", stats.by_action)):
        table = Table(title=f"by {title}", title_justify="left")
        table.add_column(title)
        table.add_column("requests", justify="right")
        table.add_column("share", justify="right")
        for name, count in sorted(counts.items(), key=lambda kv: -kv[1]):
            table.add_row(name, str(count), f"{count / stats.total:.1%}")
        console.print(table)
    if stats.escalation_rate_by_reason:
        table = Table(title="escalations by reason", title_justify="left")
        table.add_column("reason")
        table.add_column("share of requests", justify="right")
        for code, rate in sorted(stats.escalation_rate_by_reason.items(), key=lambda kv: -kv[1]):
            table.add_row(code, f"{rate:.1%}")
        console.print(table)
    if stats.shadow_samples:
        table = Table(title="shadow mode: specialist vs fallback agreement (0-1)", title_justify="left")
        for col in ("route", "samples", "agreement"):
            table.add_column(col, justify="left" if col == "route" else "right")
        for route, n in sorted(stats.shadow_samples.items()):
            table.add_row(route, str(n), f"{stats.shadow_agreement[route]:.3f}")
        console.print(table)


@app.command("export")
def log_export(
    file: Annotated[Path, typer.Argument(help="Output file.")],
    fmt: Annotated[Literal["jsonl", "csv"], typer.Option("--format")] = "jsonl",
    policy: PolicyOpt = None,
    db: DbOpt = None,
) -> None:
    """Write every decision, oldest first, as JSON lines or CSV."""
    try:
        count = open_decision_log(policy, db).export(file, fmt)
    except SlmRouterError as exc:
        fail(str(exc))
    console.print(f"[green]wrote[/] {count} decisions to {file}")


@app.command("prune")
def log_prune(
    older_than: Annotated[
        str | None,
        typer.Option(
            help="Delete decisions older than 30d, 12h, ... (default: decision_log.retention_days)."
        ),
    ] = None,
    max_rows: Annotated[
        int | None, typer.Option(min=1, help="Keep at most this many (default: decision_log.max_rows).")
    ] = None,
    policy: PolicyOpt = None,
    db: DbOpt = None,
) -> None:
    """Delete old decisions now, with their labels and shadow comparisons (the service also does this as
    it writes). Each option left out takes the policy's value."""
    try:
        conf = load_policy(policy).decision_log
        days = conf.retention_days
        retention_s = _parse_since(older_than) if older_than else None if days is None else days * 86400
        count = open_decision_log(policy, db).prune(retention_s, max_rows or conf.max_rows)
    except (PolicyError, SlmRouterError) as exc:
        fail(str(exc))
    console.print(f"[green]deleted[/] {count} decisions")
