"""`policy`: check a policy file, or print the schema editors and CI check against."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from slm_router.policies import PolicyError, load_policy
from slm_router.router.cli.output import console, fail

app = typer.Typer(help="Check policy files.", no_args_is_help=True)


@app.command("validate")
def policy_validate(file: Annotated[Path, typer.Argument(help="Policy YAML file.")]) -> None:
    """Check a policy file; prints one line per problem, naming the field."""
    from slm_router.router.compose import with_agent_routes
    from slm_router.router.core.index import load_utterances

    try:
        policy = with_agent_routes(load_policy(file))
        counts = {name: len(texts) for name, texts in load_utterances(policy).items()}
    except PolicyError as exc:
        fail(str(exc))
    console.print(f"[green]ok[/] {file}: " + ", ".join(f"{k} ({v} examples)" for k, v in counts.items()))


@app.command("schema")
def policy_schema() -> None:
    """Print the policy JSON schema (for editors and CI checks)."""
    from slm_router.policies import Policy

    print(json.dumps(Policy.model_json_schema(), indent=2))
