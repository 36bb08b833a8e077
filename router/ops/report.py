"""The evaluation report an operator reads: Markdown, HTML and JSON, with PNG pictures next to them.

The router-only numbers come from one scoring pass over every row (`router.evaluation`); latency per node,
reasons as the live graph gives them, and cost come from running the whole router on a sample of rows
(specialists and fallback included), because those need the real models.
"""

from __future__ import annotations

import html
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from pydantic import BaseModel

from slm_router.extras import require
from slm_router.router.core.calibration import confidence_bins
from slm_router.router.core.costs import fallback_request_cost
from slm_router.router.ops.evaluation import EvalReport
from slm_router.router.ops.specialist_eval import Comparison
from slm_router.router.ops.tuning import OOD, Operating, ScoredSet, TuningResult
from slm_router.router.result import RouteResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from slm_router.router.ops.specialist_eval import EntityEval, SentimentEval, TranslationEval
    from slm_router.router.runnable import Router

CONFUSION_ROUTES = 20  # more than this and the matrix is unreadable: show the most confused routes


class NodeLatency(BaseModel):
    node: str
    calls: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


class LiveSample(BaseModel):
    """The whole router on a sample of rows: what only running the real models can tell."""

    rows: int
    errors: int
    escalation_rate: float
    escalation_rate_by_reason: dict[str, float]
    latency: list[NodeLatency]
    currency: str
    cost_per_1k_requests: float
    all_fallback_cost_per_1k_requests: float


class SpecialistReport(BaseModel):
    """One specialist's evaluation (`router.specialist_eval`): table rows, the specialist beside the
    reference models when there are any, and every number for JSON."""

    summary: list[tuple[str, str]]
    comparison: Comparison | None = None
    details: dict[str, Any]

    @classmethod
    def of(
        cls, evaluation: SentimentEval | EntityEval | TranslationEval, name: str = "specialist"
    ) -> SpecialistReport:
        """`name` heads the specialist's column in the comparison (e.g. the agent's name)."""
        compare = getattr(evaluation, "comparison", None)
        return cls(
            summary=evaluation.summary(),
            comparison=compare(name) if compare is not None else None,
            details=evaluation.model_dump(mode="json"),
        )


class FullReport(BaseModel):
    data: str
    router: EvalReport | None = None
    live: LiveSample | None = None
    specialists: dict[str, SpecialistReport] = {}
    pictures: dict[str, str] = {}


def _percentiles(name: str, values: list[float]) -> NodeLatency:
    p50, p95, p99 = (round(float(v), 3) for v in np.percentile(values, [50, 95, 99]))
    return NodeLatency(node=name, calls=len(values), p50_ms=p50, p95_ms=p95, p99_ms=p99)


def run_sample(
    router: Router,
    texts: list[str],
    size: int,
    seed: int = 0,
    progress: Callable[[], None] | None = None,
) -> LiveSample:
    """Route `size` random rows through the whole graph, one at a time (latency as one request sees it)."""
    from slm_router.router.errors import SlmRouterError

    router.warmup()  # model loading is start-up, not request latency
    rows = random.Random(seed).sample(texts, min(size, len(texts)))
    results: list[RouteResult] = []
    errors = 0
    for text in rows:
        try:
            results.append(router.invoke(text))
        except SlmRouterError:
            errors += 1
        if progress:
            progress()
    per_node: dict[str, list[float]] = {"total": [r.total_ms for r in results]}
    reasons: dict[str, int] = {}
    for r in results:
        for step in r.trace:
            per_node.setdefault(step.node, []).append(step.ms)
        if r.escalated or r.action == "reject":
            reasons[r.reason_code] = reasons.get(r.reason_code, 0) + 1
    pricing = router.policy.pricing
    answered = [len(r.output) for r in results if r.answered_by == "fallback" and r.output]
    # Priced at the answers the fallback gave here; with none, at its max_tokens.
    all_fallback = fallback_request_cost(
        router.policy, rows, pricing.tokens(float(np.mean(answered))) if answered else None
    )
    n = max(len(results), 1)
    return LiveSample(
        rows=len(rows),
        errors=errors,
        escalation_rate=round(sum(reasons.values()) / n, 4),
        escalation_rate_by_reason={k: round(v / n, 4) for k, v in sorted(reasons.items())},
        latency=[_percentiles(node, ms) for node, ms in per_node.items() if ms],
        currency=pricing.currency,
        cost_per_1k_requests=round(sum(r.cost for r in results) / n * 1000, 6),
        all_fallback_cost_per_1k_requests=round(all_fallback * 1000, 6) if rows else 0.0,
    )


