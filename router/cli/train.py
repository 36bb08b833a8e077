"""`train`: fit the small models that ship with slm-router."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from slm_router.policies import load_policy
from slm_router.router.cli.options import PolicyOpt
from slm_router.router.cli.output import console, fail

app = typer.Typer(help="Train the small models shipped with slm-router.", no_args_is_help=True)


@app.command("sentiment")
def train_sentiment(
    data: Annotated[
        list[Path], typer.Argument(help="JSONL file(s) with `text` and `label` (negative/neutral/positive).")
    ],
    extra: Annotated[
        list[Path] | None,
        typer.Option(help="In-domain labelled JSONL (default: the packaged support-domain set)."),
    ] = None,
    extra_weight: Annotated[float, typer.Option(help="Row weight of --extra data vs DATA.")] = 5.0,
    backend: Annotated[
        Literal["model", "head"],
        typer.Option(
            help="model: fine-tune MiniLM (LoRA) + lexicon; head: a linear head on the router's vector."
        ),
    ] = "model",
    out: Annotated[
        Path | None,
        typer.Option(
            help="A directory (model) or .npz (head); default ./sentiment_model, ./sentiment_head.npz."
        ),
    ] = None,
    epochs: Annotated[float, typer.Option(min=0.05, help="Passes over the training rows (model).")] = 1.0,
    max_rows: Annotated[
        int, typer.Option(min=10, help="Training rows kept per data file at most (model), sampled.")
    ] = 8_000,
    threads: Annotated[int, typer.Option(min=0, help="torch threads (0 = torch's default).")] = 0,
    policy: PolicyOpt = None,
) -> None:
    """Train the sentiment model; reports held-out scores (accuracy, macro-F1, ECE) per data file.

    Point a policy at the result with `agents.sentiment.path` (and `backend: head` for a head).
    """
    from slm_router.agents.sentiment import SUPPORT_SET

    files = [SUPPORT_SET] if extra is None else extra
    for path in [*data, *files]:
        if not path.is_file():
            fail(f"data file not found: {path}")
    weights = {p: 1.0 for p in data} | {p: extra_weight for p in files}
    try:
        if backend == "model":
            report_json = _train_model(weights, out or Path("sentiment_model"), epochs, max_rows, threads)
        else:
            report_json = _train_head(weights, out or Path("sentiment_head.npz"), policy)
    except ValueError as exc:
        fail(str(exc))
    console.print(
        f"[green]wrote[/] {out or ('sentiment_model' if backend == 'model' else 'sentiment_head.npz')}"
    )
    print(report_json)


def _train_model(weights: dict[Path, float], out: Path, epochs: float, max_rows: int, threads: int) -> str:
    from slm_router.router.ops.sentiment_finetune import FinetuneSettings, SourceSpec, finetune_sentiment

    settings = FinetuneSettings(epochs=epochs, max_rows_per_source=max_rows, threads=threads)
    sources = {p.stem: SourceSpec(path=p, weight=w) for p, w in weights.items()}
    return finetune_sentiment(sources, out, settings).model_dump_json(indent=2)


def _train_head(weights: dict[Path, float], out: Path, policy: Path | None) -> str:
    from slm_router.router.core.embedder import Embedder
    from slm_router.router.ops.training import train_sentiment_head

    conf = load_policy(policy)
    embedder = Embedder(conf.resolve(conf.router.embedder) if conf.router.embedder else None)
    sources = {p.stem: (p, w) for p, w in weights.items()}
    return train_sentiment_head(sources, out, embedder).model_dump_json(indent=2)


@app.command("entities")
def train_entities(
    data: Annotated[
        Path, typer.Argument(help="JSONL: text, entities [{start, end, label}] (e.g. WNUT-17 train).")
    ],
    dev: Annotated[
        list[Path] | None,
        typer.Option(
            help="Labelled JSONL scored after training (repeatable; cross-fitted if also --calibration); the "
            "label map is picked by its labels (WNUT-17 or CoNLL-2003 types)."
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Directory for the adapter, classifier and training.json.")
    ] = Path("entity_tagger"),
    calibration: Annotated[
        Path | None,
        typer.Option(
            help="Labelled JSONL the confidence is fitted on (e.g. WNUT-17 dev, closer to new traffic than "
            "the training rows); default: the training rows held out from the tagger."
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training rows.")] = 8,
    max_rows: Annotated[int, typer.Option(min=0, help="Train on the first N rows only (0: all).")] = 0,
    threads: Annotated[int, typer.Option(min=0, help="torch threads (0 = torch's default).")] = 1,
) -> None:
    """Fine-tune the entity tagger (LoRA on the packaged MiniLM) and fit the extraction confidence on rows
    it did not train on; reports span F1, ECE and kept/escalated accuracy. Use it with
    `agents.extract.tagger`."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from slm_router.router.cli.output import err
    from slm_router.router.ops.specialist_eval import read_entities
    from slm_router.router.ops.tagger_training import TaggerSettings, guess_label_map, train_tagger

    for path in [data, *(dev or []), *([calibration] if calibration else [])]:
        if not path.is_file():
            fail(f"data file not found: {path}")
    settings = TaggerSettings(epochs=epochs, max_rows=max_rows, threads=threads)
    try:
        dev_maps = {p.stem: (p, guess_label_map(read_entities(p))) for p in dev or []}
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"))
        with Progress(*columns, TimeElapsedColumn(), console=err, transient=True) as bar:
            task = bar.add_task("training", total=None, status="")
            report = train_tagger(
                data,
                out,
                dev_maps,
                settings,
                progress=lambda n, total, status: bar.update(task, advance=n, total=total, status=status),
                calibration=calibration,
            )
    except ValueError as exc:
        fail(str(exc))
    console.print(f"[green]wrote[/] {out}")
    print(report.model_dump_json(indent=2))
