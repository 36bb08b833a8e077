"""Serving benchmark: throughput and p50/p99 of POST /v1/route for the local and the Ray backend.

    .venv/bin/python bench/serving.py                       # both backends, concurrency 1, 8, 32
    .venv/bin/python bench/serving.py --tune-wait 0,0.002,0.005,0.01   # Ray @serve.batch wait, at c=32

Each backend runs as a real `slm-router serve` process on 127.0.0.1 (auth disabled: loopback only); the
load comes from this process with httpx, a bounded number of requests per level. The messages go to the
specialists (not the fallback), so the figures measure the small-model path. Ray overhead is reported as a
ratio against the local backend measured in the same run. Writes bench/results/serving.json.
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
import time
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).resolve().parent / "results"
MESSAGES = [
    "Order #A12345 was charged $49.99 twice, please refund me at jane.doe@example.com",
    "I am really angry, my package arrived broken and nobody answers my emails!",
    "Olá, o meu pedido ainda não chegou. Podem verificar, por favor?",
    "Thank you so much, the replacement arrived quickly and works perfectly",
    "Ticket TCK-1234: customer email is john@acme.com, phone +1 415 555 0100",
    "Quero cancelar a minha assinatura, por favor.",
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    backend: str,
    port: int,
    wait_s: float | None,
    policy: Path | None = None,
    threads: int | None = None,
    settings: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`settings`: more `SLM_ROUTER__...` environment overrides of the policy."""
    env = {**os.environ, "SLM_ROUTER__SERVER__AUTH": "disabled", "HF_HUB_OFFLINE": "1", **(settings or {})}
    if wait_s is not None:
        env["SLM_ROUTER__HOSTING__BATCH_WAIT_TIMEOUT_S"] = str(wait_s)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    exe = Path(sys.executable).with_name("slm-router")
    chosen = ["--policy", str(policy)] if policy else []
    return subprocess.Popen(
        [str(exe), "serve", *chosen, "--backend", backend, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server not ready in time")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


async def load(url: str, concurrency: int, requests: int, messages: list[str] = MESSAGES) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    queue = iter(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in queue:
            t = time.perf_counter()
            response = await client.post("/v1/route", json={"text": messages[i % len(messages)]})
            latencies.append((time.perf_counter() - t) * 1000)
            errors += response.status_code != 200

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await client.post("/v1/route", json={"text": messages[0]})  # warm the connection
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": errors,
        "throughput_rps": round(requests / wall, 1),
        "p50_ms": round(statistics.median(ordered), 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
    }


def run_backend(
    backend: str, levels: list[int], requests: int, wait_s: float | None = None
) -> dict[str, Any]:
    port = _port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(backend, port, wait_s)
    try:
        ready_s = wait_ready(url, proc)
        rows = [asyncio.run(load(url, c, requests)) for c in levels]
    finally:
        stop_server(proc)
    return {"backend": backend, "batch_wait_timeout_s": wait_s, "ready_s": round(ready_s, 1), "levels": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--requests", type=int, default=160, help="requests per concurrency level")
    parser.add_argument("--backends", default="local,ray")
    parser.add_argument(
        "--tune-wait", default="", help="comma-separated @serve.batch waits to compare (ray, c=32)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    report: dict[str, Any] = {"cpu_threads": os.cpu_count(), "messages": MESSAGES}
    runs = {b: run_backend(b, levels, args.requests) for b in args.backends.split(",")}
    report["runs"] = runs
    if "local" in runs and "ray" in runs:
        report["ray_vs_local"] = [
            {
                "concurrency": lo["concurrency"],
                "throughput_ratio": round(ra["throughput_rps"] / lo["throughput_rps"], 2),
                "p50_ratio": round(ra["p50_ms"] / lo["p50_ms"], 2),
                "p99_ratio": round(ra["p99_ms"] / lo["p99_ms"], 2),
            }
            for lo, ra in zip(runs["local"]["levels"], runs["ray"]["levels"], strict=True)
        ]
    if args.tune_wait:
        report["ray_batch_wait_tuning"] = [
            run_backend("ray", [32], args.requests, float(w))["levels"][0]
            | {"batch_wait_timeout_s": float(w)}
            for w in args.tune_wait.split(",")
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "messages"}, indent=2))


if __name__ == "__main__":
    main()
