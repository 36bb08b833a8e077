"""`slm-router` command line: route, explain, demo, policy validation and head training."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer
from rich.console import Console
from rich.table import Table

from slm_router.policies import DEFAULT_POLICY, PolicyError, load_policy
from slm_router.router.errors import SlmRouterError

if TYPE_CHECKING:
    from slm_router.router.ops.decision_log import DecisionLog
    from slm_router.router.ops.report import FullReport, SpecialistReport
    from slm_router.router.result import RouteResult
    from slm_router.router.runnable import Router

app = typer.Typer(
    help="Route each request to the cheapest model that can answer it well.", no_args_is_help=True
)
policy_app = typer.Typer(help="Check policy files.", no_args_is_help=True)
train_app = typer.Typer(help="Train the small heads shipped with slm-router.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(train_app, name="train")
log_app = typer.Typer(help="Read the decision log (every routed request).", no_args_is_help=True)
app.add_typer(log_app, name="log")

console = Console()
err = Console(stderr=True)

CONSOLE_ROWS = 15
PolicyOpt = Annotated[
    Path | None, typer.Option("--policy", "-p", help="Policy YAML (default: packaged preset).")
]

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


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _router(policy: Path | None) -> Router:
    from slm_router.router.runnable import Router

    try:
        return Router.from_policy(policy)
    except (PolicyError, SlmRouterError) as exc:
        _fail(str(exc))


def _result_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold cyan")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    return table


def _result_rows(result: RouteResult) -> list[tuple[str, str]]:
    spec = "-" if result.specialist_confidence is None else f"{result.specialist_confidence:.2f}"
    escalated = "[yellow]yes[/]" if result.escalated else "no"
    return [
        ("route", f"{result.route} ({result.action}, answered by {result.answered_by})"),
        ("output", result.output or "-"),
        ("confidence", f"router {result.confidence:.2f}, specialist {spec}"),
        ("escalated", escalated + ("  [red](degraded)[/]" if result.degraded else "")),
        ("reason", result.reason),
        ("language", result.language),
        (
            "latency",
            " ".join(f"{s.node}={s.ms:.0f}ms" for s in result.trace) + f"  total={result.total_ms:.0f}ms",
        ),
    ]


def _read_text(text: str) -> str:
    if text != "-":
        return text
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        _fail(f"stdin is not valid UTF-8: {exc.reason} at byte {exc.start}")


@app.command()
def route(
    text: Annotated[str, typer.Argument(help="Text to route; '-' reads stdin.")],
    policy: PolicyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the RouteResult as JSON.")] = False,
    force: Annotated[str | None, typer.Option("--route", help="Force a route.")] = None,
) -> None:
    """Route one message and show who answered, how sure it was and why."""
    router = _router(policy)
    try:
        result = router.invoke({"text": _read_text(text), "route": force})
    except SlmRouterError as exc:
        _fail(f"{type(exc).__name__}: {exc}")
    if as_json:
        print(result.model_dump_json(indent=2))
    else:
        console.print(_result_table(text[:80], _result_rows(result)))


@app.command()
def explain(
    text: Annotated[str, typer.Argument(help="Text to explain; '-' reads stdin.")],
    policy: PolicyOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Scores per route, the nearest examples, and the decision with its reason (no agent is called)."""
    router = _router(policy)
    try:
        exp = router.explain(_read_text(text))
    except SlmRouterError as exc:
        _fail(f"{type(exc).__name__}: {exc}")
    if as_json:
        print(exp.model_dump_json(indent=2))
        return
    scores = Table(title=f"routes for: {exp.text[:70]}", title_justify="left")
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
        near.add_row(n.route, f"{n.similarity:.3f}", n.text)
    console.print(near)
    cal = exp.calibration
    console.print(
        f"language: {exp.language}   margin: {exp.scores.margin:.3f}   "
        f"max similarity: {exp.scores.max_similarity:.3f} (OOD below {router.policy.router.ood_threshold})"
    )
    console.print(
        f"calibration: temperature {cal.temperature:.4f}, leave-one-out accuracy {cal.loo_accuracy:.3f}, "
        f"ECE {cal.ece:.3f} on {cal.examples} examples"
    )
    console.print(f"[bold]decision:[/] {exp.decision} -> {exp.route}   [bold]because[/] {exp.reason}")


