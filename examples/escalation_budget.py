"""An operator's policy: cap the share of traffic sent to the fallback, shadow a sample of specialist
answers, and read cost and agreement back from the decision log.

python examples/escalation_budget.py
"""

import tempfile
from pathlib import Path

from slm_router.policies import load_policy
from slm_router.router import Router
from slm_router.router.ops.decision_log import DecisionLog

with tempfile.TemporaryDirectory() as tmp:
    db = Path(tmp) / "decisions.db"
    policy = load_policy().model_copy(deep=True)  # the packaged default, edited below as a YAML would be
    policy.escalation.budget.max_share = 0.25  # at most a quarter of recent requests may escalate
    policy.escalation.budget.min_requests = 4
    policy.escalation.shadow.sample_rate = 1.0  # shadow every specialist answer (use ~0.05 in production)
    policy.decision_log.path = str(db)

    router = Router(policy)
    messages = [
        "I am really angry, my package arrived broken!",
        "Order #A12345 was charged $49.99 twice",
        "not sure how I feel about this order",  # unsure: escalates while the budget allows it
        "Thank you so much for the great service!",
        "order status",  # unsure again: the budget is spent, so the specialist answers, flagged
    ]
    for text in messages:
        r = router.invoke(text)
        flag = " (over budget)" if r.budget_exceeded else ""
        print(f"{r.answered_by:10} escalated={r.escalated!s:5} cost={r.cost:.6f}{flag}  {text}")
    assert router.shadow is not None
    router.shadow.drain()  # shadow calls run in the background; wait for them here
    router.close()

    stats = DecisionLog(db).stats()
    print(f"escalation rate {stats.escalation_rate:.0%}, held back by the budget {stats.budget_exceeded}")
    print(f"estimated cost {stats.cost:.6f} {policy.pricing.currency}")
    for route, agreement in stats.shadow_agreement.items():
        print(f"shadow agreement on {route}: {agreement:.2f} over {stats.shadow_samples[route]} samples")
