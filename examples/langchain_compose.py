"""slm-router inside a larger LangChain (LCEL) app: it is a Runnable like any other.

python examples/langchain_compose.py
"""

from langchain_core.runnables import RunnableLambda, RunnableParallel

from slm_router.router import Router, RouteResult

router = Router.from_policy()


def to_ticket(text: str) -> dict:
    return {"text": text, "route": "triage"}


def summarise(result: RouteResult) -> str:
    record = result.details
    if record is None or record.kind != "triage":
        return result.output
    return f"{record.priority.upper()} -> {record.queue}: {record.english_text}"


# One chain: normalise -> triage with the router -> format; alongside, a plain routing of the same text.
chain = RunnableParallel(
    triage=RunnableLambda(to_ticket) | router | RunnableLambda(summarise),
    routed=router | RunnableLambda(lambda r: f"{r.route} ({r.answered_by})"),
)
for message in [
    "O meu pedido 48213 chegou danificado, quero o reembolso de R$ 150,00!",
    "Thanks, the replacement arrived and works great.",
]:
    print(chain.invoke(message))
print(chain.batch(["Order 55120 was billed £35.50 twice", "Where is my parcel 1Z999AA10123456784?"]))