@app.command()
def demo(policy: PolicyOpt = None) -> None:
    """Route built-in support messages through the real models, fallback included."""
    start = time.perf_counter()
    with console.status("loading models (embedder, spaCy, translation, llama.cpp)..."):
        router = _router(policy)
        router.warmup()
    console.print(f"[dim]models loaded in {time.perf_counter() - start:.1f} s[/]")
    for label, message in DEMO_MESSAGES:
        try:
            result = router.invoke(message)
        except SlmRouterError as exc:
            console.print(f"[red]{label}: {type(exc).__name__}: {exc}[/]")
            continue
        console.print(_result_table(f"{label}: {message}", _result_rows(result)))


@app.command()
def serve(
    policy: PolicyOpt = None,
    backend: Annotated[
        str | None, typer.Option(help="local | ray (default: the policy's hosting.backend)")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Bind address (default: the policy's server.host).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: the policy's server.port).")] = None,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs). SIGINT/SIGTERM drain in-flight requests, then stop."""
    import uvicorn

    from slm_router.router.service.app import ServerConfigError, create_app, resolve_api_keys

    if backend not in (None, "local", "ray"):
        _fail(f"--backend must be 'local' or 'ray', got {backend!r}")
    try:
        conf = load_policy(policy)
    except PolicyError as exc:
        _fail(str(exc))
    bind_host = host or conf.server.host
    try:
        keys = resolve_api_keys(conf.server, bind_host)
    except ServerConfigError as exc:
        _fail(str(exc))
    from slm_router.router.runnable import Router

    with console.status(f"loading models ({backend or conf.hosting.backend} backend)..."):
        try:
            router = Router(conf, backend="ray" if backend == "ray" else "local" if backend else None)
        except Exception as exc:  # start-up / deployment failure: one line, the traceback only at debug
            import logging

            logging.getLogger(__name__).debug("router start-up failed", exc_info=True)
            if isinstance(exc, SlmRouterError):
                reason = str(exc)  # our own errors are written for the user
            else:  # e.g. Ray Serve's deployment failure, whose message can carry whole tracebacks
                first = (str(exc).strip().splitlines() or [""])[0]
                reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
            _fail(f"could not start the router ({backend or conf.hosting.backend} backend): {reason}", code=1)
    app_ = create_app(router, conf.server, keys)
    console.print(
        f"serving on http://{bind_host}:{port or conf.server.port}  (docs: /docs, metrics: /metrics)"
    )
    uvicorn.run(
        app_,
        host=bind_host,
        port=port or conf.server.port,
        log_level="warning",
        timeout_graceful_shutdown=30,
        access_log=False,
        # Past this many open connections uvicorn answers 503 itself: a backstop behind admission control.
        limit_concurrency=conf.server.max_connections,
        timeout_keep_alive=5,
    )


@app.command("eval")
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report instead of tables.")] = False,
) -> None:
    """Route accuracy, per-route F1, OOS recall, calibration, escalation by reason, latency per node and
    cost; specialist quality on their own data files. Writes a Markdown + HTML + JSON report."""
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
        _fail("give a routing data file, or --sentiment / --entities / --translation files")
    router = _router(policy)
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
                with _progress(min(sample, len(texts)), "whole router on a sample", not as_json) as tick:
                    full.live = run_sample(router, texts, sample, progress=tick)
        full.specialists = _specialist_evals(
            router, sentiment, entities, translation, pair or ["en-pt"], not as_json
        )
        paths = write_report(full, out)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
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
) -> dict[str, SpecialistReport]:
    """Each specialist on its own labelled file, with the agent and the `min_confidence` the policy sets."""
    from slm_router.agents.translation import parse_pair
    from slm_router.router.ops.report import SpecialistReport
    from slm_router.router.ops.specialist_eval import (
        evaluate_entities,
        evaluate_sentiment,
        evaluate_translation,
        read_entities,
        read_sentiment,
        read_translation,
    )
    from slm_router.router.runnable import build_agent

    def min_confidence(agent: str) -> float | None:
        routes = [r for r in router.policy.routes.values() if r.agent == agent]
        return routes[0].min_confidence if routes else None

    out: dict[str, SpecialistReport] = {}
    if sentiment is not None:
        rows = read_sentiment(sentiment)
        agent = build_agent(router.policy, "sentiment", router.embedder)
        result = evaluate_sentiment(rows, agent, min_confidence("sentiment"), show_progress=show)
        out["sentiment"] = SpecialistReport.of(result)
    if entities is not None:
        agent = build_agent(router.policy, "extract", router.embedder)
        found = evaluate_entities(read_entities(entities), agent, show_progress=show)
        out["entities"] = SpecialistReport.of(found)
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


