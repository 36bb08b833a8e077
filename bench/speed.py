"""Routing at the speed of the encoder: the decision and the Router's entry points against the raw forward
pass of the same encoder (same texts, batch and threads, interleaved in one run), and how that scales
with the number of routes and of concurrent callers.

    .venv/bin/python -m bench.speed --data ../shared/data          # ~3 min on 2 cores
    .venv/bin/python -m bench.speed --smoke                        # seconds: packaged routes only

- Decision: `Router.decide_many` (guard, language id, embed, score, decide; no agent) at batch 1 and in
  chunks of 64, against `Embedder.encode` on the same texts; `Router.batch`/`abatch` (the whole graph,
  through the batch lane) and `invoke` one by one on the same chunks. Routes: CLINC150 train (150 intents +
  `other`, 151 routes, linear head) measured on CLINC150 val texts; without data, the packaged routes.
- Default policy (every specialist): `Router.invoke` on support messages, and `Router.batch` on them.
- Routes: 10, 150 and 1,000 routes. The 1,000 are synthesised from real intents: every CLINC150 and
  Banking77 train intent is cut into sub-routes of its own utterances (hash order), in proportion to its
  size (20-35 examples each, 25k in all), so a route is a real intent's slice; the 1,000-route set is
  measured with the linear head only (what `auto` picks there).
- Concurrency: 1 to 64 threads calling `Router.invoke` (default policy), and a pyinstrument profile of
  one caller, summarised as the functions with the most own time.
Writes bench/results/speed.json.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.route_head import routes_policy
from bench.section import section_main
from slm_router.policies import Policy, load_policy
from slm_router.router import Router
from slm_router.router.core.index import load_utterances

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 64

SUPPORT = [
    "My order 48213 never arrived and nobody answers my emails",
    "I love the new headphones, the sound is amazing",
    "Translate to Portuguese: where is my package?",
    "Please find the order number and email in: order 77120, contact maria@example.com",
    "The blender broke after two days, I am really disappointed",
    "Can you translate 'thank you for your patience' into Portuguese?",
    "Great service, the refund came quickly",
    "Extract the names: John Smith called about invoice 5521",
]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def _stable(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _ms(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values) * 1000
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
    }


def _timed(call: Callable[..., object], *args: Any) -> float:
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def clinc_routes(data: Path) -> dict[str, list[str]]:
    by_route: dict[str, list[str]] = defaultdict(list)
    for row in _jsonl(data / "clinc150_train.jsonl"):
        by_route["other" if row["intent"] == "oos" else row["intent"]].append(row["text"])
    return dict(by_route)


def synthetic_routes(data: Path, count: int) -> dict[str, list[str]]:
    """`count` routes cut from the CLINC150 and Banking77 train intents, each intent into slices of its own
    utterances in proportion to its size (at least one each; largest remainders get the spare slices)."""
    intents: dict[str, list[str]] = defaultdict(list)
    for row in _jsonl(data / "clinc150_train.jsonl"):
        if row["intent"] != "oos":
            intents[f"clinc/{row['intent']}"].append(row["text"])
    for row in _jsonl(data / "banking77_train.jsonl"):
        intents[f"banking/{row['intent']}"].append(row["text"])
    ordered = {name: sorted(dict.fromkeys(texts), key=_stable) for name, texts in sorted(intents.items())}
    total = sum(len(v) for v in ordered.values())
    share = {name: len(texts) * count / total for name, texts in ordered.items()}
    parts = {name: max(1, int(s)) for name, s in share.items()}
    spare = sorted(share, key=lambda n: share[n] - int(share[n]), reverse=True)
    for name in spare[: max(0, count - sum(parts.values()))]:
        parts[name] += 1
    return {
        f"{name}/{k}": texts[k :: parts[name]] for name, texts in ordered.items() for k in range(parts[name])
    }


def routing_router(by_route: dict[str, list[str]], classifier: str = "auto") -> Router:
    return Router(routes_policy(by_route, classifier))


def decision(router: Router, texts: list[str]) -> dict[str, Any]:
    """Batch 1, interleaved text by text: the raw forward, the decision, and `invoke`."""
    for text in texts[:10]:
        router.decide_many([text])
        router.invoke(text)
    raw, decided, invoked = [], [], []
    for text in texts:
        raw.append(_timed(router.embedder.encode, [text]))
        decided.append(_timed(router.decide_many, [text]))
        invoked.append(_timed(router.invoke, text))
    out = {"texts": len(texts), "raw_forward": _ms(raw), "decide": _ms(decided), "invoke": _ms(invoked)}
    for name in ("decide", "invoke"):
        out[f"{name}_over_raw_p50"] = round(out[name]["p50_ms"] / out["raw_forward"]["p50_ms"], 3)
        out[f"{name}_over_raw_p99"] = round(out[name]["p99_ms"] / out["raw_forward"]["p99_ms"], 3)
    return out


def batched(router: Router, texts: list[str], rounds: int) -> dict[str, Any]:
    """Texts per second in chunks of 64: each entry point runs the same chunk in turn (the order rotates
    from chunk to chunk: the encoder's speed drifts with what ran just before), `rounds` times."""
    chunks = [texts[i : i + CHUNK] for i in range(0, len(texts), CHUNK)]
    ways: dict[str, Callable[[list[str]], object]] = {
        "raw_forward": router.embedder.encode,
        "decide_many": router.decide_many,
        "batch": router.batch,
        "abatch": lambda chunk: asyncio.run(router.abatch(chunk)),  # type: ignore[arg-type]
        "invoke_each": lambda chunk: [router.invoke(t) for t in chunk],
    }
    for way in ways.values():
        way(chunks[0][:8])
    spent: dict[str, float] = defaultdict(float)
    names = list(ways)
    for r in range(rounds):
        for n, chunk in enumerate(chunks):
            shift = (r * len(chunks) + n) % len(names)  # each way runs first, and after each other, as often
            for name in names[shift:] + names[:shift]:
                spent[name] += _timed(ways[name], chunk)
    n = rounds * len(texts)
    out: dict[str, Any] = {"texts": n, "chunk": CHUNK}
    for name in ways:
        out[f"{name}_per_s"] = round(n / spent[name], 1)
        out[f"{name}_over_raw"] = round(spent["raw_forward"] / spent[name], 3)
    return out


def route_scaling(data: Path | None, texts: list[str], smoke: bool) -> dict[str, Any]:
    """Batch-1 decision and batched decisions at 10, 150 and 1,000 routes (linear head and kNN)."""
    if data is None:
        return {"skipped": "needs --data (CLINC150 and Banking77 train)"}
    clinc = clinc_routes(data)
    other = {"other": clinc["other"]}  # CLINC150's out-of-scope train rows: the ood_route of every set
    sets = {10: {k: clinc[k] for k in sorted(clinc)[:10]} | other, 150: clinc}
    if not smoke:
        sets[1000] = synthetic_routes(data, 999) | other
    sample = texts[: 40 if smoke else 150]
    out: dict[str, Any] = {}
    for count, by_route in sets.items():
        for classifier in ("linear", "knn") if count < 1000 else ("linear",):
            start = time.perf_counter()
            router = routing_router(by_route, classifier)
            router.index  # noqa: B018 (built in the constructor: this is its cost)
            build_s = time.perf_counter() - start
            one = decision(router, sample[:60])
            many = batched(router, sample, rounds=1)
            out[f"{count}/{classifier}"] = {
                "routes": len(router.routes),
                "examples": sum(router.index.example_counts().values()),
                "build_s": round(build_s, 1),
                "decide_p50_ms": one["decide"]["p50_ms"],
                "decide_over_raw_p50": one["decide_over_raw_p50"],
                "decide_many_over_raw": many["decide_many_over_raw"],
            }
            router.close()
            print(f"routes {count} {classifier}: {out[f'{count}/{classifier}']}", flush=True)
    return out


def concurrency(router: Router, texts: list[str], levels: Sequence[int], per_level: int) -> dict[str, Any]:
    """Threads calling `invoke` (the embedder and the agents micro-batch concurrent callers)."""
    out: dict[str, Any] = {}
    for level in levels:
        work = [texts[i % len(texts)] for i in range(max(per_level, level))]
        start = time.perf_counter()
        with ThreadPoolExecutor(level) as pool:
            latencies = list(pool.map(partial(_timed, router.invoke), work))
        wall = time.perf_counter() - start
        out[str(level)] = {"requests": len(work), "req_per_s": round(len(work) / wall, 1), **_ms(latencies)}
        print(f"concurrency {level}: {out[str(level)]}", flush=True)
    return out


def profile(router: Router, texts: list[str], top: int = 12) -> dict[str, Any]:
    """Where one caller's `invoke` spends its time: own time per function, summed over the calls."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    for text in texts:
        router.invoke(text)
    profiler.stop()
    session = profiler.last_session
    assert session is not None
    own: dict[str, float] = defaultdict(float)
    stack = [session.root_frame()]
    while stack:
        frame = stack.pop()
        if frame is None:
            continue
        stack.extend(frame.children)
        if not frame.is_synthetic and frame.total_self_time:  # self time sits in synthetic children
            own[f"{frame.function} ({frame.file_path_short}:{frame.line_no})"] += frame.total_self_time
    total = sum(own.values()) or 1.0
    ranked = sorted(own.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return {
        "calls": len(texts),
        "ms_per_call": round(session.duration * 1000 / len(texts), 2),
        "own_time_share": {name: round(t / total, 3) for name, t in ranked},
    }


def measure(data: Path | None, smoke: bool, threads: int = 2) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    out: dict[str, Any] = {"threads": threads, "smoke": smoke}
    if data is not None:
        val = [r["text"] for r in _jsonl(data / "clinc150_val.jsonl")]
        texts = sorted(val, key=_stable)[: 128 if smoke else 512]
        routing = routing_router(clinc_routes(data))
        out["routes"] = f"CLINC150 train: {len(routing.routes)} routes, classifier {routing.index.classifier}"
    else:
        policy = load_policy().model_copy(deep=True)
        policy.fallback.enabled = False
        routing = Router(policy)
        texts = [u for texts in load_utterances(policy).values() for u in texts][: 128 if smoke else 512]
        out["routes"] = "packaged routes (no --data)"
    routing.warmup()
    out["decision"] = decision(routing, texts[: 40 if smoke else 300])
    print(f"decision: {out['decision']}", flush=True)
    out["batched"] = batched(routing, texts, rounds=1 if smoke else 2)
    print(f"batched: {out['batched']}", flush=True)
    routing.close()

    default = _default_router()
    support = SUPPORT * (2 if smoke else 16)
    out["default_policy"] = {
        "decision": decision(default, support[: 16 if smoke else 120]),
        "batched": batched(default, support, rounds=1),
    }
    print(f"default policy: {out['default_policy']}", flush=True)
    out["concurrency"] = concurrency(
        default, support, (1, 4) if smoke else (1, 4, 16, 64), 16 if smoke else 128
    )
    out["profile"] = profile(default, support[: 16 if smoke else 100])
    default.close()
    out["route_scaling"] = route_scaling(data, texts, smoke)
    return out


def _default_router() -> Router:
    """The packaged policy with every specialist, its fallback off (this measures the small-model path)."""
    policy: Policy = load_policy().model_copy(deep=True)
    policy.fallback.enabled = False
    router = Router(policy)
    router.warmup()
    return router


def main() -> None:
    section_main(measure, __doc__, RESULTS / "speed.json", "../shared/data (CLINC150, Banking77 train)")


if __name__ == "__main__":
    main()
