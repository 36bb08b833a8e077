"""Fallback faults vs specialist latency: does a slow or dead fallback delay the traffic that never needs it?

    .venv/bin/python bench/faults.py                 # ~2 minutes: healthy, 20 s fallback, dead fallback
    .venv/bin/python bench/faults.py --seconds 10 --out -

One real `slm-router serve` (default policy, fallback = the fake OpenAI-compatible server of
tests/fake_llm.py on 127.0.0.1). In each phase, support messages the specialists answer arrive at
`--specialist-rps` and messages that go to the fallback at `--escalation-rps` (open loop: the same offered
load in every phase):

- healthy: the fake answers in 300 ms (the baseline, measured in the same run);
- slow: the fake takes 20 s (past fallback.timeout_s, so every escalation times out);
- dead: the fake's port is closed; after breaker.failures errors the breaker opens.

Reported: specialist p50/p99 per phase and their ratio to the healthy phase; escalation latency and status
per phase, and, once the breaker is open, escalations one at a time with nothing else running (the cost of
the refusal itself). Writes bench/results/faults.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import (
    ROOT,
    FakeLLM,
    _port,
    client_limits,
    percentile,
    start_server,
    stop_server,
    wait_ready,
    write_policy,
)

RESULTS = ROOT / "bench" / "results"
SPECIALIST = [
    "I am really angry, my package arrived broken and nobody answers my emails!",
    "Order #A12345 was charged $49.99 twice, please refund me at jane.doe@example.com",
    "Thank you so much, the replacement arrived quickly and works perfectly",
    "Ticket TCK-1234: customer email is john@acme.com, phone +1 415 555 0100",
]
ESCALATION = "What is the best way to grow tomatoes on a balcony?"


async def phase(url: str, seconds: float, specialist_rps: float, escalation_rps: float) -> dict[str, Any]:
    """Open loop at fixed rates, so every phase offers the same load: a closed loop would send more
    escalations exactly when they are refused faster, and measure that instead of the fault."""
    spec_ms: list[float] = []
    esc_ms: list[float] = []
    esc_status: Counter[str] = Counter()
    spec_status: Counter[str] = Counter()

    async def one(http: httpx.AsyncClient, text: str, sink: list[float], status: Counter[str]) -> None:
        start = time.perf_counter()
        response = await http.post("/v1/route", json={"text": text})
        sink.append(time.perf_counter() - start)
        status[str(response.status_code)] += 1

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=client_limits(500)) as http:
        tasks = []
        start = time.perf_counter()
        sent_spec = sent_esc = 0
        while (now := time.perf_counter() - start) < seconds:
            while sent_spec < int(now * specialist_rps) + 1:
                text = SPECIALIST[sent_spec % len(SPECIALIST)]
                tasks.append(asyncio.create_task(one(http, text, spec_ms, spec_status)))
                sent_spec += 1
            while sent_esc < int(now * escalation_rps) + 1:
                tasks.append(asyncio.create_task(one(http, ESCALATION, esc_ms, esc_status)))
                sent_esc += 1
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
    return {
        "specialist_requests": len(spec_ms),
        "specialist_status": dict(spec_status),
        "specialist_p50_ms": percentile(spec_ms, 50),
        "specialist_p99_ms": percentile(spec_ms, 99),
        "escalation_requests": len(esc_ms),
        "escalation_status": dict(esc_status),
        "escalation_p50_ms": percentile(esc_ms, 50),
        "escalation_p99_ms": percentile(esc_ms, 99),
    }


def sequential(url: str, count: int) -> dict[str, Any]:
    """Escalations one at a time with the breaker open and nothing else running: the local path alone."""
    latencies, status = [], Counter[str]()
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(count):
            start = time.perf_counter()
            status[str(http.post("/v1/route", json={"text": ESCALATION}).status_code)] += 1
            latencies.append(time.perf_counter() - start)
    return {
        "escalation_status": dict(status),
        "escalation_p50_ms": percentile(latencies, 50),
        "escalation_p99_ms": percentile(latencies, 99),
    }


def run(seconds: float, specialists: float, escalations: float) -> dict[str, Any]:
    fake = FakeLLM()
    fake.start()
    port = _port()
    url = f"http://127.0.0.1:{port}"
    phases: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        policy = write_policy(Path(folder), fake.base_url, "local")
        proc = start_server(policy, port)
        try:
            wait_ready(url, proc)
            fake.set_mode("slow", delay_s=0.3)
            asyncio.run(phase(url, 3, specialists, 1.0))  # warm-up
            phases["healthy"] = asyncio.run(phase(url, seconds, specialists, escalations))
            fake.set_mode("slow", delay_s=20.0)
            phases["slow_20s"] = asyncio.run(phase(url, seconds, specialists, escalations))
            fake.set_mode("down")
            phases["dead"] = asyncio.run(phase(url, seconds, specialists, escalations))
            breaker = httpx.get(f"{url}/readyz", timeout=10).json()["fallback"]
            phases["breaker_open_alone"] = sequential(url, 40) if breaker["breaker"] == "open" else None
        finally:
            stop_server(proc)
            fake.stop()
    base = phases["healthy"]["specialist_p99_ms"] or 1.0
    for name in ("slow_20s", "dead"):
        phases[name]["specialist_p99_vs_healthy"] = round(phases[name]["specialist_p99_ms"] / base, 2)
    return {
        "seconds_per_phase": seconds,
        "specialist_rps": specialists,
        "escalation_rps": escalations,
        "phases": phases,
        "breaker_after_dead_phase": breaker,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=40.0, help="Length of each phase.")
    parser.add_argument("--specialist-rps", type=float, default=12.0, help="Specialist messages per second.")
    parser.add_argument("--escalation-rps", type=float, default=3.0, help="Escalating messages per second.")
    parser.add_argument("--out", default=None, help="JSON file; '-' prints only.")
    args = parser.parse_args()
    report = run(args.seconds, args.specialist_rps, args.escalation_rps)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out != "-":
        out = Path(args.out) if args.out else RESULTS / "faults.json"
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
