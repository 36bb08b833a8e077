"""Load test: a real `slm-router serve` at twice its measured capacity, every request's outcome counted.

    .venv/bin/python bench/load.py                          # local backend, 60 s at 2x
    .venv/bin/python bench/load.py --backend ray --seconds 30
    .venv/bin/python bench/load.py --seconds 8 --out -      # the short version the default tests run

1. Capacity: a closed loop (concurrency = server.max_in_flight) for `--capacity-seconds`; goodput in req/s.
2. Overload: an open loop at `--factor` x capacity for `--seconds`; arrivals do not wait for answers, as
   real clients do not. Every request carries a unique id in `metadata` and must come back exactly once:
   200 with its own id, or a refusal (429/503 with `Retry-After`). A request with no answer within the
   client timeout is *lost*; the goal is none.

Traffic is support messages (most go to the specialists) plus one in ten that escalates to a fake
OpenAI-compatible fallback on 127.0.0.1 answering in `--fallback-ms`. Writes bench/results/load[_ray].json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fake_llm import FakeLLM  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MESSAGES = [
    "Order #A12345 was charged $49.99 twice, please refund me at jane.doe@example.com",
    "I am really angry, my package arrived broken and nobody answers my emails!",
    "Olá, o meu pedido ainda não chegou. Podem verificar, por favor?",
    "Thank you so much, the replacement arrived quickly and works perfectly",
    "Ticket TCK-1234: customer email is john@acme.com, phone +1 415 555 0100",
    "The app keeps logging me out, this is so frustrating",
    "My tracking number 1Z999AA10123456784 shows no movement since Monday",
    "Great service, thanks for the quick refund!",
    "Quero cancelar a minha assinatura, por favor.",
    "What is the best way to grow tomatoes on a balcony?",  # escalates to the fallback
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_policy(folder: Path, fallback_url: str, backend: str, **fallback: Any) -> Path:
    """The packaged default policy, with the fake fallback (plus `fallback` settings) and the backend."""
    from slm_router.policies import DEFAULT_POLICY

    data = yaml.safe_load(Path(DEFAULT_POLICY).read_text())
    base = Path(DEFAULT_POLICY).parent
    for route in data["routes"].values():
        examples = route.get("examples", [])
        route["examples"] = [str(base / e) for e in ([examples] if isinstance(examples, str) else examples)]
    data["fallback"] |= {"kind": "openai", "base_url": fallback_url, "model": "fake"} | fallback
    data["hosting"]["backend"] = backend
    data["server"]["auth"] = "disabled"
    data["decision_log"] = {"enabled": False}
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_server(policy: Path, port: int) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("slm-router")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [str(exe), "serve", "-p", str(policy), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server not ready in time")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


class Outcomes:
    """One entry per request sent: what came back (or that nothing did)."""

    def __init__(self) -> None:
        self.status: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = {}
        self.retry_after_missing = 0
        self.mismatched = 0

    def add(self, kind: str, seconds: float) -> None:
        self.status[kind] += 1
        self.latency.setdefault(kind, []).append(seconds)


def client_limits(max_connections: int, max_keepalive: int | None = None) -> httpx.Limits:
    """httpx keeps an idle connection 5 s by default, exactly as long as `slm-router serve` does (uvicorn's
    `timeout_keep_alive=5`): a request sent on a connection the server is closing at that moment fails
    with RemoteProtocolError, a loss of the client's own making. Clients must let idle connections go
    sooner than the server does."""
    return httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_keepalive, keepalive_expiry=2.0
    )


async def one(client: httpx.AsyncClient, n: int, outcomes: Outcomes, timeout: float) -> None:
    start = time.perf_counter()
    body = {"text": MESSAGES[n % len(MESSAGES)], "metadata": {"request": n}}
    try:
        response = await client.post("/v1/route", json=body, timeout=timeout)
    except httpx.TimeoutException:
        outcomes.add("lost_timeout", time.perf_counter() - start)
        return
    except httpx.HTTPError as exc:
        outcomes.add(f"lost_{type(exc).__name__}", time.perf_counter() - start)
        return
    elapsed = time.perf_counter() - start
    if response.status_code == 200:
        if response.json().get("metadata", {}).get("request") != n:
            outcomes.mismatched += 1
    elif response.status_code in (429, 503) and "retry-after" not in response.headers:
        outcomes.retry_after_missing += 1
    outcomes.add(str(response.status_code), elapsed)


async def capacity(url: str, seconds: float, concurrency: int) -> float:
    """Goodput of a closed loop: each of `concurrency` clients sends its next request on an answer."""
    outcomes = Outcomes()
    stop = time.monotonic() + seconds
    counter = iter(range(10**9))
    async with httpx.AsyncClient(base_url=url, limits=client_limits(concurrency)) as client:

        async def worker() -> None:
            while time.monotonic() < stop:
                await one(client, next(counter), outcomes, 60)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return outcomes.status["200"] / elapsed


async def overload(url: str, rate: float, seconds: float, timeout: float) -> tuple[Outcomes, int, float]:
    """Open loop at `rate` req/s for `seconds`; returns the outcomes, how many were sent, and wall time."""
    outcomes = Outcomes()
    tasks: list[asyncio.Task[None]] = []
    async with httpx.AsyncClient(base_url=url, limits=client_limits(2000, 200)) as client:
        start = time.perf_counter()
        n = 0
        while (now := time.perf_counter() - start) < seconds:
            due = int(now * rate) + 1
            while n < due:
                tasks.append(asyncio.create_task(one(client, n, outcomes, timeout)))
                n += 1
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return outcomes, n, elapsed


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return (
        round(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000, 1)
        if len(values) > 1
        else round(values[0] * 1000, 1)
    )


def run(
    backend: str, seconds: float, capacity_s: float, factor: float, fallback_ms: float, timeout: float
) -> dict[str, Any]:
    fake = FakeLLM()
    fake.start()
    fake.set_mode("slow", delay_s=fallback_ms / 1000)
    port = _port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as folder:
        policy = write_policy(Path(folder), fake.base_url, backend, timeout_s=5)
        proc = start_server(policy, port)
        try:
            wait_ready(url, proc)
            conf = yaml.safe_load(policy.read_text())["server"]
            concurrency = int(conf.get("max_in_flight", 16))
            asyncio.run(capacity(url, 3, concurrency))  # warm-up
            goodput = asyncio.run(capacity(url, capacity_s, concurrency))
            rate = goodput * factor
            outcomes, sent, elapsed = asyncio.run(overload(url, rate, seconds, timeout))
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
        finally:
            stop_server(proc)
            fake.stop()
    answered = sum(outcomes.status.values())
    lost = sum(v for k, v in outcomes.status.items() if k.startswith("lost"))
    ok = outcomes.latency.get("200", [])
    refused = outcomes.status["429"] + outcomes.status["503"]
    return {
        "backend": backend,
        "capacity_rps": round(goodput, 1),
        "offered_rps": round(rate, 1),
        "seconds": seconds,
        "sent": sent,
        "outcomes": dict(sorted(outcomes.status.items())),
        "every_request_one_outcome": answered == sent and outcomes.mismatched == 0,
        "lost": lost,
        "mismatched": outcomes.mismatched,
        "refused": refused,
        "refused_without_retry_after": outcomes.retry_after_missing,
        "goodput_under_overload_rps": round(outcomes.status["200"] / elapsed, 1),
        "goodput_ratio_vs_capacity": round(outcomes.status["200"] / elapsed / goodput, 2),
        "accepted_p50_ms": percentile(ok, 50),
        "accepted_p99_ms": percentile(ok, 99),
        "refused_p99_ms": percentile(outcomes.latency.get("429", []) + outcomes.latency.get("503", []), 99),
        "shed_metric": [line for line in metrics.splitlines() if line.startswith("slm_router_shed_total")],
        "fallback_ms": fallback_ms,
        "machine": f"{os.cpu_count()} CPUs",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["local", "ray"], default="local")
    parser.add_argument("--seconds", type=float, default=60.0, help="Overload duration.")
    parser.add_argument("--capacity-seconds", type=float, default=10.0)
    parser.add_argument("--factor", type=float, default=2.0, help="Offered load as a multiple of capacity.")
    parser.add_argument("--fallback-ms", type=float, default=300.0)
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="Client timeout: past it a request is lost."
    )
    parser.add_argument("--out", default=None, help="JSON file; '-' prints only (default bench/results/).")
    args = parser.parse_args()
    report = run(
        args.backend, args.seconds, args.capacity_seconds, args.factor, args.fallback_ms, args.timeout
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.out != "-":
        out = Path(args.out) if args.out else RESULTS / f"load{'_ray' if args.backend == 'ray' else ''}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
