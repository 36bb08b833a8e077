"""The `slm-router` command line: one module per command group, mounted here in the order `--help` lists
them. Commands import their models inside, so `--help` and a mistyped option answer at once."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer

from slm_router.router.cli import evaluate, learn, log, policy, routing, serve, train, tune

app = typer.Typer(
    help="Route each request to the cheapest model that can answer it well.", no_args_is_help=True
)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"slm-router {version('slm-router')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Route each request to the cheapest model that can answer it well."""


app.command()(routing.route)
app.command()(routing.explain)
app.command()(routing.demo)
app.command()(serve.serve)
app.command("eval")(evaluate.eval_)
app.command()(tune.tune)
app.command()(learn.learn)
app.add_typer(policy.app, name="policy")
app.add_typer(train.app, name="train")
app.add_typer(log.app, name="log")


def main() -> None:
    app()


__all__ = ["app", "main"]
