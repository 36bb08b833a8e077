"""A stand-in engine for WorkerProcess tests, run as `python -m tests.hang_engine`.

Answers {"text": ...} with its text and the child's pid; sleeps forever on {"hang": true}; with
HANG_ENGINE_AT_START=1 in its environment it hangs before reading any request (so its stdin pipe fills up).
"""

from __future__ import annotations

import os
import time
from typing import Any

from slm_router.agents.hosting.isolation import serve


def handle(request: dict[str, Any]) -> dict[str, Any]:
    if request.get("hang"):
        while True:
            time.sleep(3600)
    return {"text": request.get("text"), "pid": os.getpid()}


if __name__ == "__main__":
    if os.environ.get("HANG_ENGINE_AT_START") == "1":
        while True:
            time.sleep(3600)
    serve(handle)
