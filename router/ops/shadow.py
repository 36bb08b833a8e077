"""Shadow mode: a sample of specialist-answered requests is also sent to the fallback, after the answer has
gone back, and the two answers are compared. Operators read the agreement per route in `slm-router log
stats`: a live measure of how good the small models are, without labels.

Agreement (0..1, see `agreement`) is a label match for sentiment and a recall-weighted character n-gram
score (chrF) otherwise: robust to case, punctuation and inflection, so two translations that share most
words score high. It is a similarity, not a correctness judgement; read trends and routes against each
other.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel

from slm_router.agents.base import AgentError, AgentOutput, ExtractionOutput, SentimentOutput
from slm_router.agents.fallback import FallbackAgent
from slm_router.extras import require
from slm_router.policies import Policy
from slm_router.router.core.budget import EscalationBudget
from slm_router.router.core.costs import answer_cost
from slm_router.router.core.flows import SENTIMENT_WORDS
from slm_router.router.result import RouteResult

log = logging.getLogger(__name__)
_FEATURE = "shadow mode (escalation.shadow)"  # its translation agreement is sacrebleu's chrF


class ShadowRecord(BaseModel):
    decision_id: int | None
    route: str
    agent: str
    agreement: float
    fallback_ms: float
    cost: float


def agreement(output: str, details: AgentOutput | None, fallback_output: str) -> float:
    """How far the fallback's answer confirms the specialist's, 0..1.

    Sentiment: 1 when the first sentiment word in the fallback's answer is the specialist's label.
    Extraction: the share of the specialist's entities that the fallback's answer mentions. Anything else
    (translations): recall-weighted chrF (beta 3) of the specialist's output against the fallback's, as the
    fallback tends to add words around the same content."""
    require("sacrebleu", "eval", _FEATURE)
    from sacrebleu.metrics import CHRF

    if isinstance(details, SentimentOutput):
        said = SENTIMENT_WORDS.search(fallback_output)
        return float(said is not None and said.group(1).lower() == details.label)
    if isinstance(details, ExtractionOutput) and details.entities:
        found = [e.text.lower() in fallback_output.lower() for e in details.entities]
        return sum(found) / len(found)
    ours, theirs = output.strip().lower(), fallback_output.strip().lower()
    if not ours or not theirs:
        return float(ours == theirs)
    return CHRF(beta=3).sentence_score(theirs, [ours]).score / 100


class Shadow:
    """Samples specialist answers into a small worker thread; when it is busy, samples are dropped."""

    def __init__(
        self,
        policy: Policy,
        fallback: FallbackAgent,
        sink: Callable[[ShadowRecord], None],
        budget: EscalationBudget | None = None,
        seed: int | None = None,
    ) -> None:
        require("sacrebleu", "eval", _FEATURE)  # fail at start-up, not in the worker's first sample
        self.policy = policy
        self.fallback = fallback
        self.sink = sink
        self.budget = budget
        self._rng = random.Random(seed)
        self._pending = threading.BoundedSemaphore(policy.escalation.shadow.max_pending)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slm-router-shadow")
        self.dropped = 0

    def offer(self, result: RouteResult, text: str, decision_id: int | None) -> bool:
        """Maybe shadow this request; returns whether it was queued."""
        if result.action != "specialist" or self._rng.random() >= self.policy.escalation.shadow.sample_rate:
            return False
        if self.budget is not None and not self.budget.allows()[0]:
            return False  # shadow calls spend the same budget; live escalations come first
        if not self._pending.acquire(blocking=False):
            self.dropped += 1
            return False
        self._executor.submit(self._run, result, text, decision_id)
        return True

    def _run(self, result: RouteResult, text: str, decision_id: int | None) -> None:
        try:
            start = time.perf_counter()
            answer = self.fallback.answer(text, self.policy.routes[result.route].fallback_prompt)
            cost = answer_cost(self.policy.pricing, answer, text)
            if self.budget is not None:
                self.budget.charge(cost)
            self.sink(
                ShadowRecord(
                    decision_id=decision_id,
                    route=result.route,
                    agent=result.answered_by,
                    agreement=round(agreement(result.output, result.details, answer.output), 4),
                    fallback_ms=round((time.perf_counter() - start) * 1000, 3),
                    cost=round(cost, 8),
                )
            )
        except AgentError as exc:
            log.warning("shadow call failed: %s", exc)
        except Exception:  # a bug here must not kill the worker thread silently
            log.exception("shadow call failed")
        finally:
            self._pending.release()

    def drain(self, timeout_s: float = 60.0) -> None:
        """Wait for queued shadow calls (tests, shutdown)."""
        self._executor.submit(lambda: None).result(timeout=timeout_s)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
