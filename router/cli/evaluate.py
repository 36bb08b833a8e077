"""`eval`: how well the router and each specialist do on labelled data, as a report and a console summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from slm_router.router.cli.options import PolicyOpt, load_router
from slm_router.router.cli.output import console, fail, need_extra, progress, result_table, usage

if TYPE_CHECKING:
    from slm_router.router.ops.report import FullReport, SpecialistReport
    from slm_router.router.runnable import Router

CONSOLE_ROWS = 15
CONSOLE_MAX_ROWS = 40
"""A longer section (one row per route) shows its first CONSOLE_ROWS on the console; report.md has all."""


def eval_(
    data: Annotated[
        Path | None,
        typer.Argument(help="JSONL rows: text, route (or `oos`). Optional with specialist files."),
    ] = None,
    policy: PolicyOpt = None,
    out: Annotated[
        Path, typer.Option(help="Directory for report.md/.html/.json and the PNG pictures.")
    ] = Path("slm-router-eval"),
    sample: Annotated[
        int, typer.Option(help="Rows run through the whole router for latency, reasons and cost; 0 skips.")
    ] = 100,
    sentiment: Annotated[Path | None, typer.Option(help="JSONL: text, label (sentiment specialist).")] = None,
    entities: Annotated[
        Path | None, typer.Option(help="JSONL: text, entities [{start, end, label}] (extraction).")
    ] = None,
    translation: Annotated[
        Path | None, typer.Option(help="JSONL parallel rows, e.g. {en, pt} (translation specialist).")
    ] = None,
    pair: Annotated[
        list[str] | None, typer.Option(help="Translation direction(s) for --translation (repeatable).")
    ] = None,
    label_map: Annotated[
        str | None,
        typer.Option(
            help="Agent labels -> the --entities file's labels: a preset (wnut17, the default; conll2003) "
            "or PREDICTED=gold pairs, e.g. 'PERSON=person,ORG=corporation|group'."
        ),
    ] = None,
    references: Annotated[
        bool,
        typer.Option(
            "--references/--no-references",
            help="Score the reference models beside the specialists: VADER for --sentiment, bare spaCy "
            "for --entities.",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report instead of tables.")] = False,
) -> None:
    """Route accuracy, per-route F1, OOS recall, calibration, escalation by reason, latency per node and
    cost; specialist quality on their own data files. Writes a Markdown + HTML + JSON report."""
    from slm_router.agents.base import AgentError
    from slm_router.router.ops.evaluation import read_rows, score
    from slm_router.router.ops.evaluation import report as router_report
    from slm_router.router.ops.report import (
        FullReport,
        plot_confusion,
        plot_reliability,
        run_sample,
        write_report,
    )

    if data is None and not (sentiment or entities or translation):
        usage("give a routing data file, or --sentiment / --entities / --translation files")
    mapping = _label_map(label_map)
    need_extra("eval", "`slm-router eval`")
    router = load_router(policy)
    full = FullReport(data=str(data or ""))
    try:
        out.mkdir(parents=True, exist_ok=True)
        if data is not None:
            texts, routes = read_rows(data)
            scored = score(
                texts, routes, router.policy, router.index, router.embedder, show_progress=not as_json
            )
            full.router, _ = router_report(scored, router.policy)
            plot_confusion(scored, out / "confusion.png")
            plot_reliability(scored, full.router.ece, out / "reliability.png")
            full.pictures = {"Confusion matrix": "confusion.png", "Reliability diagram": "reliability.png"}
            if sample > 0:
                with progress(min(sample, len(texts)), "whole router on a sample", not as_json) as tick:
                    full.live = run_sample(router, texts, sample, progress=tick)
        full.specialists = _specialist_evals(
            router, sentiment, entities, translation, pair or ["en-pt"], not as_json, mapping, references
        )
        paths = write_report(full, out)
    except (OSError, ValueError, AgentError) as exc:  # AgentError: e.g. a model that was never trained
        fail(str(exc))
    finally:
        router.close()
    if as_json:
        print(full.model_dump_json(indent=2))
        return
    _print_report(full)
    console.print(f"[green]wrote[/] {', '.join(str(p) for p in paths)} and the pictures in {out}")


def _specialist_evals(
    router: Router,
    sentiment: Path | None,
    entities: Path | None,
    translation: Path | None,
    pairs: list[str],
    show: bool,
    label_map: dict[str, tuple[str, ...]] | None = None,
    references: bool = True,
) -> dict[str, SpecialistReport]:
    """Each specialist on its own labelled file, with the agent and the `min_confidence` the policy sets,
    and (with `references`) the reference models on the same rows."""
    from slm_router.agents.translation import parse_pair
    from slm_router.router.compose import build_agent
    from slm_router.router.ops.references import BareSpacyReference, VaderReference
    from slm_router.router.ops.report import SpecialistReport
    from slm_router.router.ops.specialist_eval import (
        evaluate_entities,
        evaluate_sentiment,
        evaluate_translation,
        read_entities,
        read_sentiment,
        read_translation,
    )

    def min_confidence(agent: str) -> float | None:
        routes = [r for r in router.policy.routes.values() if r.agent == agent]
        return routes[0].min_confidence if routes else None

    out: dict[str, SpecialistReport] = {}
    if sentiment is not None:
        rows = read_sentiment(sentiment)
        agent = build_agent(router.policy, "sentiment", router.embedder)
        result = evaluate_sentiment(
            rows,
            agent,
            min_confidence("sentiment"),
            show_progress=show,
            references=[VaderReference()] if references else [],
        )
        out["sentiment"] = SpecialistReport.of(result, agent.name)
    if entities is not None:
        agent = build_agent(router.policy, "extract", router.embedder)
        found = evaluate_entities(
            read_entities(entities),
            agent,
            label_map,
            show_progress=show,
            min_confidence=min_confidence("extract"),
            references=[BareSpacyReference()] if references else [],
        )
        out["entities"] = SpecialistReport.of(found, agent.name)
    for pair in pairs:
        if translation is None:
            break
        source, target = parse_pair(pair)
        rows_t = read_translation(translation, source, target)
        agent = build_agent(router.policy, "translate", router.embedder)
        translated = evaluate_translation(
            rows_t, agent, source, target, min_confidence("translate"), show_progress=show
        )
        out[f"translation {source}-{target}"] = SpecialistReport.of(translated)
    return out


def _label_map(spec: str | None) -> dict[str, tuple[str, ...]] | None:
    """--label-map as a mapping (None: the evaluation's default, WNUT-17); a bad one ends the command."""
    from slm_router.router.ops.specialist_eval import resolve_label_map

    if spec is None:
        return None
    try:
        return resolve_label_map(spec)
    except ValueError as exc:
        usage(f"--label-map: {exc}")


def _print_report(full: FullReport) -> None:
    from rich.table import Table

    from slm_router.router.ops.report import report_sections

    for heading, rows, header in report_sections(full):
        if header is not None:
            table = Table(title=heading, title_justify="left")
            table.add_column(header[0], style="bold cyan")
            for column in header[1:]:
                table.add_column(column, justify="right")
            for row in rows:
                table.add_row(*row)
            console.print(table)
            continue
        if len(rows) > CONSOLE_MAX_ROWS:  # 150 routes: the console shows the worst, the report has them all
            rows = [*rows[:CONSOLE_ROWS], ("...", f"{len(rows) - CONSOLE_ROWS} more in report.md")]
        console.print(result_table(heading, [(k, v) for k, v in rows]))
