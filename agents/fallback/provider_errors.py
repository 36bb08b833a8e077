"""Reading what a provider raised: worth a retry, a timeout, or the request's own fault (no breaker count).

Providers raise their own exception types (openai, anthropic, httpx, requests), so they are recognised by
class name and HTTP status rather than imported.
"""

from __future__ import annotations

from slm_router.agents.base import AgentError


class ContextTooLong(ValueError):
    """llama.cpp refused a prompt longer than its context window (the estimate before the call was short)."""


_TRANSIENT_ERRORS = frozenset(
    {
        "APIConnectionError",  # openai, anthropic: connection refused or reset, includes their timeouts
        "APITimeoutError",
        "RateLimitError",
        "InternalServerError",
        "ServiceUnavailableError",
        "TransportError",  # httpx: connect, read, write, pool, protocol errors and timeouts
        "ConnectionError",  # builtins, requests, aiohttp
        "TimeoutError",
    }
)
_TIMEOUT_ERRORS = frozenset({"APITimeoutError", "TimeoutException", "TimeoutError", "ReadTimeout"})
# Client errors about this one request: the provider is up and answering, so they don't open the breaker.
_REQUEST_ERRORS = frozenset({400, 413, 422})


def _status_code(exc: BaseException) -> int | None:
    for source in (exc, getattr(exc, "response", None)):
        status = getattr(source, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _named(exc: BaseException, names: frozenset[str]) -> bool:
    return any(k.__name__ in names for k in type(exc).__mro__)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: connection failures, timeouts, HTTP 408, 429 and 5xx."""
    if isinstance(exc, AgentError):
        return False
    status = _status_code(exc)
    if status is not None:
        return status in (408, 429) or status >= 500
    return _named(exc, _TRANSIENT_ERRORS)


def is_timeout(exc: BaseException) -> bool:
    return _named(exc, _TIMEOUT_ERRORS)


def provider_healthy(exc: BaseException) -> bool:
    """A failure that says nothing against the provider (it answered: the request itself was refused)."""
    return isinstance(exc, ContextTooLong) or _status_code(exc) in _REQUEST_ERRORS


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
