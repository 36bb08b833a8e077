"""Options more than one command takes, and the objects they name, opened with a one-line error."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from slm_router.extras import MissingExtraError
from slm_router.policies import PolicyError, load_policy
from slm_router.router.cli.output import fail
from slm_router.router.errors import SlmRouterError

if TYPE_CHECKING:
    from slm_router.router.ops.decision_log import DecisionLog
    from slm_router.router.runnable import Router

PolicyOpt = Annotated[
    Path | None, typer.Option("--policy", "-p", help="Policy YAML (default: packaged preset).")
]
DbOpt = Annotated[
    Path | None, typer.Option("--db", help="Decision log file (default: the policy's decision_log.path).")
]


def load_router(policy: Path | None) -> Router:
    from slm_router.router.runnable import Router

    try:
        return Router.from_policy(policy)
    except (PolicyError, SlmRouterError, MissingExtraError) as exc:  # e.g. hosting.backend: ray
        fail(str(exc))


def open_decision_log(policy: Path | None, db: Path | None) -> DecisionLog:
    from slm_router.router.ops.decision_log import DecisionLog, log_path

    if db is not None:
        return DecisionLog(db)
    try:
        return DecisionLog(log_path(load_policy(policy)))
    except PolicyError as exc:
        fail(str(exc))
