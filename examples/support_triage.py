"""Small models collaborating on a support ticket: translate -> (sentiment || extraction) -> triage record.

python examples/support_triage.py
"""

from slm_router.router import Router

router = Router.from_policy()

tickets = [
    "Estou muito irritado! O meu pedido 48213 chegou danificado e paguei R$ 150,00 pelo envio expresso.",
    "Hi, could you update the delivery address for order 99120 to 12 Main Street? Thanks!",
    "Ich bin sehr verärgert, meine Bestellung 55120 ist beschädigt angekommen!",  # no local de->en model
]
for ticket in tickets:
    result = router.invoke({"text": ticket, "route": "triage"})  # platforms force the flow per ticket
    record = result.details
    assert record is not None and record.kind == "triage"
    print(f"[{record.priority:>6} | {record.queue:7}] {record.language} -> {record.english_text}")
    entities = [(e.label, e.text) for e in record.entities]
    print(
        f"    sentiment={record.sentiment} ({record.sentiment_confidence}), entities={entities}, "
        f"escalated={record.escalated_steps or 'none'}"
    )
    print(
        "    steps:", ", ".join(f"{t.node}={t.ms:.0f}ms" for t in result.trace if t.node.startswith("flow:"))
    )
