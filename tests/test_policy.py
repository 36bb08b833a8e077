"""Policy validation: every problem is reported once, naming the field and what is allowed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from slm_router.policies import DEFAULT_POLICY, PolicyError, load_policy, policy_from_dict
from slm_router.router.cli import app
from slm_router.router.compose import with_agent_routes
from slm_router.router.core.index import load_utterances


def _default_dict() -> dict:
    return yaml.safe_load(DEFAULT_POLICY.read_text())


def _problems(data: dict) -> list[str]:
    with pytest.raises(PolicyError) as info:
        policy_from_dict(data, base_dir=DEFAULT_POLICY.parent)
    return info.value.problems


def test_default_preset_loads_with_examples_for_every_route() -> None:
    policy = load_policy(DEFAULT_POLICY)
    assert set(policy.routes) == {"translate", "sentiment", "extract", "triage", "other"}
    assert policy.routes["other"].agent is None and policy.routes["triage"].flow == "support-triage"
    counts = {k: len(v) for k, v in load_utterances(policy).items()}
    assert all(n >= 15 for n in counts.values()), counts


def test_threshold_out_of_range_names_field_and_bound() -> None:
    data = _default_dict()
    data["routes"]["sentiment"]["threshold"] = 1.5
    (problem,) = _problems(data)
    assert problem.startswith("routes.sentiment.threshold:")
    assert "less than or equal to 1" in problem and "1.5" in problem


def test_each_bad_field_reported_once() -> None:
    data = _default_dict()
    data["routes"]["sentiment"]["threshold"] = -0.1
    data["router"]["top_k"] = 0
    data["fallback"]["kind"] = "gpt"
    problems = _problems(data)
    assert len(problems) == 3
    assert any(p.startswith("router.top_k:") and "greater than or equal to 1" in p for p in problems)
    assert any(p.startswith("fallback.kind:") and "'llamacpp'" in p for p in problems)


def test_typo_is_an_unknown_field() -> None:
    data = _default_dict()
    data["routes"]["extract"]["treshold"] = 0.4
    (problem,) = _problems(data)
    assert problem.startswith("routes.extract.treshold: unknown field")


def _agent_problems(data: dict, agents: list[str] | None = None) -> list[str]:
    with pytest.raises(PolicyError) as info:
        with_agent_routes(policy_from_dict(data, base_dir=DEFAULT_POLICY.parent), agents or [])
    return info.value.problems


def test_unknown_agent_and_unknown_route_reference() -> None:
    data = _default_dict()
    data["routes"]["extract"]["agent"] = "refunds"
    data["flows"]["extra"] = {"stages": [["translate"], ["sentiment", "refundz"]]}
    first, second, third = _agent_problems(data, agents=["refundx"])
    assert first.startswith("routes.extract.agent: unknown agent 'refunds'") and "sentiment" in first
    assert second.startswith("flows.extra.stages.1.1.agent: unknown agent 'refundz'")
    assert third.startswith("agents: unknown agent 'refundx'; registered agents: [")
    assert "@register_agent" in third

    data = _default_dict()
    data["router"]["ood_route"] = "nowhere"
    (problem,) = _problems(data)
    assert "router.ood_route: unknown route 'nowhere'" in problem


def test_route_without_examples_and_bad_pair() -> None:
    data = _default_dict()
    data["routes"]["other"].pop("examples")
    (problem,) = _problems(data)
    assert problem.startswith("routes.other:") and "needs example utterances" in problem
    assert "registered agent" in problem
    data = _default_dict()
    data["routes"]["extract"].pop("examples")  # an agent route may borrow them, but extract has none to lend
    (problem,) = _agent_problems(data)
    assert problem.startswith("routes.extract: a route needs example utterances")
    assert "agent 'extract' is registered without any" in problem
    data = _default_dict()
    data["agents"]["translate"]["seq2seq"] = [{"path": "/m", "pairs": ["english-german"]}]
    (problem,) = _problems(data)
    assert problem.startswith("agents.translate.seq2seq.0.pairs") and "'en-de'" in problem


def test_openai_fallback_needs_an_endpoint() -> None:
    data = _default_dict()
    data["fallback"] = {"kind": "openai"}
    (problem,) = _problems(data)
    assert problem.startswith("fallback:") and "base_url" in problem


def test_malformed_yaml_points_at_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  sentiment: [unclosed\n  other: 1\n")
    with pytest.raises(PolicyError) as info:
        load_policy(bad)
    assert "malformed YAML" in str(info.value) and "line" in str(info.value)


def test_not_a_mapping_invalid_utf8_and_missing_file(tmp_path: Path) -> None:
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(PolicyError, match="top level must be a mapping"):
        load_policy(listing)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"routes: \xff\xfe\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(binary)
    with pytest.raises(PolicyError, match="file not found"):
        load_policy(tmp_path / "missing.yaml")


def test_missing_examples_file_names_the_route(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_POLICY.parent, tmp_path / "p")
    (tmp_path / "p" / "routes" / "extract.yaml").unlink()
    policy = load_policy(tmp_path / "p" / "default.yaml")
    with pytest.raises(PolicyError, match=r"routes\.extract\.examples: examples file not found"):
        load_utterances(policy)


def test_env_override(tmp_path: Path) -> None:
    policy = load_policy(
        DEFAULT_POLICY,
        env={"SLM_ROUTER__ROUTES__SENTIMENT__THRESHOLD": "0.75", "SLM_ROUTER__FALLBACK__ENABLED": "false"},
    )
    assert policy.routes["sentiment"].threshold == 0.75
    assert policy.fallback.enabled is False
    with pytest.raises(PolicyError, match=r"router\.top_k"):
        load_policy(DEFAULT_POLICY, env={"SLM_ROUTER__ROUTER__TOP_K": "many"})


def test_cli_validate_ok_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["policy", "validate", str(DEFAULT_POLICY)])
    assert ok.exit_code == 0, ok.output
    assert "ok" in ok.output and "sentiment" in ok.output

    data = _default_dict()
    data["routes"]["sentiment"]["min_confidence"] = 2
    data["limits"]["max_chars"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["policy", "validate", str(bad)])
    assert result.exit_code == 1
    assert "routes.sentiment.min_confidence" in result.output
    assert "limits.max_chars" in result.output
    assert "Traceback" not in result.output


def test_environment_overrides_name_the_variable_at_fault() -> None:
    with pytest.raises(PolicyError) as bad_value:
        load_policy(env={"SLM_ROUTER__ROUTER__TOP_K": "abc"})
    assert "router.top_k" in str(bad_value.value) and "(set by SLM_ROUTER__ROUTER__TOP_K)" in str(
        bad_value.value
    )
    with pytest.raises(PolicyError, match="SLM_ROUTER__ROUTER__TOP_K: not a YAML value"):
        load_policy(env={"SLM_ROUTER__ROUTER__TOP_K": "a: b: c"})
    with pytest.raises(PolicyError, match=r"router\.top_k is a value, not a section"):
        load_policy(env={"SLM_ROUTER__ROUTER__TOP_K__X": "1"})
    assert load_policy(env={"SLM_ROUTER__ROUTER__TOP_K": "7"}).router.top_k == 7
