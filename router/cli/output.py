"""What the command line prints: results on stdout, errors and progress on stderr, so `--json` output
stays parseable."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from slm_router.extras import MissingExtraError, require_extra

console = Console()
err = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """One red line instead of a traceback, exit code 1: what went wrong while running (a file, the policy,
    a model, the input text). Plain text: `[...]` in it (an extra's name, a list index) is not markup."""
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(1)


def need_extra(extra: str, feature: str) -> None:
    """Before a command loads any model: the one-line error naming the extra to install, if it is missing."""
    try:
        require_extra(extra, feature)
    except MissingExtraError as exc:
        fail(str(exc))


def usage(message: str) -> NoReturn:
    """The same line, exit code 2 (the code click gives its own parsing errors): the options given do not
    make a valid command."""
    err.print(f"[bold red]error:[/] {escape(message)} (see --help)")
    raise typer.Exit(2)


def result_table(title: str, rows: list[tuple[str, str]]) -> Table:
    """`title` is plain text (often the user's message), escaped: rich would read `[...]` in it as markup and
    fail on e.g. `a [/x] b`; the values may hold markup."""
    table = Table(title=escape(title), show_header=False, title_justify="left")
    table.add_column(style="bold cyan")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    return table


@contextmanager
def progress(total: int, label: str, show: bool) -> Iterator[Callable[[], None]]:
    """A rich progress bar as a `tick()` callback (silent when `show` is false)."""
    from rich.progress import Progress

    with Progress(console=err, disable=not show, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)
