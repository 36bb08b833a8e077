"""`RayPool`: each agent is a Ray Serve application, so agents scale and fail apart from the router.

Ray is imported only here, so the local backend never pays for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slm_router.agents.base import Agent, AgentError, AgentInput, AgentOverloaded, AgentResult, AgentTimeout
from slm_router.agents.hosting.local import failure_message, predict_groups
from slm_router.extras import MissingExtraError

try:
    import ray
    from ray import serve
    from ray.serve import Application
    from ray.serve.config import AutoscalingConfig, ProxyLocation
    from ray.serve.exceptions import BackPressureError
    from ray.serve.handle import DeploymentHandle, DeploymentResponse
    from ray.serve.schema import ApplicationStatus, LoggingConfig
except ModuleNotFoundError as exc:
    raise MissingExtraError("ray", "hosting.backend: ray (`--backend ray`)", exc.name) from exc

APP_PREFIX = "slm-router-"
_QUIET = LoggingConfig(enable_access_log=False, log_level="WARNING")


class AutoscalingSettings(Protocol):
    @property
    def min_replicas(self) -> int: ...
    @property
    def max_replicas(self) -> int: ...
    @property
    def target_ongoing_requests(self) -> float: ...


class DeploymentSettings(Protocol):
    """One agent's Serve deployment; `autoscaling`, when set, replaces `num_replicas`."""

    @property
    def num_replicas(self) -> int: ...
    @property
    def autoscaling(self) -> AutoscalingSettings | None: ...
    @property
    def max_ongoing_requests(self) -> int: ...
    @property
    def max_queued_requests(self) -> int: ...
    @property
    def num_cpus(self) -> float: ...


class HostingSettings(Protocol):
    """What `RayPool` reads; `policies.HostingConfig` satisfies it as it is, and agents never import it."""

    @property
    def ray_address(self) -> str | None: ...
    @property
    def max_batch_size(self) -> int: ...
    @property
    def batch_wait_timeout_s(self) -> float: ...
    def deployment(self, agent: str) -> DeploymentSettings: ...


@dataclass(frozen=True)
class _Failure:
    """A failed item, returned rather than raised: AgentError does not survive pickling across Ray."""

    message: str


class AgentReplica:
    """One replica of one agent: builds the agent in its own process and micro-batches single items."""

    def __init__(self, factory: Callable[[], Agent], max_batch_size: int, wait_s: float) -> None:
        self.agent = factory()
        batched: Any = self.predict  # serve.batch's setters are missing from its type hints
        batched.set_max_batch_size(max_batch_size)
        batched.set_batch_wait_timeout_s(wait_s)

    # Cancellation (RayPool cancels what it stopped waiting for): Serve drops a cancelled request from any
    # batch that has not started yet, so abandoned work never reaches the model. A batch already running
    # in its worker thread cannot be interrupted (Python threads cannot be killed); agents bound their own
    # work instead (the translation engine is killed at the agent timeout, see hosting/isolation.py).
    @serve.batch
    async def predict(self, items: list[AgentInput]) -> list[AgentResult | _Failure]:
        # predict_batch blocks; a worker thread keeps the event loop taking requests for the next batch.
        outcomes = await asyncio.to_thread(predict_groups, self.agent, [[item] for item in items])
        return [_Failure(failure_message(o)) if isinstance(o, Exception) else o[0] for o in outcomes]

    async def __call__(self, item: AgentInput) -> AgentResult | _Failure:
        return await self.predict(item)


def _application(name: str, factory: Callable[[], Agent], hosting: HostingSettings) -> serve.RunTarget:
    """One agent's Serve application: scaling, queue bound and CPU from its deployment settings, no route."""
    conf = hosting.deployment(name)
    scaling: dict[str, Any] = (
        {"num_replicas": conf.num_replicas}
        if conf.autoscaling is None
        else {
            "autoscaling_config": AutoscalingConfig(
                min_replicas=conf.autoscaling.min_replicas,
                max_replicas=conf.autoscaling.max_replicas,
                target_ongoing_requests=conf.autoscaling.target_ongoing_requests,
            )
        }
    )
    actor_options: dict[str, Any] = {"num_cpus": conf.num_cpus}
    deployment = serve.deployment(
        name=name,
        max_ongoing_requests=conf.max_ongoing_requests,
        max_queued_requests=conf.max_queued_requests,
        ray_actor_options=actor_options,
        **scaling,
    )(AgentReplica)
    app = deployment.bind(factory, hosting.max_batch_size, hosting.batch_wait_timeout_s)
    return serve.RunTarget(app, name=APP_PREFIX + name, route_prefix=None, logging_config=_QUIET)


