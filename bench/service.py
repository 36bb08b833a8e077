"""The HTTP service against the router in the same run: POST /v1/route at batch 1 against `Router.invoke`
in this process, POST /v1/route/batch against the raw encoder forward, and /v1/route under 1 to 64
concurrent callers.

    .venv/bin/python -m bench.service --data ../shared/data     # ~2 min on 2 cores
    .venv/bin/python -m bench.service --smoke                   # seconds, packaged routes

A real `slm-router serve` process on 127.0.0.1 (local backend, auth off: loopback only). Two policies: a
routing-only one (the CLINC150 train routes with --data, else the packaged routes with the fallback off),
which measures the router's own cost through HTTP, and the default policy (every specialist), which
measures the small-model path. The load generator shares the 2 cores with the server; the batch-1 and
batch figures alternate so that the two never run at once. Writes bench/results/service.json.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.route_head import routes_policy_dict
from bench.section import section_main
from bench.serving import _port, load, start_server, stop_server, wait_ready
from bench.speed import SUPPORT, clinc_routes
from slm_router.policies import DEFAULT_POLICY, load_policy, policy_from_dict
from slm_router.router import Router
from slm_router.router.core.index import load_utterances

RESULTS = Path(__file__).resolve().parent / "results"


def _interleaved(url: str, router: Any, texts: list[str]) -> dict[str, Any]:
    """Batch 1, one after the other on an idle machine: POST /v1/route, then `Router.invoke` in this
    process on the same text (same policy, both warm)."""
    served, local = [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        for text in texts[:5]:
            client.post("/v1/route", json={"text": text}).raise_for_status()
            router.invoke(text)
        for text in texts:
            start = time.perf_counter()
            client.post("/v1/route", json={"text": text}).raise_for_status()
            mid = time.perf_counter()
            router.invoke(text)
            local.append(time.perf_counter() - mid)
            served.append(mid - start)
    p50 = statistics.median(served) * 1000, statistics.median(local) * 1000
    return {
        "requests": len(texts),
        "http_p50_ms": round(p50[0], 2),
        "invoke_p50_ms": round(p50[1], 2),
        "http_over_invoke_p50": round(p50[0] / p50[1], 3),
    }


def _batch_throughput(url: str, router: Any, texts: list[str], chunk: int = 64) -> dict[str, Any]:
    """Texts/s of POST /v1/route/batch against the raw encoder forward in this process (same threads,
    same chunks), alternating chunk by chunk so the server and this process never compete."""
    chunks = [texts[i : i + chunk] for i in range(0, len(texts), chunk)]
    served = raw = 0.0
    with httpx.Client(base_url=url, timeout=120) as client:
        client.post("/v1/route/batch", json={"requests": [{"text": t} for t in chunks[0]]}).raise_for_status()
        router.embedder.encode(chunks[0])
        for part in chunks:
            start = time.perf_counter()
            answer = client.post("/v1/route/batch", json={"requests": [{"text": t} for t in part]})
            mid = time.perf_counter()
            router.embedder.encode(part)
            raw += time.perf_counter() - mid
            served += mid - start
            answer.raise_for_status()
    return {
        "texts": len(texts),
        "chunk": chunk,
        "batch_endpoint_per_s": round(len(texts) / served, 1),
        "raw_forward_per_s": round(len(texts) / raw, 1),
        "batch_endpoint_over_raw": round(raw / served, 3),
    }


def measure(data: Path | None, smoke: bool, threads: int = 2) -> dict[str, Any]:
    """The HTTP service against the router in this process, same run: a routing-only policy (CLINC150
    routes with --data, else the packaged routes without agents' answers) and the default policy."""
    import torch

    torch.set_num_threads(threads)
    out: dict[str, Any] = {"threads": threads}
    with tempfile.TemporaryDirectory(prefix="slm-bench-") as tmp:
        if data is not None:
            spec = routes_policy_dict(clinc_routes(data), "auto")
            rows = (data / "clinc150_val.jsonl").open(encoding="utf-8")
            texts = [json.loads(line)["text"] for line in rows]
            path: Path | None = Path(tmp) / "routing.yaml"
            path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
            routing = Router(policy_from_dict(spec, base_dir=DEFAULT_POLICY.parent))
            out["routing_policy"] = "CLINC150 train, 151 routes"
        else:
            path, policy = None, load_policy().model_copy(deep=True)
            policy.fallback.enabled = False
            routing = Router(policy)
            texts = [u for texts in load_utterances(policy).values() for u in texts]
            out["routing_policy"] = "packaged routes, fallback off"
        texts = texts[:: max(1, len(texts) // (128 if smoke else 1024))]
        routing.warmup()
        levels = (1, 8) if smoke else (1, 8, 64)
        out["routing"] = _serve(
            path,
            threads,
            lambda url: {
                "single": _interleaved(url, routing, texts[: 30 if smoke else 200]),
                "batch": _batch_throughput(url, routing, texts),
                "concurrency": [asyncio.run(load(url, c, 32 if smoke else 160, texts)) for c in levels],
            },
            {"SLM_ROUTER__FALLBACK__ENABLED": "false"},
        )
        routing.close()
    default = Router.from_policy()
    default.warmup()
    out["default"] = _serve(
        None, threads, lambda url: {"single": _interleaved(url, default, SUPPORT * (2 if smoke else 12))}
    )
    default.close()
    return out


def _serve(
    policy: Path | None,
    threads: int,
    run: Callable[[str], dict[str, Any]],
    settings: dict[str, str] | None = None,
) -> dict[str, Any]:
    port = _port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server("local", port, None, policy, threads, settings)
    try:
        ready_s = wait_ready(url, proc)
        return {"ready_s": round(ready_s, 1), **run(url)}
    finally:
        stop_server(proc)


def main() -> None:
    section_main(measure, __doc__, RESULTS / "service.json", "../shared/data (CLINC150 train and val)")


if __name__ == "__main__":
    main()
