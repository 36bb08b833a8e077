"""RayPool under faults: a killed replica, a full queue, a driver cwd that shadows our packages.

Plus the `serve` command's start-up failure (no Ray needed). Ray Serve is imported inside fixtures and
tests, so collecting this file in the default run stays quiet.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from slm_router.agents.base import AgentError, AgentInput, AgentOverloaded, AgentResult
from slm_router.policies.schema import DeploymentConfig, HostingConfig

if TYPE_CHECKING:
    from slm_router.agents.hosting.ray_serve import RayPool

ROOT = Path(__file__).resolve().parents[1]


class SlowEcho:
    """Test agent (module level, so it pickles by reference): echoes after `DELAY_S`; "slow" takes 3 s."""

    name = "echo"
    DELAY_S = 0.05

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        time.sleep(3.0 if any(i.text == "slow" for i in items) else self.DELAY_S)
        return [AgentResult(agent=self.name, output=i.text, confidence=1.0) for i in items]


def _replica_names(app: str, deployment: str) -> list[str]:
    """Named replica actors of one deployment (found through the GCS, no dashboard needed)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith(prefix)
    ]


# --- the serve command: a start-up failure is one line, exit code 1 ---------------------------------


def test_serve_start_up_failure_is_one_line_and_exit_code_1(monkeypatch: pytest.MonkeyPatch) -> None:
    from slm_router.router.cli import app

    class FailingRouter:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError(
                "Deploying application slm-router-sentiment failed: Failed to update the deployments.\n"
                "Traceback (most recent call last):\n  File 'replica.py', line 1\nImportError: ..."
            )

    monkeypatch.setattr("slm_router.router.runnable.Router", FailingRouter)
    monkeypatch.setenv("SLM_ROUTER_API_KEYS", "test-key")
    result = CliRunner().invoke(app, ["serve", "--backend", "ray"])
    assert result.exit_code == 1
    assert " ".join(result.output.split()) == (  # one message (rich wraps it at the terminal width)
        "error: could not start the router (ray backend): RuntimeError: Deploying application "
        "slm-router-sentiment failed: Failed to update the deployments."
    )
    assert "Traceback" not in result.output


# --- a driver cwd that holds a `policies/` folder ---------------------------------------------------

DRIVER = """
from slm_router.agents.base import AgentInput
from slm_router.agents.hosting.ray_serve import RayPool
from slm_router.policies import load_policy
from slm_router.policies.schema import DeploymentConfig, HostingConfig
from slm_router.router.compose import agent_factories

# The built-in factory, as `slm-router serve --backend ray` deploys it: unpickling it in the replica
# imports the composition module. Under the old top-level names its `from policies import Policy` met the
# cwd's `policies/` folder instead of our package; under `slm_router.*` a user's folder cannot shadow it.
factory = agent_factories(load_policy("policies/default.yaml"))["translate"]
hosting = HostingConfig(deployments={"translate": DeploymentConfig(num_cpus=0.1)})
pool = RayPool({"translate": factory}, hosting, timeout_s=120.0)
try:
    [result] = pool.run("translate", [AgentInput(text="Quero cancelar o meu pedido.", language="pt")])
    print("ANSWER", result.output)
finally:
    pool.close()
"""


