"""Commands that route text: `route` (one message), `explain` (why, without calling an agent) and `demo`."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from slm_router.router.cli.options import PolicyOpt, load_router
from slm_router.router.cli.output import console, fail, result_table
from slm_router.router.errors import SlmRouterError

if TYPE_CHECKING:
    from slm_router.router.result import RouteResult, Translation

DEMO_MESSAGES = [
    ("English complaint", "I am really angry, my package arrived broken and nobody answers my emails!"),
    ("Portuguese message", "Olá, o meu pedido ainda não chegou. Podem verificar, por favor?"),
    (
        "order, email, amount",
        "Order #A12345 was charged $49.99 twice, please refund me at jane.doe@example.com",
    ),
    ("translate request", "Translate to Portuguese: your refund has been approved"),
    ("ambiguous question", "I have a problem with my last purchase"),
    ("off-topic question", "What is the best way to grow tomatoes on a balcony?"),
    ("German (no local model)", "Ich möchte meine Bestellung stornieren, bitte."),
]


def _result_rows(result: RouteResult) -> list[tuple[str, str]]:
    spec = "-" if result.specialist_confidence is None else f"{result.specialist_confidence:.2f}"
    escalated = "[yellow]yes[/]" if result.escalated else "no"
    return [
        ("route", f"{result.route} ({result.action}, answered by {result.answered_by})"),
        ("output", escape(result.output) or "-"),
        ("confidence", f"router {result.confidence:.2f}, specialist {spec}"),
        ("escalated", escalated + ("  [red](degraded)[/]" if result.degraded else "")),
        ("reason", escape(result.reason)),
        ("language", result.language),
        *_translation_row(result),
        (
            "latency",
            " ".join(f"{s.node}={s.ms:.0f}ms" for s in result.trace) + f"  total={result.total_ms:.0f}ms",
        ),
    ]


def _translation_row(result: RouteResult) -> list[tuple[str, str]]:
    """What the message was routed by when it was translated first: a route that looks wrong for the
    message often reads right for its translation. Escaped: the text may hold `[...]`, which rich reads
    as markup."""
    return [] if result.translation is None else [("translation", _translated(result.translation))]


def _translated(t: Translation) -> str:
    return f"{t.source_language} → {t.target_language} by {t.translated_by}: {escape(t.text)}"


def _read_text(text: str) -> str:
    if text != "-":
        return text
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"stdin is not valid UTF-8: {exc.reason} at byte {exc.start}")


def route(
    text: Annotated[str, typer.Argument(help="Text to route; '-' reads stdin.")],
    policy: PolicyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the RouteResult as JSON.")] = False,
    force: Annotated[str | None, typer.Option("--route", help="Force a route.")] = None,
) -> None:
    """Route one message and show who answered, how sure it was and why."""
    router = load_router(policy)
    try:
        result = router.invoke({"text": _read_text(text), "route": force})
    except SlmRouterError as exc:
        fail(f"{type(exc).__name__}: {exc}")
    if as_json:
        print(result.model_dump_json(indent=2))
    else:
        console.print(result_table(text[:80], _result_rows(result)))


def explain(
    text: Annotated[str, typer.Argument(help="Text to explain; '-' reads stdin.")],
    policy: PolicyOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Scores per route, the nearest examples, and the decision with its reason (no agent is called)."""
    router = load_router(policy)
    try:
        exp = router.explain(_read_text(text))
    except SlmRouterError as exc:
        fail(f"{type(exc).__name__}: {exc}")
    if as_json:
        print(exp.model_dump_json(indent=2))
        return
    scores = Table(title=f"routes for: {escape(exp.text[:70])}", title_justify="left")
    for col in ("route", "similarity", "confidence", "threshold"):
        scores.add_column(col, justify="right" if col != "route" else "left")
    for name, prob in sorted(exp.scores.probabilities.items(), key=lambda kv: -kv[1]):
        mark = " ◀" if name == exp.scores.top else ""
        scores.add_row(
            name + mark,
            f"{exp.scores.similarities[name]:.3f}",
            f"{prob:.3f}",
            f"{router.policy.threshold(name):.2f}",
        )
    console.print(scores)
    near = Table(title="nearest examples", title_justify="left")
    near.add_column("route")
    near.add_column("similarity", justify="right")
    near.add_column("example", overflow="fold")
    for n in exp.nearest:
        near.add_row(n.route, f"{n.similarity:.3f}", escape(n.text))
    console.print(near)
    cal = exp.calibration
    settings = router.policy.router
    ood = (
        f"in-scope p {exp.scores.in_scope_p:.4f} (out of scope below {settings.ood_false_alarm})"
        if exp.scores.in_scope_p is not None
        else f"max similarity {exp.scores.max_similarity:.3f} (out of scope below {settings.ood_threshold})"
    )
    console.print(f"language: {exp.language}   margin: {exp.scores.margin:.3f}   {ood}")
    if exp.translation is not None:  # the scores and the nearest examples are the translation's
        console.print(f"translated {_translated(exp.translation)}")
    console.print(
        f"calibration: temperature {cal.temperature:.4f} ({cal.classifier}), {cal.held_out} accuracy "
        f"{cal.held_out_accuracy:.3f}, ECE {cal.ece:.3f} on {cal.examples} examples"
    )
    console.print(f"[bold]decision:[/] {exp.decision} -> {exp.route}   [bold]because[/] {escape(exp.reason)}")


def demo(policy: PolicyOpt = None) -> None:
    """Route built-in support messages through the real models, fallback included."""
    start = time.perf_counter()
    with console.status("loading models (embedder, spaCy, translation, llama.cpp)..."):
        router = load_router(policy)
        router.warmup()
    console.print(f"[dim]models loaded in {time.perf_counter() - start:.1f} s[/]")
    for label, message in DEMO_MESSAGES:
        try:
            result = router.invoke(message)
        except SlmRouterError as exc:
            console.print(f"[red]{label}: {type(exc).__name__}: {exc}[/]")
            continue
        console.print(result_table(f"{label}: {message}", _result_rows(result)))
