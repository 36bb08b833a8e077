"""Background jobs with progress, for work an operator starts and watches (the console's learn).

A job runs on its own thread, so a request that starts it answers at once with the job's id; the caller
polls `JobRegistry.get` for its state and progress (0..1). At most one job of a kind runs at a time (a second
is refused with `JobBusyError`: two learns on the same labels would only race), and only the last `keep`
finished jobs are kept, so memory stays bounded however long the service runs.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from slm_router.router.errors import SlmRouterError

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed"]
Progress = Callable[[float], None]
"""Called by the work with its fraction done (0..1); values outside are clamped, and it never goes back."""


class JobError(SlmRouterError):
    """A job cannot be started or found."""


class JobBusyError(JobError):
    """A job of the same kind is still queued or running."""


class UnknownJobError(JobError, KeyError):
    """No job with this id (never started, or dropped from the last `keep`)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Job(BaseModel):
    """A snapshot of one job (a copy: it does not change while the job runs)."""

    id: str
    kind: str
    state: JobState = "queued"
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    started_by: str = Field(default="", description="Who started it: a key id, never a key.")
    created: float
    started: float | None = None
    finished: float | None = None
    result: dict[str, Any] | None = Field(default=None, description="What the job found, once done.")
    error: str | None = Field(default=None, description="Why it failed, once failed.")


class _Entry:
    """A job's live record: its public snapshot, the raw value the work returned, and a done event."""

    def __init__(self, job: Job, describe: Callable[[Any], dict[str, Any]]) -> None:
        self.job = job
        self.describe = describe
        self.value: Any = None
        self.done = threading.Event()


class JobRegistry:
    """Thread-based jobs, one running per kind, the last `keep` finished ones remembered."""

    def __init__(self, keep: int = 20) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def submit(
        self,
        kind: str,
        work: Callable[[Progress], Any],
        describe: Callable[[Any], dict[str, Any]],
        started_by: str = "",
    ) -> Job:
        """Start `work(progress)` on a thread; `describe(value)` turns what it returns into the job's
        `result`. Raises `JobBusyError` while a job of this kind is queued or running."""
        with self._lock:
            busy = [
                e.job
                for e in self._entries.values()
                if e.job.kind == kind and e.job.state in ("queued", "running")
            ]
            if busy:
                raise JobBusyError(f"a {kind} job is already {busy[0].state} ({busy[0].id}); wait for it")
            entry = _Entry(
                Job(id=uuid.uuid4().hex[:12], kind=kind, created=time.time(), started_by=started_by), describe
            )
            self._entries[entry.job.id] = entry
            self._forget_old()
        threading.Thread(
            target=self._run, args=(entry, work), name=f"job-{kind}-{entry.job.id}", daemon=True
        ).start()
        return entry.job.model_copy()

    def get(self, job_id: str) -> Job:
        return self._entry(job_id).job.model_copy()

    def value(self, job_id: str) -> Any:
        """What a finished job's work returned (e.g. a candidate policy that is not in its `result`);
        None until it is done."""
        return self._entry(job_id).value

    def jobs(self) -> list[Job]:
        """Every remembered job, newest first."""
        with self._lock:
            return [e.job.model_copy() for e in reversed(self._entries.values())]

    def wait(self, job_id: str, timeout_s: float | None = None) -> Job:
        """The job once it is done or failed (or as it is after `timeout_s`)."""
        entry = self._entry(job_id)
        entry.done.wait(timeout_s)
        return entry.job.model_copy()

    def _entry(self, job_id: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(job_id)
        if entry is None:
            raise UnknownJobError(f"no job {job_id!r} (the last {self.keep} finished jobs are kept)")
        return entry

    def _forget_old(self) -> None:
        finished = [job_id for job_id, e in self._entries.items() if e.job.state in ("done", "failed")]
        for job_id in finished[: max(0, len(finished) - self.keep)]:
            del self._entries[job_id]

    def _run(self, entry: _Entry, work: Callable[[Progress], Any]) -> None:
        job = entry.job

        def progress(fraction: float) -> None:
            with self._lock:
                job.progress = max(job.progress, min(1.0, max(0.0, float(fraction))))

        with self._lock:
            job.state, job.started = "running", time.time()
        try:
            value = work(progress)
            result = entry.describe(value)
        except Exception as exc:
            with self._lock:
                job.state, job.error, job.finished = "failed", _why(exc), time.time()
        else:
            with self._lock:
                entry.value = value
                job.state, job.result, job.progress, job.finished = "done", result, 1.0, time.time()
        finally:
            with self._lock:
                self._forget_old()
            entry.done.set()  # last: a waiter sees the registry as it will stay


def _why(exc: Exception) -> str:
    """Our typed errors are written for the operator; anything else is a bug, logged under an incident id."""
    if isinstance(exc, SlmRouterError | ValueError | OSError):
        return str(exc)
    incident = uuid.uuid4().hex[:12]
    log.error("job failed (incident %s)", incident, exc_info=exc)
    return f"internal error (incident {incident}); see the server log"
