"""The cluster path: a Ray head started with `ray start` on this host, the service joining it by RAY_ADDRESS.

Everything Ray runs in child processes (the head, `slm-router serve`, a second driver that inspects Serve),
so this file shares nothing with the in-process cluster of the other `ray` tests, even in the same session.
The head has its own temp dir and ports, and token authentication (Ray's default for `ray start`) with a
token of its own. It is stopped by its own processes: `ray stop` would stop every Ray process on the host.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]

BIN = Path(sys.executable).parent
MANIFEST = ROOT / "docker" / "kuberay" / "rayservice.yaml"
KEY = "cluster-key"
AGENTS = ("extract", "sentiment", "translate")
ORDER = "Order #A12345 was charged $49.99 twice, refund me at jane.doe@example.com"


@dataclass(frozen=True)
class Head:
    address: str
    env: dict[str, str]
    temp_dir: Path
    group: int


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    # A short path: Ray's Unix socket paths under it must stay within 107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="slm-ray-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    port = free_port()
    # Every port the head would otherwise take at a fixed default gets a free one (ephemeral ports, so none
    # falls in Ray's worker port range 10002-19999).
    fixed = {
        "--dashboard-port": free_port(),
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
    }
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(port),
        "--num-cpus",
        "2",
        "--disable-usage-stats",
        "--include-dashboard=false",
        "--temp-dir",
        str(temp_dir),
        *[f"{flag}={value}" for flag, value in fixed.items()],
    ]
    # Its own session: the daemons `ray start` leaves behind share the process group of this child.
    start = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = start.communicate(timeout=120)
        assert start.returncode == 0, out[-3000:]
        yield Head(f"127.0.0.1:{port}", env, temp_dir, start.pid)
    finally:
        _stop_head(start.pid, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_head(group: int, temp_dir: Path, grace_s: float = 10.0) -> None:
    """`ray stop` for this head only: SIGTERM to its processes (its process group, and any process whose
    command line names its temp dir), SIGKILL to those still alive after the grace period."""
    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(proc.pid) == group or str(temp_dir) in " ".join(proc.info["cmdline"] or []):
                procs.append(proc)
        except (psutil.Error, ProcessLookupError):
            continue
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=5)


def _serve_state(head: Head) -> dict[str, Any]:
    """Serve on the head as a second driver sees it: each application's status, source and replica ids."""
    script = textwrap.dedent(
        """
        import json, logging, ray
        from ray import serve
        ray.init(logging_level=logging.ERROR, log_to_driver=False)
        apps = serve.context._connect().get_serve_details().get("applications", {})
        print(json.dumps({
            name: {
                "status": app["status"],
                "source": app["source"],
                "replicas": sorted(
                    r["replica_id"] for d in app["deployments"].values() for r in d["replicas"]
                ),
            }
            for name, app in apps.items()
        }))
        """
    )
    env = head.env | {"RAY_ADDRESS": head.address}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


@contextmanager
def _service(head: Head, log: Path) -> Iterator[httpx.Client]:
    """`slm-router serve --backend ray` joined to the head by RAY_ADDRESS, until /readyz says ready."""
    port = free_port()
    env = head.env | {"RAY_ADDRESS": head.address, "SLM_ROUTER_API_KEYS": KEY, "HF_HUB_OFFLINE": "1"}
    # A replica's first call loads its models, longer than the 10 s agent timeout on two busy cores: start-up
    # retries it within limits.warmup_timeout_s (default 120 s), with no override here.
    command = [
        str(BIN / "slm-router"),
        "serve",
        "--backend",
        "ray",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
            _wait_ready(client, proc, log)
            yield client
    finally:
        proc.send_signal(signal.SIGINT)  # the service drains, and RayPool.close() runs
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes], log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"slm-router serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"slm-router serve was not ready in {timeout:g} s:\n{log.read_text()[-3000:]}")


def _route_order(client: httpx.Client) -> None:
    assert client.get("/readyz").json()["agents"] == dict.fromkeys(AGENTS, True)
    response = client.post("/v1/route", json={"text": ORDER})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["route"], body["answered_by"], body["escalated"]) == ("extract", "extract", False), body
    assert "A12345" in body["output"]


def test_service_deploys_its_agents_on_a_cluster_started_with_ray_start(head: Head, tmp_path: Path) -> None:
    apps = {f"slm-router-{name}" for name in AGENTS}
    with _service(head, tmp_path / "serve.log") as client:
        _route_order(client)
        state = _serve_state(head)
        # The agents run on the head the service joined, as applications it deployed itself.
        assert {name: state[name]["status"] for name in apps} == dict.fromkeys(apps, "RUNNING"), state
        assert {state[name]["source"] for name in apps} == {"imperative"}
    # Its shutdown takes its applications with it and leaves the cluster running.
    assert apps.isdisjoint(_serve_state(head)), _serve_state(head)


def test_service_calls_the_agents_a_serve_config_deployed(head: Head, tmp_path: Path) -> None:
    """The KubeRay path without Kubernetes: the RayService's serveConfigV2 deployed by `serve run`, then the
    service joins and calls those applications as they are, and leaves them running when it stops."""
    rayservice = next(d for d in yaml.safe_load_all(MANIFEST.read_text()) if d["kind"] == "RayService")
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    config["http_options"] = {"host": "127.0.0.1", "port": free_port()}  # not the manifest's 0.0.0.0:8000
    config_file = tmp_path / "serve-config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = head.env | {"RAY_ADDRESS": head.address}
    proc = subprocess.run(
        [str(BIN / "serve"), "run", str(config_file), "--non-blocking"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    apps = {app["name"] for app in config["applications"]}
    deadline = time.monotonic() + 240
    while {(state := _serve_state(head)).get(a, {}).get("status") for a in apps} != {"RUNNING"}:
        assert time.monotonic() < deadline, state
        time.sleep(2)
    assert {state[a]["source"] for a in apps} == {"declarative"}

    with _service(head, tmp_path / "serve.log") as client:
        _route_order(client)
    # The same replicas answered (the service deployed nothing), and they outlive the service.
    after = _serve_state(head)
    assert {a: after[a] for a in apps} == {a: state[a] for a in apps}
