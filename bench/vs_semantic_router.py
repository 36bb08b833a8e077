"""slm-router against semantic-router 1.1.1 on CLINC150, measured in one run: the same 151 routes (150
intents plus `other` = the out-of-scope train rows), the same encoder (slm-router's MiniLM wrapped as a
semantic-router DenseEncoder, nothing from the hub), the same texts, a local index. No test split is read.

    .venv/bin/python bench/vs_semantic_router.py --data ../shared/data            # ~3 min on 2 cores
    .venv/bin/python bench/vs_semantic_router.py --data ../shared/data --smoke    # ~1 min

- Accuracy on CLINC150 val, each router at its defaults: slm-router's linear head (what `auto` picks at 20+
  examples a route) with its thresholds; semantic-router's IndexedRouter, which has no threshold unless given
  one, so it always answers its top route and escalates only by choosing `other`.
- Batch-1 latency p50/p99, interleaved per text: `Router.decide_many([t])` (language check, encode, score,
  decide), semantic-router's `router(t)`, and the encoder forward alone (`embedder.encode([t])`), the floor
  both sit on.
- Throughput in chunks of 64: `decide_many(chunk)`; semantic-router 1.1.1 has no batch routing call
  (`__call__` takes one query), so its per-text loop, and `evaluate(chunk, labels)`, the one public call
  that embeds a batch at once (it returns only accuracy); and the encoder alone.
- Index build: both from the same route vectors (slm-router's on-disk cache; semantic-router's LocalIndex
  takes them through `add`), so neither build re-encodes 15,100 examples; the linear head's own fit is
  timed apart, as a cold start pays it (a warm one reads it from the cache).
`decide_many` routes texts as sent (`translate=False`), as semantic-router does; CLINC150 val is English.
Writes bench/results/vs_semantic_router.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import PrivateAttr
from semantic_router.encoders import DenseEncoder
from semantic_router.index import LocalIndex
from semantic_router.routers import IndexedRouter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from route_head import build  # routes_policy's 151 routes, RouteIndex timed

from slm_router.router import Router
from slm_router.router.core.embedder import Embedder
from slm_router.router.core.head import HeadSettings, RouteHead
from slm_router.router.ops.evaluation import read_rows

RESULTS = Path(__file__).resolve().parent / "results"
OOD_ROUTE = "other"  # routes_policy's ood_route: the out-of-scope train rows
CHUNK = 64
WARMUP = 10


class SharedEncoder(DenseEncoder):
    """slm-router's Embedder as a semantic-router encoder: both routers see the very same vectors. Returns
    lists, as semantic-router's own LocalEncoder does."""

    type: str = "slm-router"
    _embedder: Embedder = PrivateAttr()
    _known: dict[str, list[float]] = PrivateAttr(default_factory=dict)

    def __init__(self, embedder: Embedder) -> None:
        super().__init__(name=embedder.name)
        self._embedder = embedder

    def remember(self, texts: list[str]) -> None:
        """Encode `texts` in one batch now, for the accuracy pass (its decisions, not its speed, count)."""
        self._known = dict(zip(texts, self._embedder.encode(texts).tolist(), strict=True))

    def forget(self) -> None:
        self._known = {}

    def __call__(self, docs: list[Any]) -> list[list[float]]:
        if len(docs) == 1 and str(docs[0]) in self._known:
            return [self._known[str(docs[0])]]
        return self._embedder.encode([str(d) for d in docs]).tolist()


def slm_route(decision_code: str, route: str) -> str | None:
    """The route a decision serves; None when escalated. No route of this policy has an agent, so a
    chosen route comes back as `fallback_route`; low confidence or margin escalate; `other` is out of
    scope."""
    return route if decision_code == "fallback_route" and route != OOD_ROUTE else None


def sr_route(name: str | None) -> str | None:
    return None if name in (None, OOD_ROUTE) else name


def accuracy(top: list[str | None], routed: list[str | None], truth: list[str | None]) -> dict[str, float]:
    """Both routers scored alike; truth None is out of scope, routed None is escalated (no route, `other`)."""
    t = np.array([x or "" for x in truth], dtype=object)
    oos = t == ""
    served = np.array([x or "" for x in routed], dtype=object)
    return {
        "top_route_right": round(float((np.array(top, dtype=object) == t)[~oos].mean()), 4),
        "in_scope_accuracy": round(float((served == t)[~oos].mean()), 4),
        "in_scope_escalated": round(float((served == "")[~oos].mean()), 4),
        "oos_recall": round(float((served == "")[oos].mean()), 4),
    }


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3)


def _stats(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(np.mean(ms)), 3),
    }


