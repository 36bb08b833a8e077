"""How the fallback fails, as settings, and the policy shape they are read from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from slm_router.agents.fallback.chat_models import ChatModelConfig


class BreakerConfigLike(Protocol):
    @property
    def failures(self) -> int: ...
    @property
    def cooldown_s(self) -> float: ...


class FallbackConfigLike(ChatModelConfig, Protocol):
    """`ChatModelConfig` plus the failure-handling settings (`FallbackSettings.from_config` reads them)."""

    @property
    def retries(self) -> int: ...
    @property
    def retry_backoff_s(self) -> float: ...
    @property
    def max_concurrency(self) -> int: ...
    @property
    def max_waiting(self) -> int: ...
    @property
    def breaker(self) -> BreakerConfigLike: ...


@dataclass(frozen=True)
class FallbackSettings:
    """How the fallback fails: per-attempt timeout, bounded retries, bulkhead size, circuit breaker."""

    timeout_s: float = 15.0
    retries: int = 1
    retry_backoff_s: float = 0.2
    max_concurrency: int = 4
    max_waiting: int = 16
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        checks = {
            "timeout_s": self.timeout_s > 0,
            "retries": 0 <= self.retries <= 5,
            "retry_backoff_s": self.retry_backoff_s >= 0,
            "max_concurrency": self.max_concurrency >= 1,
            "max_waiting": self.max_waiting >= 0,
            "breaker_failures": self.breaker_failures >= 1,
            "breaker_cooldown_s": self.breaker_cooldown_s > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"FallbackSettings.{name} out of range: {getattr(self, name)!r}")

    @classmethod
    def from_config(cls, config: FallbackConfigLike) -> FallbackSettings:
        return cls(
            timeout_s=config.timeout_s,
            retries=config.retries,
            retry_backoff_s=config.retry_backoff_s,
            max_concurrency=config.max_concurrency,
            max_waiting=config.max_waiting,
            breaker_failures=config.breaker.failures,
            breaker_cooldown_s=config.breaker.cooldown_s,
        )
