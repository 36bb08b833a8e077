"""What actually leaves the host: every labelled message, escalated through the real router to a recording
OpenAI-compatible fallback, and every labelled PII value looked for in what that server received.

Stricter than tests/test_pii.py's scoring: a value leaks when its exact text, or any digit run of 4 or more
of it, is anywhere in the recorded request bodies of its message.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from slm_router.policies import Policy
from slm_router.router.runnable import Router
from tests.conftest import policy_with
from tests.fake_llm import FakeLLM
from tests.test_pii import load_rows

_DIGITS = re.compile(r"\d{4,}")
# Names have no recall target (their bar is precision, see tests/test_pii.py): report, bound loosely.
MAX_NAME_LEAK_SHARE = 0.10


def _leaked(value: str, sent: str) -> bool:
    compact = sent.replace(" ", "").replace("-", "")
    return value in sent or any(
        run in compact for run in _DIGITS.findall(value.replace(" ", "").replace("-", ""))
    )


def test_no_configured_pii_reaches_the_fallback(
    default_policy: Policy, router: Router, fake_llm: FakeLLM
) -> None:
    policy = policy_with(
        default_policy,
        fallback=fake_llm.fallback_config(timeout_s=5),
    )
    escalating = Router(policy, embedder=router.embedder)
    fake_llm.set_mode("recording")
    leaks: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for row in load_rows():
        before = len(fake_llm.requests)
        result = escalating.invoke({"text": row.text, "route": "other"})
        assert result.answered_by == "fallback", result.reason
        sent = json.dumps(fake_llm.requests[before:], ensure_ascii=False)
        for label, value in row.pii:
            totals[label] += 1
            if _leaked(value, sent):
                leaks[label] += 1
    print({label: f"{leaks[label]}/{totals[label]}" for label in sorted(totals)})
    structured = {label: n for label, n in leaks.items() if label != "PERSON"}
    assert structured == {}, f"leaked to the fallback: {structured} of {dict(totals)}"
    assert leaks["PERSON"] <= MAX_NAME_LEAK_SHARE * totals["PERSON"], dict(leaks)
