"""What the fallback says when it cannot answer: a cause the service maps to a status, and when to retry."""

from __future__ import annotations

from typing import Any, Literal

from slm_router.agents.base import AgentError

Cause = Literal["breaker_open", "bulkhead_full", "timeout", "error", "deadline"]


class FallbackUnavailable(AgentError):
    """The fallback cannot answer this request now.

    `cause`: `breaker_open` (it kept failing; not asked), `bulkhead_full` (all slots and the waiting room
    taken, or no slot came free in time), `timeout` (an attempt took longer than `timeout_s`), `error` (the
    provider failed, or the request cannot fit the model), `deadline` (the caller's deadline came first).
    `retry_after_s`: when trying again makes sense, where it is known.
    """

    def __init__(self, cause: Cause, message: str, retry_after_s: float | None = None) -> None:
        super().__init__("fallback", message)
        self.cause: Cause = cause
        self.retry_after_s = retry_after_s
        self.detail = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.cause, self.detail, self.retry_after_s))