class AgentAppArgs(BaseModel):
    """The `args` of one agent's application in a Serve config (`serve run`, KubeRay `serveConfigV2`).

    `config` is the agent's section of a policy (`agents.<name>`) as plain keys, so the replica builds the
    agent as the router would without this package importing the policy schema. Scaling, queue bound and
    CPUs are not here: a Serve config sets them under the application's `deployments:`.
    """

    model_config = ConfigDict(extra="forbid")

    agent: str
    config: dict[str, Any] | None = None
    base_dir: str = Field(default=".", description="What relative paths in `config` are relative to.")
    timeout_s: float = Field(default=10.0, gt=0, description="The router's limits.agent_timeout_s.")
    max_batch_size: int = Field(default=16, ge=1)
    batch_wait_timeout_s: float = Field(default=0.002, ge=0.0, le=1.0)


def app_builder(args: dict[str, Any]) -> Application:
    """One agent as a Serve application, for a Serve config's `import_path`.

    The deployment is named after the agent and the application should be named `slm-router-<agent>`:
    `RayPool` then finds it running and calls it instead of deploying its own (`_config_deployed`).
    """
    spec = AgentAppArgs.model_validate(args)
    factory = partial(_configured_agent, spec.agent, spec.config, spec.base_dir, spec.timeout_s)
    deployment = serve.deployment(name=spec.agent)(AgentReplica)
    return deployment.bind(factory, spec.max_batch_size, spec.batch_wait_timeout_s)


def _configured_agent(name: str, config: dict[str, Any] | None, base_dir: str, timeout_s: float) -> Agent:
    """A registered agent built in its replica from plain config (the registry loads entry points too)."""
    from slm_router.agents.registry import SharedParts, registered_agents

    registration = registered_agents().get(name)
    if registration is None:
        raise AgentError(name, f"no such agent; registered agents: {sorted(registered_agents())}")
    parts = SharedParts(partial(_no_encoder, name), partial(_resolve, Path(base_dir)), timeout_s)
    return registration.build(None if config is None else _section(config), parts)


def _section(value: Any) -> Any:
    """Mappings as attribute access, as the agents' config protocols read their policy sections."""
    if isinstance(value, dict):
        return SimpleNamespace(**{key: _section(item) for key, item in value.items()})
    if isinstance(value, list):
        return [_section(item) for item in value]
    return value


def _resolve(base: Path, path: str) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else base / candidate


def _no_encoder(agent: str, texts: list[str]) -> np.ndarray:
    """The router sends its own embedding with every request; a replica from a Serve config has no encoder
    of its own, so an agent that asks for one is told so rather than loading a second model silently."""
    raise AgentError(agent, "needs the router's embedding, which this request did not carry")


def _config_deployed(apps: Iterable[str]) -> set[str]:
    """Those of `apps` a Serve config deployed (KubeRay's `serveConfigV2`, `serve deploy`): the cluster's
    operator owns them, so a pool calls them as they are and never redeploys or deletes them."""
    client = serve.context._get_global_client()  # set by serve.start(); status() does not say the source
    details = client.get_serve_details().get("applications", {}) if client is not None else {}
    wanted = set(apps)
    return {name for name, app in details.items() if name in wanted and app.get("source") == "declarative"}


def _deploy_failure(apps: dict[str, str]) -> AgentError | None:
    """Why an agent's deployment failed, in one line: the last line of its replica's error (the exception),
    which Serve's own "Deploying application ... failed" leaves out. None when Serve tells nothing."""
    try:
        statuses = serve.status().applications
    except Exception:  # the cluster itself is the problem: the original error says more
        return None
    for name, app in apps.items():
        status = statuses.get(app)
        if status is None or status.status != ApplicationStatus.DEPLOY_FAILED:
            continue
        messages = [d.message for d in status.deployments.values() if d.message] or [status.message]
        lines = [line.strip() for message in messages for line in message.splitlines() if line.strip()]
        return AgentError(name, f"Ray Serve deployment failed: {lines[-1] if lines else 'no reason given'}")
    return None


def _agent_error(name: str, exc: Exception) -> AgentError:
    """A Ray/Serve failure as the AgentError callers handle, naming its underlying cause.

    Backpressure (`max_queued_requests` reached) becomes AgentOverloaded: raised by the handle itself, or
    wrapped (a RayTaskError's `cause`) when it crossed a process boundary.
    """
    causes = [exc, getattr(exc, "cause", None), exc.__cause__]
    refused = next((c for c in causes if isinstance(c, BackPressureError)), None)
    if refused is not None:
        retry = refused.retry_after_s
        return AgentOverloaded(name, f"overloaded: {refused}", retry_after_s=1.0 if retry is None else retry)
    cause = getattr(exc, "cause", None)
    return AgentError(name, failure_message(cause if isinstance(cause, Exception) else exc))


