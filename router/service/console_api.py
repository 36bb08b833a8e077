"""The operator console's service layer, in process: what the JSON endpoints (`routes/console.py`) and the
HTML pages (`service/console/pages.py`) both call, so the two can never disagree.

`Console` (one per app, on `app.state.console`) reads the decision log through `router/ops` (overview,
review, what-if), always with the serving policy's privacy rule (text only with `privacy.log_text`); runs
learn on the operator's labels as a background job (`router/ops/jobs.py`); writes the candidate policy
only to a new file unless the operator explicitly overwrites the live one; and reloads a policy by
building a new `Router` that shares the running one's agent pool and embedder, swapped into the
`Dispatcher` in one step, keeping the router it replaced for one rollback.

Every method is synchronous (they read SQLite, fit route heads, load YAML): call them off the event loop.
Failures are `ConsoleError`s carrying the HTTP status and the error `type` to answer with.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field

from slm_router.policies import DEFAULT_POLICY, PolicyError, load_policy, policy_from_dict
from slm_router.router.compose import hosted_agents
from slm_router.router.errors import SlmRouterError
from slm_router.router.ops import jobs as jobs_
from slm_router.router.ops import learning, overview, review, whatif
from slm_router.router.ops.decision_log import DecisionLog, DecisionLogError, default_log_path
from slm_router.router.ops.review import Label, QueueItem
from slm_router.router.ops.whatif import WhatIfPoint
from slm_router.router.runnable import Router
from slm_router.router.service.dispatch import Dispatcher
from slm_router.router.service.gate import Caller, KeyRing

log = logging.getLogger(__name__)

T = TypeVar("T")
Window = Literal["15m", "1h", "24h", "7d"]
LEARN = "learn"
POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}\.ya?ml$")


class ConsoleError(SlmRouterError):
    """A console request that cannot be served, with the status and error `type` it answers with."""

    def __init__(self, message: str, status: int, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class LearnStarted(BaseModel):
    job_id: str
    labels: int = Field(description="Labelled decisions the job learns from.")


class PolicyState(BaseModel):
    """Which policy serves now, and what a rollback would return to."""

    live: str | None = Field(description="The policy file serving now (null: not loaded from a file).")
    loaded_at: float
    routes: list[str]
    previous: str | None = Field(description="The policy a rollback returns to (null: none).")
    can_rollback: bool
    policy_dir: str = Field(description="Where written policies go, and where reload looks for a name.")


class WrittenPolicy(BaseModel):
    path: str
    name: str = Field(description="The file name, to pass to policy/reload.")
    overwrote_live: bool


@dataclass
class _Served:
    """A router with the policy file it was built from, and when it began serving."""

    router: Router
    path: Path | None
    loaded_at: float = field(default_factory=time.time)


class Console:
    """The console's state and actions; `create_app` builds one and puts it on `app.state.console`.

    `policy_path`: the file the serving policy came from (None: built in process, e.g. a test's
    `Policy`); new policies are written next to it, unless it is a packaged preset, in which case they go
    to the data directory (`$SLM_ROUTER_DATA_DIR/policies`)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        keyring: KeyRing,
        policy_path: Path | None = None,
        jobs: jobs_.JobRegistry | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.keyring = keyring
        self.jobs = jobs or jobs_.JobRegistry()
        path = None if policy_path is None else Path(policy_path).resolve()
        self._base = dispatcher.router  # owns the pool and embedder every reloaded router shares
        self._current = _Served(dispatcher.router, path)
        self._previous: _Served | None = None
        self._retired: list[Router] = []
        self._swap_lock = threading.Lock()
        self.policy_dir = (
            path.parent
            if path is not None and not _packaged(path)
            else default_log_path().parent / "policies"
        )

    # --- who is calling ---------------------------------------------------------------------------

    def authenticate(self, key: str) -> Caller | None:
        """The caller a key signs in as (role, tenant, key id), or None for a wrong key: the console's
        login page uses it, the same check the Gate makes per request."""
        return self.keyring.caller(key)

    @staticmethod
    def require_operator(role: str | None) -> None:
        if role != "operator":
            raise ConsoleError(
                "this needs an operator key (server.admin_keys_env); this key may only read", 403, "forbidden"
            )

    # --- reading ----------------------------------------------------------------------------------

    @property
    def router(self) -> Router:
        return self.dispatcher.router

    @property
    def show_text(self) -> bool:
        """Message text and answers are logged (and so can be shown) only with `privacy.log_text`."""
        return self.router.policy.privacy.log_text

    def shows_text(self, role: str | None) -> bool:
        """Whether this caller may see message text and answers: logged, and an operator. Any API key is a
        viewer, and the queue holds every tenant's decisions: one caller must not read another's messages."""
        return self.show_text and role == "operator"

    def decision_log(self) -> DecisionLog:
        found = self.router.decision_log
        if found is None:
            raise ConsoleError(
                "the decision log is off (decision_log.enabled: false); the console reads it",
                404,
                "no_decision_log",
            )
        return found

    def stats(self, window: Window = "1h", until: float | None = None) -> overview.Overview:
        since, until = _span(window, until)
        budget = self.router.policy.escalation.budget
        found = self.decision_log()
        bucket_s = overview.bucket_for(until - since)
        return _read(lambda: overview.stats(found, since, until, bucket_s, budget=budget))

    def quality(self, window: Window = "24h", until: float | None = None) -> overview.Quality:
        since, until = _span(window, until)
        found = self.decision_log()
        return _read(lambda: overview.quality(found, since, until, overview.bucket_for(until - since, 24)))

    def review(self, limit: int = 50, role: str | None = None) -> list[QueueItem]:
        """The review queue; text and answers only for an operator (`shows_text`)."""
        found = self.decision_log()
        if not found.path.is_file():
            return []  # nothing routed yet
        show_text = self.shows_text(role)
        return _read(lambda: review.queue(found, limit=limit, show_text=show_text))

    def label(self, label: Label, labelled_by: str) -> None:
        """Store an operator's label; `labelled_by` is a key id (`Caller.key_id`), never a key."""
        if label.answer and not self.router.policy.privacy.log_text:
            # An answer repeats what the message said (an order id, an e-mail address): it is stored only
            # where the message text may be (the reviewer sees no text then anyway).
            raise ConsoleError(
                "answer: a right answer can be stored only with privacy.log_text: true; label the route only",
                422,
                "invalid_label",
            )
        found = self.decision_log()
        if not found.path.is_file():
            raise ConsoleError(f"no decision {label.decision_id}: nothing is logged yet", 404, "not_found")
        try:
            review.save_label(found, label, labelled_by, self.router.routes)
        except review.ReviewError as exc:
            raise ConsoleError(str(exc), 422, "invalid_label") from None
        except DecisionLogError as exc:
            raise ConsoleError(str(exc), 503, "decision_log_unavailable") from None

    def whatif(self, route: str | None, thresholds: list[float]) -> list[WhatIfPoint]:
        if route is not None and route not in self.router.routes:
            raise ConsoleError(
                f"unknown route {route!r}; routes are {sorted(self.router.routes)}", 400, "unknown_route"
            )
        found = self.decision_log()
        return _read(lambda: whatif.curve(found, self.router.policy, route, thresholds))

    # --- learning ---------------------------------------------------------------------------------

    def start_learn(self, started_by: str) -> LearnStarted:
        """Learn from every labelled decision on a background thread; `job(job_id)` reports progress and,
        when done, the before/after numbers. One learn at a time (409 `busy`)."""
        router = self.router  # the job keeps learning against this router even if a reload swaps it
        found = self.decision_log()
        labelled = (
            _read(lambda: review.labels(found, show_text=router.policy.privacy.log_text))
            if found.path.is_file()
            else []
        )
        if not labelled:
            raise ConsoleError("no labelled decisions yet: label some in the review queue", 409, "no_labels")
        if not any(d.text for d in labelled):
            raise ConsoleError(
                f"none of the {len(labelled)} labelled decisions has its text in the decision log (text is "
                "logged only with privacy.log_text: true): there is nothing to learn from",
                409,
                "no_text",
            )

        def work(progress: jobs_.Progress) -> learning.LabelLearnResult:
            return learning.learn_from_labels(router.policy, router.embedder, labelled, progress)

        try:
            job = self.jobs.submit(LEARN, work, _describe_learn, started_by)
        except jobs_.JobBusyError as exc:
            raise ConsoleError(str(exc), 409, "busy") from None
        return LearnStarted(job_id=job.id, labels=len(labelled))

    def job(self, job_id: str) -> jobs_.Job:
        try:
            return self.jobs.get(job_id)
        except jobs_.UnknownJobError as exc:
            raise ConsoleError(str(exc), 404, "not_found") from None

    def write_policy(
        self, job_id: str, name: str | None = None, overwrite_live: bool = False
    ) -> WrittenPolicy:
        """Write a finished learn job's candidate policy. Without `overwrite_live` it goes to a new file
        in `policy_dir` (`name`, or a timestamped one) and never replaces an existing file; with it, and
        no `name`, it replaces the live policy file (which then still needs a reload to serve)."""
        job = self.job(job_id)
        if job.kind != LEARN or job.state != "done":
            raise ConsoleError(
                f"job {job_id} is {job.state}: only a finished learn has a policy", 409, "not_done"
            )
        result: learning.LabelLearnResult = self.jobs.value(job_id)
        live = self._current.path
        target = self._policy_file(name) if name else None
        if overwrite_live:
            if live is None or _packaged(live):
                raise ConsoleError(
                    "the serving policy is not a file of yours (a packaged preset, or built in process): "
                    "write a new file and reload it",
                    409,
                    "no_live_policy",
                )
            if target is not None and target != live:
                raise ConsoleError(f"overwrite_live writes {live.name}, not {name!r}", 422, "invalid_request")
            target = live
        else:
            target = target or self.policy_dir / time.strftime("policy-learned-%Y%m%d-%H%M%S.yaml")
            if target == live:
                raise ConsoleError(
                    f"{target.name} is the live policy: pass overwrite_live to replace it", 409, "live_policy"
                )
            if target.exists():
                raise ConsoleError(f"{target.name} exists; choose another name", 409, "exists")
        data = result.policy
        policy_from_dict(data, source=str(target), base_dir=target.parent)  # never write what cannot load
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.tmp")
        staged.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        staged.replace(target)  # a reader never sees half a policy
        return WrittenPolicy(path=str(target), name=target.name, overwrote_live=target == live)

    # --- serving policy ---------------------------------------------------------------------------

    def policy_state(self) -> PolicyState:
        current, previous = self._current, self._previous
        return PolicyState(
            live=None if current.path is None else str(current.path),
            loaded_at=current.loaded_at,
            routes=current.router.routes,
            previous=None if previous is None else str(previous.path or "(in-process policy)"),
            can_rollback=previous is not None,
            policy_dir=str(self.policy_dir),
        )

    def reload(self, name: str | None = None) -> PolicyState:
        """Serve the policy file `name` (in `policy_dir`; None: the live file again) from the next request
        on. The new router shares the running one's agent pool and embedder, so only the route index is
        rebuilt (seconds); the router it replaces is kept for `rollback`. What the pool was built with
        (`hosting`, `agents`) and `server` settings need a restart; conversation memory kept in process
        (`memory.backend: memory`) starts empty under the new router (`sqlite` carries over)."""
        path = self._policy_file(name) if name else self._current.path
        if path is None:
            raise ConsoleError(
                "the serving policy was not loaded from a file: name one", 422, "invalid_request"
            )
        if not path.is_file():
            raise ConsoleError(f"no policy {path.name} in {self.policy_dir}", 404, "not_found")
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            raise ConsoleError(str(exc), 422, "invalid_policy") from None
        with self._swap_lock:
            running = self.router
            missing = sorted(set(hosted_agents(policy)) - set(running.pool.names()))
            if missing:
                raise ConsoleError(
                    f"the policy needs agents the service does not run ({', '.join(missing)}): restart it",
                    422,
                    "invalid_policy",
                )
            try:
                # The same memory settings keep the running conversations (an in-memory store would
                # otherwise start empty); other settings open the store the new policy asks for.
                memory = running.conversations if policy.memory == running.policy.memory else None
                new = Router(policy, pool=running.pool, embedder=running.embedder, conversations=memory)
            except PolicyError as exc:  # e.g. a route naming an agent that is not registered
                raise ConsoleError(str(exc), 422, "invalid_policy") from None
            self.dispatcher.swap(new)
            self._retire(self._previous)
            self._previous, self._current = self._current, _Served(new, path)
        log.info("policy reloaded from %s", path)
        return self.policy_state()

    def rollback(self) -> PolicyState:
        """Serve the router the last reload replaced, again; the rolled-back one is closed."""
        with self._swap_lock:
            if self._previous is None:
                raise ConsoleError("nothing to roll back to: no policy was reloaded", 409, "no_previous")
            self.dispatcher.swap(self._previous.router)
            rolled_back = self._current
            self._current, self._previous = self._previous, None
            self._retire(rolled_back)
        log.info("policy rolled back to %s", self._current.path)
        return self.policy_state()

    def close(self) -> None:
        """At shutdown: close every router still open, the one owning the pool and embedder last."""
        with self._swap_lock:
            open_ = [
                self._current.router,
                *([self._previous.router] if self._previous else []),
                *self._retired,
            ]
            self._retired.clear()
        for router in dict.fromkeys(open_):
            if router is not self._base:
                router.close()
        self._base.close()

    def _retire(self, served: _Served | None) -> None:
        """Close a router no longer needed, once any request it is still answering is past its deadline.
        The first router is kept open until `close`: its pool and embedder serve every later one."""
        if served is None or served.router is self._base:
            return
        self._retired.append(served.router)
        timer = threading.Timer(self.dispatcher.deadline_s, self._close_retired, args=(served.router,))
        timer.daemon = True
        timer.start()

    def _close_retired(self, router: Router) -> None:
        with self._swap_lock:
            if router not in self._retired or router in (
                self.router,
                getattr(self._previous, "router", None),
            ):
                return
            self._retired.remove(router)
        router.close()

    def _policy_file(self, name: str) -> Path:
        """A policy file by name, inside `policy_dir` only: an HTTP caller never names another path."""
        if not POLICY_NAME.match(name):
            raise ConsoleError(
                f"policy name {name!r}: a file name in the policy directory ending .yaml (letters, digits, "
                "'.', '_', '-')",
                422,
                "invalid_request",
            )
        return (self.policy_dir / name).resolve()


def _packaged(path: Path) -> bool:
    """A preset shipped inside the package: never written over (an upgrade would undo it anyway)."""
    return path.is_relative_to(Path(DEFAULT_POLICY).resolve().parent)


def _span(window: Window, until: float | None) -> tuple[float, float]:
    if window not in overview.WINDOWS:
        raise ConsoleError(f"window {window!r}: one of {', '.join(overview.WINDOWS)}", 422, "invalid_request")
    end = time.time() if until is None else until
    return end - overview.WINDOWS[window], end


def _read(query: Callable[[], T]) -> T:
    """Run a decision-log read, a broken log answering 503 instead of a 500."""
    try:
        return query()
    except DecisionLogError as exc:
        raise ConsoleError(str(exc), 503, "decision_log_unavailable") from None


def _describe_learn(result: learning.LabelLearnResult) -> dict[str, Any]:
    """The job's public result: the numbers, not the candidate policy (it holds the labelled texts)."""
    return result.model_dump(mode="json", exclude={"policy"})