@pytest.mark.ray
def test_deploys_from_a_cwd_that_holds_a_policies_folder(tmp_path: Path) -> None:
    """The README layout: policy files in ./policies. Ray puts the driver's cwd first on every worker's
    sys.path, where that folder used to shadow our `policies` package (ImportError in the replica)."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "default.yaml").write_text((ROOT / "policies/presets/default.yaml").read_text())
    (tmp_path / "router").mkdir()  # the other generic names, as plain folders, shadow nothing either
    (tmp_path / "agents").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local cluster
    # -P: the driver itself does not put its cwd on sys.path (like the installed `slm-router` command),
    # so what is tested is the replicas' import path.
    proc = subprocess.run(
        [sys.executable, "-P", "-c", DRIVER],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ANSWER" in proc.stdout and "cancel" in proc.stdout.lower()


# --- a replica killed while requests flow -----------------------------------------------------------


@pytest.fixture
def echo_pool(ray_cluster: None) -> Iterator[RayPool]:
    from slm_router.agents.hosting.ray_serve import RayPool

    hosting = HostingConfig(
        batch_wait_timeout_s=0.0, deployments={"echo": DeploymentConfig(num_cpus=0.1, num_replicas=1)}
    )
    pool = RayPool({"echo": SlowEcho}, hosting, timeout_s=8.0)
    yield pool
    pool.close()


@pytest.mark.ray
def test_killed_replica_every_request_gets_one_outcome_and_the_deployment_recovers(
    echo_pool: RayPool,
) -> None:
    import ray

    from slm_router.agents.hosting.ray_serve import APP_PREFIX

    [replica] = _replica_names(APP_PREFIX + "echo", "echo")
    outcomes: dict[int, list[str]] = {i: [] for i in range(40)}
    durations: list[float] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        started = time.monotonic()
        try:
            [result] = echo_pool.run("echo", [AgentInput(text=f"m{i}")])
            outcome = "ok" if result.output == f"m{i}" else f"wrong answer {result.output}"
        except AgentError as exc:
            outcome = f"error: {exc}"
        with lock:
            outcomes[i].append(outcome)
            durations.append(time.monotonic() - started)

    def sender(thread: int) -> None:
        for i in range(thread, 40, 4):  # 4 threads, 10 requests each, ~0.1 s apart
            call(i)
            time.sleep(0.1)

    killer = threading.Timer(0.5, lambda: ray.kill(ray.get_actor(replica, namespace="serve")))
    killer.start()
    with ThreadPoolExecutor(4) as executor:
        list(executor.map(sender, range(4)))
    killer.join()

    assert all(len(o) == 1 for o in outcomes.values()), outcomes  # exactly one outcome each
    failed = sorted({o[0] for o in outcomes.values() if o != ["ok"]})
    print(f"replica killed: {40 - len([o for o in outcomes.values() if o == ['ok']])} of 40 failed: {failed}")
    assert not [o for o in outcomes.values() if o[0].startswith("wrong")]
    assert max(durations) < echo_pool.timeout_s + 3  # none hung past its timeout
    assert any(o == ["ok"] for o in outcomes.values())
    deadline = time.monotonic() + 60  # the controller replaces the replica; the deployment serves again
    while True:
        try:
            [result] = echo_pool.run("echo", [AgentInput(text="again")])
            break
        except AgentError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert result.output == "again"
    assert _replica_names(APP_PREFIX + "echo", "echo") != [replica]
    assert echo_pool.health() == {"echo": True}


# --- backpressure: a full queue is refused at once ---------------------------------------------------


@pytest.fixture
def narrow_pool(ray_cluster: None) -> Iterator[RayPool]:
    from slm_router.agents.hosting.ray_serve import RayPool

    one = DeploymentConfig(num_cpus=0.1, max_ongoing_requests=1, max_queued_requests=1)
    pool = RayPool({"echo": SlowEcho}, HostingConfig(deployments={"echo": one}), timeout_s=20.0)
    # A handle learns the deployment's config (queue bound included) once its first call has gone out;
    # until then it does not refuse anything.
    pool.run("echo", [AgentInput(text="warm up")])
    yield pool
    pool.close()


@pytest.mark.ray
def test_calls_beyond_the_queue_bound_are_overloaded_at_once(narrow_pool: RayPool) -> None:
    def call(_: int) -> tuple[str, float]:
        started = time.monotonic()
        try:
            narrow_pool.run("echo", [AgentInput(text="slow")])
            return "ok", time.monotonic() - started
        except AgentOverloaded as exc:
            assert exc.retry_after_s > 0 and "backpressure" in str(exc)
            return "overloaded", time.monotonic() - started

    with ThreadPoolExecutor(5) as executor:
        outcomes = list(executor.map(call, range(5)))
    refused = [t for o, t in outcomes if o == "overloaded"]
    served = [t for o, t in outcomes if o == "ok"]
    # One running and one queued at most; Ray may refuse a little more than strictly needed under a burst.
    assert len(refused) >= 3 and served, outcomes
    assert max(refused) < 2.0  # at once, not after the 3 s the agent takes
    [result] = narrow_pool.run("echo", [AgentInput(text="after")])  # the queue drained: served again
    assert result.output == "after"