class RayPool:
    """Agents as Ray Serve deployments (one application each), called through deployment handles."""

    def __init__(
        self, factories: dict[str, Callable[[], Agent]], hosting: HostingSettings, timeout_s: float = 30.0
    ) -> None:
        self.timeout_s = timeout_s
        address = hosting.ray_address or os.environ.get("RAY_ADDRESS")
        self._connected = not ray.is_initialized()
        self._owns_cluster = self._connected and address is None
        if self._connected:
            # "local" starts a fresh cluster rather than joining whatever `ray start` left on this host.
            ray.init(
                address=address or "local",
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # no "Deployed app" lines in the driver
        serve.start(proxy_location=ProxyLocation.Disabled, logging_config=_QUIET)
        self._apps = {name: APP_PREFIX + name for name in factories}
        self._lock = threading.Lock()
        self._in_flight = dict.fromkeys(factories, 0)
        self._closed = False
        self._attached = _config_deployed(self._apps.values())
        deploy = {name: f for name, f in factories.items() if self._apps[name] not in self._attached}
        targets = [_application(name, factory, hosting) for name, factory in deploy.items()]
        try:
            # All at once: replicas load their models in parallel instead of one app after another.
            handles = serve.run_many(targets) if targets else []
        except BaseException as exc:
            failure = _deploy_failure(self._apps) if isinstance(exc, Exception) else None
            self.close()
            if failure is not None:  # e.g. the replica's ImportError, not Serve's "failed to update"
                raise failure from exc
            raise
        self._handles: dict[str, DeploymentHandle] = dict(zip(deploy, handles, strict=True))
        self._handles.update(
            {name: serve.get_app_handle(self._apps[name]) for name in factories if name not in deploy}
        )

    def names(self) -> list[str]:
        return sorted(self._apps)

    def run(self, name: str, items: list[AgentInput], timeout_s: float | None = None) -> list[AgentResult]:
        """See `AgentPool.run`: a full deployment queue (`max_queued_requests`) is AgentOverloaded."""
        handle = self._handles.get(name)
        if handle is None:
            raise AgentError(name, f"no such agent; this pool hosts {self.names()}")
        if self._closed:
            raise AgentError(name, "pool is closed")
        limit = self.timeout_s if timeout_s is None else max(min(timeout_s, self.timeout_s), 0.0)
        deadline = time.monotonic() + limit
        self._count(name, len(items))
        responses: list[DeploymentResponse] = []
        try:
            # Not streaming, so every call answers a DeploymentResponse.
            for item in items:
                responses.append(cast(DeploymentResponse, handle.remote(item)))
            return self._collect(name, responses, deadline, limit)
        except BaseException as exc:
            # Whatever ended this call (timeout, a failed or refused item, an interrupt): the items still
            # queued or running are nobody's any more; cancelled, they leave the replica's queue.
            for pending in responses:
                with contextlib.suppress(Exception):  # cancel() re-raises a failed assignment's error
                    pending.cancel()
            if isinstance(exc, AgentError):
                raise
            if isinstance(exc, Exception):
                raise _agent_error(name, exc) from exc
            raise
        finally:
            self._count(name, -len(items))

    def _collect(
        self, name: str, responses: list[DeploymentResponse], deadline: float, limit: float
    ) -> list[AgentResult]:
        results = []
        for response in responses:
            try:
                outcome = response.result(timeout_s=max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                raise AgentTimeout(name, f"timed out after {limit:g} s") from None
            except Exception as exc:  # replica died, app deleted, queue full...
                raise _agent_error(name, exc) from exc
            if isinstance(outcome, _Failure):
                raise AgentError(name, outcome.message)
            results.append(outcome)
        return results

    def _count(self, name: str, delta: int) -> None:
        # Counted by the caller, so the gauge also covers items still waiting at the handle.
        with self._lock:
            self._in_flight[name] += delta

    def queue_depth(self) -> dict[str, int]:
        with self._lock:
            return dict(self._in_flight)

    def health(self) -> dict[str, bool]:
        if self._closed:  # and serve.status() must not start a new Ray session after ray.shutdown()
            return dict.fromkeys(self._apps, False)
        apps = serve.status().applications
        return {
            name: app in apps and apps[app].status == ApplicationStatus.RUNNING
            for name, app in self._apps.items()
        }

    def close(self) -> None:
        """Removes this pool's applications (not those a Serve config deployed), or the whole cluster if this
        pool started it.

        An owned cluster goes with `ray.shutdown()` alone: `serve.shutdown()` first would only add ~3 s and
        "ServeController ... killed" lines from the driver's long-poll client.
        """
        if self._closed or not ray.is_initialized():
            return
        self._closed = True
        if not self._owns_cluster:
            self._delete_apps()
        if self._connected:
            ray.shutdown()

    def _delete_apps(self, wait_s: float = 60.0) -> None:
        """Deletes all apps at once: one by one, each waits out its replicas' graceful shutdown (~3 s)."""
        owned = set(self._apps.values()) - self._attached
        for app in owned:
            serve.delete(app, _blocking=False)
        deadline = time.monotonic() + wait_s
        while owned & set(serve.status().applications) and time.monotonic() < deadline:
            time.sleep(0.1)
