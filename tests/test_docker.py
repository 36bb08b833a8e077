"""docker/: the compose file is wired consistently; `docker compose config` validates it where available."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def _compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) or the standalone `docker-compose`; None when neither is installed."""
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_services_are_wired_by_environment() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"ray-head", "ray-worker", "fallback", "router"}
    assert {s["image"] for s in services.values()} == {"slm-router:latest"}
    assert "--port=6379" in services["ray-head"]["command"]
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    env = services["router"]["environment"]
    assert env["SLM_ROUTER__FALLBACK__BASE_URL"] == "http://fallback:8080/v1"
    assert "--port 8080" in services["fallback"]["command"][0]
    assert env["RAY_ADDRESS"] == "auto" and "--backend ray" in services["router"]["command"][0]
    assert "SLM_ROUTER_API_KEYS" in env


def test_dockerfile_runs_as_non_root_with_models_baked_in() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "USER slm" in text and "useradd" in text
    assert "make install" in text and "HF_HUB_OFFLINE=1" in text


@pytest.mark.skipif(
    _compose_command() is None, reason="neither docker compose nor docker-compose is installed"
)
def test_docker_compose_config_validates() -> None:
    command = _compose_command() or []
    proc = subprocess.run(
        [*command, "-f", str(DOCKER / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "SLM_ROUTER_API_KEYS": "k"},
    )
    assert proc.returncode == 0, proc.stderr
