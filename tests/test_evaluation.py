"""Evaluation and tuning on the real router: one scoring pass, a report, a tuned policy, a real PNG."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from slm_router.policies import DEFAULT_POLICY, load_policy, policy_from_dict
from slm_router.router.ops.evaluation import read_rows, report, score, split, tuned_policy
from slm_router.router.ops.report import plot_curve
from slm_router.router.ops.tuning import Target, evaluate, tune
from slm_router.router.runnable import Router

ROWS = [
    ("Translate to Portuguese: the parcel is on its way", "translate"),
    ("How do you say thank you in Portuguese?", "translate"),
    ("I am furious, the package arrived broken", "sentiment"),
    ("Great service, thank you so much!", "sentiment"),
    ("Order #A12345 was charged $49.99 twice", "extract"),
    ("My order number is 784512 and I paid 120 euros", "extract"),
    ("What is the capital of Australia?", "other"),
    ("How do I reset my password?", "other"),
    ("asdf qwerty zxcv", "oos"),
    ("the migratory patterns of arctic terns", "oos"),
]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "route": r}) for t, r in ROWS * 4))
    return path


def test_report_and_tuned_policy(router: Router, data_file: Path, tmp_path: Path) -> None:
    texts, routes = read_rows(data_file)
    data = score(texts, routes, router.policy, router.index, router.embedder, show_progress=False)
    result, _ = report(data, router.policy)
    assert result.rows == 40 and 0.0 <= result.in_scope_accuracy <= 1.0 and result.oos_recall is not None
    assert set(result.per_route) == set(router.index.routes) and result.per_route["extract"].support == 8
    tuning, held = split(data)
    assert len(tuning.labels) == len(held.labels) == 20
    tuned = tune(tuning, Target("max_escalation", 0.6), min_support=2)
    assert tuned.chosen.escalation_rate <= 0.6
    policy = policy_from_dict(
        tuned_policy(router.policy, tuned, data.ood_key), base_dir=DEFAULT_POLICY.parent
    )
    assert data.ood_key == "ood_threshold"  # the packaged routes are few enough for kNN
    assert policy.router.ood_threshold == pytest.approx(tuned.chosen.ood_threshold, abs=1e-4)
    out = tmp_path / "curve.png"
    plot_curve(tuned, evaluate(tuning, {}, 0.0, Target("max_escalation", 1)), out)
    with Image.open(out) as image:
        assert image.size[0] > 100 and image.format == "PNG"


def test_bad_rows_are_named(tmp_path: Path, router: Router) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi", "route": "translate"}\n{"txt": "oops"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        read_rows(bad)
    with pytest.raises(ValueError, match="routes not in the policy"):
        score(["hi"], ["refunds"], load_policy(), router.index, router.embedder, show_progress=False)
    assert yaml.safe_load(DEFAULT_POLICY.read_text())["routes"]


def test_cli_eval_and_tune(data_file: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from slm_router.router.cli import app

    runner = CliRunner()
    report_dir = tmp_path / "report"
    evaluated = runner.invoke(
        app, ["eval", str(data_file), "--json", "--out", str(report_dir), "--sample", "12"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    full = json.loads(evaluated.output[evaluated.output.index("{") :])
    assert full["router"]["rows"] == 40 and sum(full["router"]["escalation_rate_by_reason"].values()) > 0
    live = full["live"]
    assert live["rows"] == 12 and {"guard", "classify", "decide", "total"} <= {
        n["node"] for n in live["latency"]
    }
    assert all(n["p50_ms"] <= n["p95_ms"] <= n["p99_ms"] for n in live["latency"])
    assert live["all_fallback_cost_per_1k_requests"] > live["cost_per_1k_requests"] >= 0
    for picture in ("confusion.png", "reliability.png"):
        assert (report_dir / picture).stat().st_size > 0
        with Image.open(report_dir / picture) as image:
            image.load()
            assert image.format == "PNG" and min(image.size) > 100
    markdown = (report_dir / "report.md").read_text()
    assert "![Confusion matrix](confusion.png)" in markdown and "p50 / p95 / p99" in markdown
    assert "<img src='reliability.png'" in (report_dir / "report.html").read_text()
    assert json.loads((report_dir / "report.json").read_text()) == full
    out = tmp_path / "tuned.yaml"
    tuned = runner.invoke(app, ["tune", str(data_file), "--out", str(out), "--max-escalation", "0.6"])
    assert tuned.exit_code == 0, tuned.output
    assert load_policy(out).routes["extract"].examples[0].startswith("/")
    with Image.open(out.with_suffix(".png")) as image:
        assert image.format == "PNG"
    again = runner.invoke(app, ["tune", str(data_file), "--out", str(out), "--max-escalation", "0.6"])
    assert again.exit_code == 2 and "--force" in again.output
    both = runner.invoke(
        app, ["tune", str(data_file), "--out", str(out), "--budget", "1", "--min-accuracy", "0.9"]
    )
    assert both.exit_code == 2 and "exactly one target" in both.output


def test_cli_tune_says_when_a_target_cannot_be_met(data_file: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from slm_router.router.cli import app

    out = tmp_path / "never.yaml"
    result = CliRunner().invoke(app, ["tune", str(data_file), "--out", str(out), "--max-escalation", "0"])
    message = " ".join(result.output.split())
    assert result.exit_code == 1 and "cannot be met" in message and "lowest reachable escalation" in message
    assert not out.exists()


def test_cli_tune_to_a_cost_budget_from_the_policy_prices(data_file: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from slm_router.router.cli import app
    from slm_router.router.core.costs import fallback_request_cost

    texts, _ = read_rows(data_file)
    all_fallback_per_1k = fallback_request_cost(load_policy(), texts) * 1000
    assert all_fallback_per_1k > 0
    out = tmp_path / "budget.yaml"
    budget = f"{all_fallback_per_1k * 0.6:.6f}"
    result = CliRunner().invoke(app, ["tune", str(data_file), "--out", str(out), "--budget", budget])
    assert result.exit_code == 0, result.output
    assert "cost per 1k requests (USD, estimated)" in " ".join(result.output.split()) and out.exists()
    presets = Path(shutil.copytree(DEFAULT_POLICY.parent, tmp_path / "presets"))
    free = presets / "default.yaml"
    priced = "fallback: {per_1k_input_tokens: 0.00015, per_1k_output_tokens: 0.0006}"
    free.write_text(free.read_text().replace(priced, "fallback: {}"))
    no_price = CliRunner().invoke(
        app, ["tune", str(data_file), "-p", str(free), "--out", str(tmp_path / "x.yaml"), "--budget", "1"]
    )
    assert no_price.exit_code == 1 and "pricing.models.fallback" in " ".join(no_price.output.split())
