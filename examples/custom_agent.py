"""Register your own specialist in a few lines; a router that asks for it learns its route from the examples.

python examples/custom_agent.py
"""

import re
from typing import Literal

from slm_router import Router, register_agent
from slm_router.agents import AgentInput, AgentOutput, AgentResult


class RefundOutput(AgentOutput):
    """The agent's own typed output: it reaches `result.details` (and the HTTP JSON) as it is."""

    kind: Literal["refund"] = "refund"
    order: str | None


@register_agent(
    "refunds",
    utterances=[
        "I want a refund for my order",
        "Please give me my money back",
        "Refund order 5531 please",
        "I returned the parcel, where is my refund?",
        "Can I get a refund on my subscription?",
    ],
    min_confidence=0.5,  # below this the answer escalates to the fallback, like a built-in
)
class RefundAgent:
    name = "refunds"

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        results = []
        for item in items:
            order = re.search(r"\b\d{4,}\b", item.text)
            results.append(
                AgentResult(
                    agent=self.name,
                    output=f"refund opened for order {order.group(0)}" if order else "which order?",
                    details=RefundOutput(order=order.group(0) if order else None),
                    confidence=0.95 if order else 0.3,
                )
            )
        return results


# A registered agent is routed to by the policies that ask for it: here by name; a policy file asks with
# `routes: {refunds: {agent: refunds}}`. Add backend="ray" to host it on Ray Serve; nothing else changes.
router = Router.from_policy(agents=["refunds"])
for text in [
    "I'd like a refund for order 88120, the blender broke",
    "Order #A12345 was charged $49.99 twice",
]:
    result = router.invoke(text)
    print(
        f"{result.route:8} answered by {result.answered_by:9} escalated={result.escalated}: {result.output}"
    )
