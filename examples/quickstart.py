"""Route a few support messages with the packaged defaults and print who answered and why.

python examples/quickstart.py
"""

from slm_router.router import Router

router = Router.from_policy()  # packaged default policy; pass a path to use your own

messages = [
    "I'm so disappointed, this is the third time my delivery is late!",
    "Olá, o meu pedido ainda não chegou.",
    "Order #A12345 was charged $49.99 twice, refund me at jane.doe@example.com",
]
for result in router.batch(messages):
    print(
        f"{result.route:10} {result.answered_by:10} escalated={result.escalated!s:5} "
        f"confidence={result.confidence:.2f}  {result.output}"
    )

# Force a route and pass parameters to its agent.
result = router.invoke(
    {"text": "Where is my order?", "route": "translate", "params": {"target_language": "pt"}}
)
print(result.output, "|", result.reason)
