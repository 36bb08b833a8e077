"""`train`: fit the small heads that ship with slm-router on the router's own embedding."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slm_router.policies import load_policy
from slm_router.router.cli.options import PolicyOpt
from slm_router.router.cli.output import console, fail

app = typer.Typer(help="Train the small heads shipped with slm-router.", no_args_is_help=True)


@app.command("sentiment")
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
            fail(f"data file not found: {path}")
    sources = {data.stem: (data, 1.0)} | {p.stem: (p, extra_weight) for p in files}
    conf = load_policy(policy)
    embedder = Embedder(conf.resolve(conf.router.embedder) if conf.router.embedder else None)
    try:
        report = train_sentiment_head(sources, out, embedder)
    except ValueError as exc:
        fail(str(exc))
    console.print(f"[green]wrote[/] {out}")
    print(report.model_dump_json(indent=2))
