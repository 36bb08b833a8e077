"""`RayPool`: each agent is a Ray Serve application, so agents scale and fail apart from the router.

Ray is imported only here, so the local backend never pays for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import ray
from ray import serve
from ray.serve.config import AutoscalingConfig, ProxyLocation
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from ray.serve.schema import ApplicationStatus, LoggingConfig

from agents.base import Agent, AgentError, AgentInput, AgentResult
from agents.hosting import failure_message, predict_groups
from policies.schema import HostingConfig

APP_PREFIX = "slm-router-"
_QUIET = LoggingConfig(enable_access_log=False, log_level="WARNING")


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

    @serve.batch
    async def predict(self, items: list[AgentInput]) -> list[AgentResult | _Failure]:
        # predict_batch blocks; a worker thread keeps the event loop taking requests for the next batch.
        outcomes = await asyncio.to_thread(predict_groups, self.agent, [[item] for item in items])
        return [_Failure(failure_message(o)) if isinstance(o, Exception) else o[0] for o in outcomes]

    async def __call__(self, item: AgentInput) -> AgentResult | _Failure:
        return await self.predict(item)


def _application(name: str, factory: Callable[[], Agent], hosting: HostingConfig) -> serve.RunTarget:
    """One agent's Serve application: scaling and CPU from `hosting.deployments`, no HTTP route."""
    conf = hosting.deployment(name)
    scaling: dict[str, Any] = (
        {"num_replicas": conf.num_replicas}
        if conf.autoscaling is None
        else {"autoscaling_config": AutoscalingConfig(**conf.autoscaling.model_dump())}
    )
    deployment = serve.deployment(
        name=name,
        max_ongoing_requests=conf.max_ongoing_requests,
        ray_actor_options={"num_cpus": conf.num_cpus},
        **scaling,
    )(AgentReplica)
    app = deployment.bind(factory, hosting.max_batch_size, hosting.batch_wait_timeout_s)
    return serve.RunTarget(app, name=APP_PREFIX + name, route_prefix=None, logging_config=_QUIET)


class RayPool:
    """Agents as Ray Serve deployments (one application each), called through deployment handles."""

    def __init__(
        self, factories: dict[str, Callable[[], Agent]], hosting: HostingConfig, timeout_s: float = 30.0
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
        targets = [_application(name, factory, hosting) for name, factory in factories.items()]
        try:
            # All at once: replicas load their models in parallel instead of one app after another.
            handles = serve.run_many(targets)
        except BaseException:
            self.close()
            raise
        self._handles: dict[str, DeploymentHandle] = dict(zip(factories, handles, strict=True))

    def names(self) -> list[str]:
        return sorted(self._apps)

    def run(self, name: str, items: list[AgentInput]) -> list[AgentResult]:
        handle = self._handles.get(name)
        if handle is None:
            raise AgentError(name, f"no such agent; this pool hosts {self.names()}")
        if self._closed:
            raise AgentError(name, "pool is closed")
        deadline = time.monotonic() + self.timeout_s
        self._count(name, len(items))
        try:
            # Not streaming, so every call answers a DeploymentResponse.
            responses = [cast(DeploymentResponse, handle.remote(item)) for item in items]
            return self._collect(name, responses, deadline)
        finally:
            self._count(name, -len(items))

    def _collect(self, name: str, responses: list[DeploymentResponse], deadline: float) -> list[AgentResult]:
        results = []
        for response in responses:
            try:
                outcome = response.result(timeout_s=max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                for pending in responses:
                    pending.cancel()
                raise AgentError(name, f"timed out after {self.timeout_s:g} s") from None
            except Exception as exc:  # replica died, app deleted, ...: report the underlying cause
                cause = getattr(exc, "cause", None)
                reported = cause if isinstance(cause, Exception) else exc
                raise AgentError(name, failure_message(reported)) from exc
            if isinstance(outcome, _Failure):
                raise AgentError(name, outcome.message)
            results.append(outcome)
        return results

    def _count(self, name: str, delta: int) -> None:
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
        """Removes this pool's applications, or the whole cluster if this pool started it.

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
        for app in self._apps.values():
            serve.delete(app, _blocking=False)
        deadline = time.monotonic() + wait_s
        while set(self._apps.values()) & set(serve.status().applications) and time.monotonic() < deadline:
            time.sleep(0.1)