@contextmanager
def _progress(total: int, label: str, show: bool) -> Iterator[Callable[[], None]]:
    """A rich progress bar as a `tick()` callback (silent when `show` is false)."""
    from rich.progress import Progress

    with Progress(console=err, disable=not show, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


def _print_report(full: FullReport) -> None:
    from slm_router.router.ops.report import report_sections

    for heading, rows in report_sections(full):
        if len(rows) > CONSOLE_ROWS:  # 150 routes: the console shows the worst, the report has them all
            rows = [*rows[:CONSOLE_ROWS], ("...", f"{len(rows) - CONSOLE_ROWS} more in report.md")]
        console.print(_result_table(heading, rows))


@app.command()
def tune(
    data: Annotated[Path, typer.Argument(help="JSONL rows: text, route (or `oos`).")],
    out: Annotated[Path, typer.Option(help="Where to write the tuned policy YAML.")],
    policy: PolicyOpt = None,
    max_escalation: Annotated[
        float | None, typer.Option(help="Target: at most this share escalated.")
    ] = None,
    min_accuracy: Annotated[
        float | None, typer.Option(help="Target: local answers right this often.")
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option(help="Target: cost per 1,000 requests, in the policy's pricing.currency."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite --out if it exists.")] = False,
) -> None:
    """Choose per-route and OOD thresholds for one target on half the data; report on the other half."""
    import yaml

    from slm_router.router.core.costs import fallback_request_cost
    from slm_router.router.ops.evaluation import policy_thresholds, read_rows, score, split, tuned_policy
    from slm_router.router.ops.report import plot_curve
    from slm_router.router.ops.tuning import Target, TargetKind, TuningError, evaluate
    from slm_router.router.ops.tuning import tune as choose

    targets = {"max_escalation": max_escalation, "min_accuracy": min_accuracy, "budget": budget}
    chosen_targets = [(k, v) for k, v in targets.items() if v is not None]
    if len(chosen_targets) != 1:
        _fail("give exactly one target: --max-escalation, --min-accuracy or --budget")
    if out.exists() and not force:
        _fail(f"{out} exists; pass --force to overwrite it")
    kind, value = chosen_targets[0]
    router = _router(policy)
    pricing = router.policy.pricing
    try:
        texts, routes = read_rows(data)
        per_call = fallback_request_cost(router.policy, texts)
        if kind == "budget" and per_call <= 0:
            _fail("--budget needs a price for the fallback: set pricing.models.fallback in the policy")
        target = (
            Target("budget", value / 1000, fallback_cost=per_call)
            if kind == "budget"
            else Target(cast(TargetKind, kind), value, fallback_cost=per_call)
        )
        scored = score(texts, routes, router.policy, router.index, router.embedder)
        tuning, held = split(scored)
        result = choose(tuning, target)
    except (OSError, ValueError, TuningError) as exc:
        _fail(str(exc))
    before = evaluate(
        held, policy_thresholds(router.policy, held.routes), router.policy.router.ood_threshold, target
    )
    after = evaluate(held, result.chosen.thresholds, result.chosen.ood_threshold, target)
    out.write_text(yaml.safe_dump(tuned_policy(router.policy, result), sort_keys=False, allow_unicode=True))
    curve = out.with_suffix(".png")
    plot_curve(
        result,
        evaluate(
            tuning,
            policy_thresholds(router.policy, tuning.routes),
            router.policy.router.ood_threshold,
            target,
        ),
        curve,
    )
    rows = [
        (name, f"{b:.4g} -> {a:.4g}")
        for name, b, a in (
            ("escalation rate", before.escalation_rate, after.escalation_rate),
            ("routed accuracy", before.routed_accuracy, after.routed_accuracy),
            ("quality", before.quality, after.quality),
            (
                f"cost per 1k requests ({pricing.currency}, estimated)",
                before.cost_per_request * 1000,
                after.cost_per_request * 1000,
            ),
        )
    ]
    console.print(_result_table(f"report split ({len(held.labels)} rows), target {kind}={value:g}", rows))
    console.print(f"[green]wrote[/] {out} and {curve}")


@app.command()
def learn(
    heldout: Annotated[Path, typer.Option(help="Labelled JSONL (text, route) to compare before/after on.")],
    policy: PolicyOpt = None,
    labels: Annotated[
        Path | None, typer.Option(help="Operator-labelled JSONL (text, route) to learn from.")
    ] = None,
    from_log: Annotated[
        bool, typer.Option(help="Learn logged escalations, labelled by the fallback model as teacher.")
    ] = False,
    db: DbOpt = None,
    limit: Annotated[int, typer.Option(help="Most recent logged decisions to look at.")] = 1000,
    out: Annotated[Path | None, typer.Option(help="Where --write puts the new policy YAML.")] = None,
    head_data: Annotated[
        Path | None,
        typer.Option(
            help="With --from-log: write teacher sentiment labels here (for `train sentiment --extra`)."
        ),
    ] = None,
    write: Annotated[bool, typer.Option(help="Write the new policy (without it: report only).")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite --out if it exists.")] = False,
) -> None:
    """Turn escalations into route examples, refit, and show escalation and accuracy before and after."""
    import yaml

    from slm_router.router.core.index import load_utterances
    from slm_router.router.ops.decision_log import DecisionLogError
    from slm_router.router.ops.evaluation import read_rows
    from slm_router.router.ops.learning import Example, compare, learnable_rows, sentiment_rows, teach
    from slm_router.router.ops.training import read_labelled

    if labels is None and not from_log:
        _fail("give --labels FILE (operator labels) and/or --from-log (teacher-labelled escalations)")
    if write and out is None:
        _fail("--write needs --out: where to write the new policy")
    if write and out is not None and out.exists() and not force:
        live = out.resolve() == (policy or DEFAULT_POLICY).resolve()
        _fail(f"{out} {'is the policy in use' if live else 'exists'}; pass --force to overwrite it")
    try:
        log_rows = _decision_log(policy, db).tail(limit) if from_log else []
    except DecisionLogError as exc:
        _fail(str(exc))
    router = _router(policy)
    try:
        examples = (
            [Example(text=t, route=r, source="operator") for t, r in read_labelled(labels, ("route",))]
            if labels
            else []
        )
        skipped = 0
        if from_log:
            if router.fallback is None:
                _fail("--from-log needs the policy's fallback model as teacher (fallback.enabled)")
            rows = learnable_rows(log_rows)
            if not rows:
                err.print("no logged escalations with text (privacy.log_text must be on to learn from them)")
            with _progress(len(rows), "teacher labelling escalations", True) as tick:
                taught, skipped = teach(rows, router.fallback, load_utterances(router.policy), progress=tick)
            examples += taught
            if head_data is not None:
                routes = {n for n, r in router.policy.routes.items() if r.agent == "sentiment"}
                prompt = next((router.policy.routes[n].fallback_prompt for n in sorted(routes)), None)
                labelled = sentiment_rows(taught, routes, router.fallback, prompt)
                head_data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in labelled))
                console.print(f"[green]wrote[/] {len(labelled)} sentiment rows to {head_data}")
        result, data = compare(router.policy, examples, router.embedder, read_rows(heldout), skipped)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    finally:
        router.close()
    rows_ = [
        (name, f"{getattr(result.before, key)} -> {getattr(result.after, key)}")
        for name, key in (
            ("in-scope accuracy", "in_scope_accuracy"),
            ("escalation rate", "escalation_rate"),
            ("routed accuracy", "routed_accuracy"),
            ("OOS recall", "oos_recall"),
            ("ECE", "ece"),
        )
    ]
    learned = ", ".join(f"{r} +{n}" for r, n in sorted(result.learned.items())) or "nothing new"
    rows_ += [("learned examples", learned), ("not learned", str(result.skipped))]
    console.print(_result_table(f"held-out {heldout} ({result.before.rows} rows)", rows_))
    if write and out is not None:
        out.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        console.print(f"[green]wrote[/] {out}")
    else:
        console.print("[dim]report only: pass --write --out FILE to save the new policy[/]")


@policy_app.command("validate")
def policy_validate(file: Annotated[Path, typer.Argument(help="Policy YAML file.")]) -> None:
    """Check a policy file; prints one line per problem, naming the field."""
    from slm_router.router.core.index import load_utterances
    from slm_router.router.runnable import check_agents

    try:
        policy = load_policy(file)
        check_agents(policy)
        counts = {name: len(texts) for name, texts in load_utterances(policy).items()}
    except PolicyError as exc:
        _fail(str(exc), code=1)
    console.print(f"[green]ok[/] {file}: " + ", ".join(f"{k} ({v} examples)" for k, v in counts.items()))


@policy_app.command("schema")
def policy_schema() -> None:
    """Print the policy JSON schema (for editors and CI checks)."""
    from slm_router.policies import Policy

    print(json.dumps(Policy.model_json_schema(), indent=2))


@train_app.command("sentiment")
def train_sentiment(
    data: Annotated[Path, typer.Argument(help="JSONL with `text` and `label` (negative/neutral/positive).")],
    extra: Annotated[
        list[Path] | None,
        typer.Option(help="More labelled JSONL (default: the packaged support-domain set)."),
    ] = None,
    extra_weight: Annotated[float, typer.Option(help="Row weight of --extra data vs DATA.")] = 5.0,
    out: Annotated[Path, typer.Option(help="Where to write the head (.npz).")] = Path(
        "agents/weights/sentiment_head.npz"
    ),
    policy: PolicyOpt = None,
) -> None:
    """Train the sentiment head on the router's embedding; reports held-out scores per data file."""
    from slm_router.agents.sentiment import SUPPORT_SET
    from slm_router.router.core.embedder import Embedder
    from slm_router.router.ops.training import train_sentiment_head

    files = [SUPPORT_SET] if extra is None else extra
    for path in [data, *files]:
        if not path.is_file():
            _fail(f"data file not found: {path}")
    sources = {data.stem: (data, 1.0)} | {p.stem: (p, extra_weight) for p in files}
    conf = load_policy(policy)
    embedder = Embedder(conf.resolve(conf.router.embedder) if conf.router.embedder else None)
    try:
        report = train_sentiment_head(sources, out, embedder)
    except ValueError as exc:
        _fail(str(exc))
    console.print(f"[green]wrote[/] {out}")
    print(report.model_dump_json(indent=2))


DbOpt = Annotated[
    Path | None, typer.Option("--db", help="Decision log file (default: the policy's decision_log.path).")
]
SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _decision_log(policy: Path | None, db: Path | None) -> DecisionLog:
    from slm_router.router.ops.decision_log import DecisionLog, log_path

    if db is not None:
        return DecisionLog(db)
    try:
        return DecisionLog(log_path(load_policy(policy)))
    except PolicyError as exc:
        _fail(str(exc))


def _parse_since(since: str) -> float:
    value, unit = since[:-1], since[-1:]
    try:
        seconds = float(value) * SINCE_UNITS[unit]
    except (KeyError, ValueError):
        _fail(f"--since must look like 30m, 1h, 2d or 90s, got {since!r}")
    if seconds <= 0:
        _fail(f"--since must be positive, got {since!r}")
    return seconds


@log_app.command("tail")
def log_tail(
    n: Annotated[int, typer.Option("-n", min=1, help="How many decisions, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    policy: PolicyOpt = None,
    db: DbOpt = None,
) -> None:
    """The latest decisions: route, action, escalation and why, latency."""
    try:
        rows = _decision_log(policy, db).tail(n)
    except SlmRouterError as exc:
        _fail(str(exc))
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


@log_app.command("stats")
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
        stats = _decision_log(policy, db).stats(seconds)
    except SlmRouterError as exc:
        _fail(str(exc))
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


@log_app.command("export")
def log_export(
    file: Annotated[Path, typer.Argument(help="Output file.")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl | csv")] = "jsonl",
    policy: PolicyOpt = None,
    db: DbOpt = None,
) -> None:
    """Write every decision, oldest first, as JSON lines or CSV."""
    if fmt not in ("jsonl", "csv"):
        _fail(f"--format must be 'jsonl' or 'csv', got {fmt!r}")
    try:
        count = _decision_log(policy, db).export(file, "csv" if fmt == "csv" else "jsonl")
    except SlmRouterError as exc:
        _fail(str(exc))
    console.print(f"[green]wrote[/] {count} decisions to {file}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