def _figure(width: float = 6, height: float = 4) -> tuple[Figure, Any]:
    matplotlib = require("matplotlib", "eval", "the report's pictures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=120)


def _save(fig: Figure, out: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_confusion(data: ScoredSet, out: Path) -> None:
    """Rows: expected route; columns: the router's top route. Only the most confused routes when many."""
    from sklearn.metrics import confusion_matrix

    names = [*data.routes, "oos"]
    gold = np.where(data.labels == OOD, len(data.routes), data.labels)
    matrix = confusion_matrix(gold, data.probs.argmax(axis=1), labels=range(len(names)))
    errors = matrix.sum(axis=0) + matrix.sum(axis=1) - 2 * np.diag(matrix)
    keep = np.argsort(-errors, kind="stable")[:CONFUSION_ROUTES] if len(names) > CONFUSION_ROUTES else None
    if keep is not None:
        keep = np.sort(keep)
        matrix = matrix[np.ix_(keep, keep)]
        names = [names[i] for i in keep]
    size = 3 + 0.35 * len(names)
    fig, ax = _figure(size + 1, size)
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("router's top route")
    ax.set_ylabel("expected route")
    title = "confusion matrix"
    if keep is not None:
        title += f" ({len(names)} most confused of {len(data.routes) + 1})"
    ax.set_title(title)
    _save(fig, out)


def plot_reliability(data: ScoredSet, ece: float, out: Path, bins: int = 10) -> None:
    """Confidence vs how often the top route is right, on in-scope rows; the diagonal is perfect."""
    in_scope = data.labels != OOD
    conf = data.probs.max(axis=1)[in_scope]
    correct = (data.probs.argmax(axis=1) == data.labels)[in_scope]
    idx = confidence_bins(conf, bins)
    centres = (np.arange(bins) + 0.5) / bins
    accuracy = [correct[idx == b].mean() if (idx == b).any() else np.nan for b in range(bins)]
    counts = np.bincount(idx, minlength=bins)
    fig, ax = _figure(5, 5)
    ax.bar(centres, accuracy, width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    for x, y, n in zip(centres, accuracy, counts, strict=True):
        if n:
            ax.text(x, min(float(y), 0.95) + 0.02, str(n), ha="center", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("router confidence (calibrated probability of the top route)")
    ax.set_ylabel("share correct")
    ax.set_title(f"reliability diagram (ECE {ece:.3f}; numbers: rows per bin)")
    ax.legend(loc="upper left")
    _save(fig, out)


def plot_curve(result: TuningResult, baseline: Operating, out: Path) -> None:
    """Quality vs share escalated, with the chosen point and the policy before tuning marked; one curve per
    out-of-scope share the result was computed at (the file's and, if given, the expected one)."""
    fig, ax = _figure()
    for label, curve in (result.curves or {"tuned thresholds": result.curve}).items():
        xs, ys = zip(*curve, strict=True)
        ax.plot([x * 100 for x in xs], ys, label=label)
    chosen = result.chosen
    ax.scatter([chosen.escalation_rate * 100], [chosen.quality], color="red", zorder=3, label="chosen")
    ax.scatter(
        [baseline.escalation_rate * 100],
        [baseline.quality],
        color="gray",
        marker="x",
        zorder=3,
        label="policy before tuning",
    )
    ax.set_xlabel("% of requests escalated to the fallback")
    ax.set_ylabel("quality (escalated counted as correct)")
    ax.set_title("cost-quality curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    _save(fig, out)


class Section(NamedTuple):
    """One table of the report: name-value rows, or with a `header` one column per model."""

    title: str
    rows: list[tuple[str, ...]]
    header: tuple[str, ...] | None = None


def report_sections(report: FullReport) -> list[Section]:
    """Report sections, shared by the console, the Markdown and the HTML writers."""
    sections: list[Section] = []
    if report.router:
        r = report.router
        summary = r.model_dump(exclude={"per_route", "escalation_rate_by_reason"})
        sections.append(Section("Router", [(k, str(v)) for k, v in summary.items()]))
        sections.append(
            Section(
                "Escalation rate by reason (all rows)",
                [(k, f"{v:.4f}") for k, v in r.escalation_rate_by_reason.items()],
            )
        )
        worst = sorted(r.per_route.items(), key=lambda kv: kv[1].f1)
        sections.append(
            Section(
                "Per route (worst F1 first): precision / recall / F1 (support)",
                [
                    (name, f"{s.precision:.3f} / {s.recall:.3f} / {s.f1:.3f} ({s.support})")
                    for name, s in worst
                ],
            )
        )
    if report.live:
        live = report.live
        sections.append(
            Section(
                f"Whole router on {live.rows} sampled rows",
                [
                    ("errors", str(live.errors)),
                    ("escalation rate", f"{live.escalation_rate:.4f}"),
                    *((f"escalated: {k}", f"{v:.4f}") for k, v in live.escalation_rate_by_reason.items()),
                    (f"cost per 1k requests ({live.currency})", f"{live.cost_per_1k_requests:.4f}"),
                    (
                        f"cost per 1k if all went to the fallback ({live.currency})",
                        f"{live.all_fallback_cost_per_1k_requests:.4f}",
                    ),
                ],
            )
        )
        sections.append(
            Section(
                "Latency per node: p50 / p95 / p99 ms (calls)",
                [
                    (n.node, f"{n.p50_ms:.1f} / {n.p95_ms:.1f} / {n.p99_ms:.1f} ({n.calls})")
                    for n in live.latency
                ],
            )
        )
    for name, result in report.specialists.items():
        sections.append(Section(f"Specialist: {name}", list(result.summary)))
        if result.comparison is not None:
            header, rows = tuple(result.comparison.header), [tuple(r) for r in result.comparison.rows]
            sections.append(Section(f"Specialist: {name}, beside the reference models", rows, header))
    return sections


def write_report(report: FullReport, out_dir: Path) -> list[Path]:
    """report.json, report.md and report.html in `out_dir` (pictures are already there)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = report_sections(report)
    title = f"slm-router evaluation: {report.data}"
    md = [f"# {title}", ""]
    page = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "td,th{padding:2px 10px;text-align:left}tr:nth-child(even){background:#f3f3f3}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
    ]
    for heading, rows, header in sections:
        columns = header or ("", "")
        md += [
            f"## {heading}",
            "",
            "| " + " | ".join(columns) + " |",
            "|---|" + "---:|" * (len(columns) - 1) if header else "|---|---|",
            *("| " + " | ".join(row) + " |" for row in rows),
            "",
        ]
        page.append(f"<h2>{html.escape(heading)}</h2><table>")
        if header:
            page.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr>")
        for name, *values in rows:
            cells = "".join(f"<td>{html.escape(v)}</td>" for v in values)
            page.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
        page.append("</table>")
    for caption, file in report.pictures.items():
        md += [f"## {caption}", "", f"![{caption}]({file})", ""]
        page.append(f"<h2>{html.escape(caption)}</h2><img src='{html.escape(file)}' alt='{caption}'>")
    page.append("</body></html>")
    paths = [out_dir / "report.json", out_dir / "report.md", out_dir / "report.html"]
    paths[0].write_text(json.dumps(report.model_dump(mode="json"), indent=2), encoding="utf-8")
    paths[1].write_text("\n".join(md), encoding="utf-8")
    paths[2].write_text("\n".join(page), encoding="utf-8")
    return paths
