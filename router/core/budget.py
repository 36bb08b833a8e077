"""The escalation budget: how much traffic (or spend) went to the fallback over a sliding window.

The graph asks `allows()` before each fallback call and reports every finished request with `record()`.
In-process and per router: replicas behind a load balancer each keep their own budget, so set the caps
per replica (a shared store would be a network hop on every request).

Written out: rate limiters (`limits`, `pyrate-limiter`) cap a count of events per period, while this caps a
share of all requests (escalated / total over the window) beside an hourly spend, in O(1) per check.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from slm_router.policies.schema import BudgetConfig


class EscalationBudget:
    """Running totals beside the windows, so a check costs O(1) however busy the hour was."""

    def __init__(self, config: BudgetConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._requests: deque[tuple[float, bool]] = deque()  # (time, escalated)
        self._spend: deque[tuple[float, float]] = deque()  # (time, fallback cost), shadow calls included
        self._escalated = 0  # escalated requests in `_requests`
        self._spent = 0.0  # total cost in `_spend`
        self._lock = threading.Lock()

    def _trim(self, now: float) -> None:
        while self._requests and self._requests[0][0] < now - self.config.window_s:
            self._escalated -= self._requests.popleft()[1]
        while self._spend and self._spend[0][0] < now - 3600.0:
            self._spent -= self._spend.popleft()[1]
        if not self._spend:
            self._spent = 0.0  # no float drift once the hour is empty

    def _add_spend(self, now: float, cost: float) -> None:
        self._spend.append((now, cost))
        self._spent += cost

    def record(self, escalated: bool, cost: float = 0.0) -> None:
        """One finished request, and what its fallback call cost (0 when it had none)."""
        with self._lock:
            now = self._clock()
            self._requests.append((now, escalated))
            self._escalated += escalated
            if cost:
                self._add_spend(now, cost)
            self._trim(now)

    def charge(self, cost: float) -> None:
        """Fallback spend that is not a request of its own (a shadow call)."""
        with self._lock:
            now = self._clock()
            self._add_spend(now, cost)
            self._trim(now)

    def usage(self) -> tuple[float, float, int]:
        """(share escalated over the window, fallback spend over the last hour, requests in the window)."""
        with self._lock:
            self._trim(self._clock())
            n = len(self._requests)
            return (self._escalated / n if n else 0.0), self._spent, n

    def allows(self) -> tuple[bool, str]:
        """Whether one more escalation fits, and if not, which cap it would break (in words)."""
        conf = self.config
        share, spend, n = self.usage()
        if self._over_share(share, n):
            return False, (
                f"escalation budget: {share:.1%} of the last {n} requests escalated "
                f"(escalation.budget.max_share {conf.max_share:.1%})"
            )
        if self._over_cost(spend):
            return False, (
                f"escalation budget: {spend:.4g} spent on the fallback in the last hour "
                f"(escalation.budget.max_cost_per_hour {conf.max_cost_per_hour:.4g})"
            )
        return True, ""

    def retry_after_s(self) -> float | None:
        """Seconds until the caps that refuse now lift with no new traffic (a 429's `Retry-After`): the
        oldest escalation leaves the window (the share falls), and enough spend leaves the hour (spend
        falls under its cap). None when an escalation fits now."""
        conf = self.config
        with self._lock:
            now = self._clock()
            self._trim(now)
            waits: list[float] = []
            n = len(self._requests)
            if n and self._over_share(self._escalated / n, n):
                # It lifts when the share falls (the oldest escalation leaves the window) or when too few
                # requests are left to judge a share (`min_requests`), whichever comes first.
                leave = [self._requests[n - conf.min_requests][0]]
                leave += [next((t for t, escalated in self._requests if escalated), leave[0])]
                waits.append(min(leave) + conf.window_s - now)
            if self._over_cost(self._spent):
                left = self._spent
                for t, cost in self._spend:
                    left -= cost
                    if not self._over_cost(left):
                        waits.append(t + 3600.0 - now)
                        break
        return max(0.0, *waits) if waits else None

    def _over_share(self, share: float, n: int) -> bool:
        """The share cap refuses: enough requests in the window to judge, and too many of them escalated."""
        conf = self.config
        return conf.max_share is not None and n >= conf.min_requests and share >= conf.max_share

    def _over_cost(self, spent: float) -> bool:
        """The spend cap refuses: the last hour's fallback spend reached it."""
        cap = self.config.max_cost_per_hour
        return cap is not None and spent >= cap


def refusal(budget: EscalationBudget | None) -> str | None:
    """Why the escalation budget withholds the fallback now; None when it allows it (or there is none)."""
    if budget is None:
        return None
    allowed, why_not = budget.allows()
    return None if allowed else why_not