def interleaved(calls: dict[str, Callable[[Any], object]], items: list[Any]) -> dict[str, list[float]]:
    """Each item through every call, the order rotating per item, so drift and caches hit all alike; ms."""
    names = list(calls)
    out: dict[str, list[float]] = {n: [] for n in names}
    for i, item in enumerate(items):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = time.perf_counter()
            calls[name](item)
            out[name].append((time.perf_counter() - start) * 1e3)
    return out


def measure(data: Path, smoke: bool, threads: int = 2) -> dict[str, Any]:
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    train_texts, train_intents = read_rows(data / "clinc150_train.jsonl")
    by_route: dict[str, list[str]] = defaultdict(list)
    for text, intent in zip(train_texts, train_intents, strict=True):
        by_route[OOD_ROUTE if intent == "oos" else intent].append(text)
    texts, intents = read_rows(data / "clinc150_val.jsonl")
    if smoke:  # every 5th row: every intent and some out-of-scope rows
        texts, intents = texts[::5], intents[::5]
    truth = [None if i == "oos" else i for i in intents]

    embedder = Embedder()
    embedder.load()
    policy, index, index_build_s = build(by_route, "linear", embedder)
    start = time.perf_counter()
    router = Router(policy, embedder=embedder)
    router_build_s = time.perf_counter() - start
    head_fit_s = None
    if not smoke:  # a cold start fits the head; build() above may have read it from the cache
        start = time.perf_counter()
        in_scope = np.array([r != OOD_ROUTE for r in index.routes])
        RouteHead(HeadSettings(c=policy.router.linear_c)).fit(index.vectors, index.labels, in_scope)
        head_fit_s = time.perf_counter() - start

    embeddings = index.vectors.tolist()  # what an encoder hands semantic-router
    names = [index.routes[i] for i in index.labels]
    start = time.perf_counter()
    sr_index = LocalIndex()
    sr_index.add(embeddings=embeddings, routes=names, utterances=index.texts)
    encoder = SharedEncoder(embedder)
    sr = IndexedRouter(encoder=encoder, index=sr_index)
    sr_build_s = time.perf_counter() - start
    if len(sr.routes) != len(index.routes):
        raise RuntimeError(f"semantic-router holds {len(sr.routes)} routes, slm-router {len(index.routes)}")

    def slm_one(text: str) -> object:
        return router.decide_many([text], translate=False)

    def sr_one(text: str) -> object:
        return sr(text)

    def raw_one(text: str) -> object:
        return embedder.encode([text])

    for text in texts[-WARMUP:]:  # first calls load models, start semantic-router's loop thread
        slm_one(text), sr_one(text), raw_one(text)

    # accuracy: the whole val set (smoke: a fifth) through each router's own decision
    slm_top: list[str | None] = []
    slm_routed: list[str | None] = []
    for i in range(0, len(texts), CHUNK):
        for r in router.decide_many(texts[i : i + CHUNK], translate=False):
            slm_top.append(r.scores.top)
            slm_routed.append(slm_route(r.decision.code, r.decision.route))
    encoder.remember(texts)  # semantic-router's own decision on the same vectors, without 3,100 forwards
    sr_names = [getattr(sr(t), "name", None) for t in texts]
    encoder.forget()
    acc = {
        "slm_router": accuracy(slm_top, slm_routed, truth),
        "semantic_router": accuracy(sr_names, [sr_route(n) for n in sr_names], truth),
    }

    n_latency = 20 if smoke else 150
    load_at_timing = os.getloadavg()  # this run's own threads count here too
    sample = texts[:: max(1, len(texts) // n_latency)][:n_latency]
    lat = interleaved({"slm_router": slm_one, "semantic_router": sr_one, "encoder_only": raw_one}, sample)
    latency = {name: _stats(ms) for name, ms in lat.items()}
    # where the rest goes: each scorer alone on the same vectors (semantic-router's is its index search)
    scoring = interleaved(
        {
            "slm_router_score": lambda v: router.index.score_many(v[None, :]),
            "semantic_router_index_query": lambda v: sr_index.query(v, top_k=sr.top_k),
        },
        list(embedder.encode(sample)),
    )
    latency.update({name: _stats(ms) for name, ms in scoring.items()})

    n_batch = 64 if smoke else 512
    batch = texts[:: max(1, len(texts) // n_batch)][:n_batch]
    labels = truth[:: max(1, len(truth) // n_batch)][:n_batch]
    chunks = [(batch[i : i + CHUNK], labels[i : i + CHUNK]) for i in range(0, len(batch), CHUNK)]
    spent = interleaved(
        {
            "slm_router": lambda c: router.decide_many(c[0], translate=False),
            "semantic_router_loop": lambda c: [sr(t) for t in c[0]],
            "semantic_router_evaluate": lambda c: sr.evaluate(c[0], c[1]),
            "encoder_only": lambda c: embedder.encode(c[0]),
        },
        chunks,
    )
    throughput = {name: round(len(batch) / (sum(ms) / 1e3), 1) for name, ms in spent.items()}
    load_after = os.getloadavg()
    router.close()

    p50 = {name: stats["p50_ms"] for name, stats in latency.items()}
    ratios = {
        "latency_p50_slm_over_encoder": _ratio(p50["slm_router"], p50["encoder_only"]),
        "latency_p50_semantic_router_over_encoder": _ratio(p50["semantic_router"], p50["encoder_only"]),
        "latency_p50_speedup_slm_vs_semantic_router": _ratio(p50["semantic_router"], p50["slm_router"]),
        **{
            f"throughput_{name}_over_encoder": _ratio(tps, throughput["encoder_only"])
            for name, tps in throughput.items()
            if name != "encoder_only"
        },
        **{
            f"throughput_speedup_slm_vs_{name}": _ratio(throughput["slm_router"], tps)
            for name, tps in throughput.items()
            if name.startswith("semantic_router")
        },
    }
    return {
        "smoke": smoke,
        "threads": threads,
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_at_start": [round(x, 2) for x in load_before],
            "load_avg_before_timing": [round(x, 2) for x in load_at_timing],
            "load_avg_after_timing": [round(x, 2) for x in load_after],
        },
        "versions": {
            pkg: version(pkg) for pkg in ("slm-router", "semantic-router", "torch", "sentence-transformers")
        },
        "data": {
            "encoder": embedder.name,
            "routes": len(index.routes),
            "route_examples": len(index.texts),
            "val_rows": len(texts),
            "val_oos_rows": sum(t is None for t in truth),
            "latency_texts": len(sample),
            "throughput_texts": len(batch),
            "chunk": CHUNK,
        },
        "index_build_s": {
            "slm_router_route_index": round(index_build_s, 2),
            "slm_router_router": round(router_build_s, 2),
            "slm_router_linear_head_fit": None if head_fit_s is None else round(head_fit_s, 1),
            "semantic_router_local_index": round(sr_build_s, 2),
            "route_examples_encode_estimate": round(len(index.texts) / throughput["encoder_only"], 1),
        },
        "accuracy_clinc150_val": acc,
        "latency_batch1": latency,
        "throughput_texts_per_s": throughput,
        "ratios": ratios,
    }


def table(result: dict[str, Any]) -> str:
    acc, lat = result["accuracy_clinc150_val"], result["latency_batch1"]
    tps, raw = result["throughput_texts_per_s"], result["latency_batch1"]["encoder_only"]
    rows = [
        f"{'':26}{'top right':>10}{'in-scope':>10}{'OOS rec':>9}{'p50 ms':>9}{'p99 ms':>9}{'texts/s':>9}",
        *(
            f"{label:26}{acc[key]['top_route_right']:>10.4f}{acc[key]['in_scope_accuracy']:>10.4f}"
            f"{acc[key]['oos_recall']:>9.4f}{lat[key]['p50_ms']:>9.2f}{lat[key]['p99_ms']:>9.2f}"
            f"{tps[tkey]:>9.1f}"
            for label, key, tkey in (
                ("slm-router", "slm_router", "slm_router"),
                ("semantic-router (loop)", "semantic_router", "semantic_router_loop"),
            )
        ),
        f"{'semantic-router evaluate':26}{'':47}{tps['semantic_router_evaluate']:>9.1f}",
        f"{'encoder only':26}{'':29}{raw['p50_ms']:>9.2f}{raw['p99_ms']:>9.2f}{tps['encoder_only']:>9.1f}",
        f"scoring alone p50 ms: slm-router {lat['slm_router_score']['p50_ms']}, semantic-router index "
        f"query {lat['semantic_router_index_query']['p50_ms']}",
        f"index build s: {result['index_build_s']}",
        f"ratios: {result['ratios']}",
        f"1-min load at start {result['machine']['load_avg_at_start'][0]} on {result['machine']['cpu_count']}"
        " cores: above ~1.5 on 2 another job shares them and the timings are not clean (later readings "
        "include this run's own threads)",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--smoke", action="store_true", help="620 val rows, 20 latency texts, 64 batched")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "vs_semantic_router.json")
    args = parser.parse_args()
    result = {
        "command": shlex.join([".venv/bin/python", "bench/vs_semantic_router.py", *sys.argv[1:]]),
        **measure(args.data, args.smoke, args.threads),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
