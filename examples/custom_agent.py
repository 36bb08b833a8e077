"""Register your own specialist in a few lines; the router learns its route from the example utterances.

python examples/custom_agent.py
"""

import re

from slm_router.agents import AgentInput, AgentResult, register_agent
from slm_router.agents.base import GenericOutput
from slm_router.router import Router


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
                    details=GenericOutput(data={"order": order.group(0) if order else None}),
                    confidence=0.95 if order else 0.3,
                )
            )
        return results


router = Router.from_policy()  # add backend="ray" to host it on Ray Serve instead; nothing else changes
for text in [
    "I'd like a refund for order 88120, the blender broke",
    "Order #A12345 was charged $49.99 twice",
]:
    result = router.invoke(text)
    print(
        f"{result.route:8} answered by {result.answered_by:9} escalated={result.escalated}: {result.output}"
    )
