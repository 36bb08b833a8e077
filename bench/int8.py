"""The int8 ONNX encoder (`router.encoder: onnx-int8`) against fp32 torch: speed and routing accuracy.

    .venv/bin/python bench/int8.py --data ../shared/data            # ~5 min on 2 cores
    .venv/bin/python bench/int8.py --data ../shared/data --smoke    # CI: 40 texts, latency only, seconds

- Latency, both encoders in the same run, interleaved text by text (the order alternating) so a noisy
  neighbour slows both alike: batch-1 encode p50/p99 over 200 CLINC150 val texts, and texts/s encoding
  chunks of 64. Two torch threads and two onnxruntime threads (`--threads`): the target machine has two cores.
- Accuracy: CLINC150 with the route-head bench's own policy and metrics (`bench/route_head.py`: routes
  from train, `other` = the out-of-scope train rows, measured on val at default thresholds), once per
  encoder; plus how often the two pick the same top route and the cosine of their val vectors.
Nothing here reads a reserved test split. Writes bench/results/int8.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from route_head import clinc

from slm_router.router.core.embedder import Embedder

RESULTS = Path(__file__).resolve().parent / "results"
PT_PAIRS = Path(__file__).resolve().parents[1] / "tests" / "data" / "pt_support.jsonl"
THREADS = 2
CHUNK = 64


def _texts(data: Path | None, n: int) -> list[str]:
    """CLINC150 val texts spread over every intent; the English test messages where there is no data."""
    if data is not None and (data / "clinc150_val.jsonl").is_file():
        rows = [json.loads(line)["text"] for line in (data / "clinc150_val.jsonl").open(encoding="utf-8")]
    else:
        rows = [json.loads(line)["en"] for line in PT_PAIRS.open(encoding="utf-8") if line.strip()]
    rows = rows[:: max(1, len(rows) // n)]
    return (rows * (n // len(rows) + 1))[:n]


def _ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 3),
    }


def latency(encoders: dict[str, Embedder], single: list[str], batched: list[str]) -> dict[str, Any]:
    """Batch-1 and chunked encode time of each encoder, interleaved so both see the same machine."""
    names = list(encoders)
    for text in single[:10]:  # warm up: first passes allocate
        for embedder in encoders.values():
            embedder.encode([text])
    one: dict[str, list[float]] = {name: [] for name in names}
    for i, text in enumerate(single):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            encoders[name].encode([text])
            one[name].append(time.perf_counter() - start)
    total = dict.fromkeys(names, 0.0)
    for i, start_row in enumerate(range(0, len(batched), CHUNK)):
        chunk = batched[start_row : start_row + CHUNK]
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            encoders[name].encode(chunk)
            total[name] += time.perf_counter() - start
    out: dict[str, Any] = {"batch1_texts": len(single), "batched_texts": len(batched), "chunk": CHUNK}
    for name in names:
        out[name] = {**_ms(one[name]), "batched_texts_per_s": round(len(batched) / total[name], 1)}
    fp32, int8 = out["fp32"], out["int8"]
    out["int8_over_fp32"] = {
        "batch1_p50": round(int8["p50_ms"] / fp32["p50_ms"], 3),
        "batch1_p99": round(int8["p99_ms"] / fp32["p99_ms"], 3),
        "batched_throughput": round(int8["batched_texts_per_s"] / fp32["batched_texts_per_s"], 3),
    }
    print(f"latency: {out}", flush=True)
    return out


def accuracy(data: Path, encoders: dict[str, Embedder]) -> dict[str, Any]:
    """CLINC150 val per encoder with the route-head bench's policy and metrics, and how the two agree."""
    keys = ("top_route_right", "in_scope_accuracy", "oos_recall", "escalation_rate", "overall_accuracy")
    out: dict[str, Any] = {}
    states: dict[str, dict[str, Any]] = {}
    for name, embedder in encoders.items():
        per_classifier, states[name] = clinc(data, embedder, None)
        out[name] = {c: {k: m[k] for k in ("rows", *keys)} for c, m in per_classifier.items()}
    texts = states["fp32"]["texts"]
    cosine = np.sum(
        encoders["fp32"].encode_cached(texts, "eval") * encoders["int8"].encode_cached(texts, "eval"), axis=1
    )
    out["val_vector_cosine"] = {"min": round(float(cosine.min()), 4), "mean": round(float(cosine.mean()), 5)}
    for classifier in out["fp32"]:
        fp32_set, int8_set = (states[n]["scored"][classifier][2] for n in ("fp32", "int8"))
        same = fp32_set.probs.argmax(axis=1) == int8_set.probs.argmax(axis=1)
        out[f"int8_minus_fp32_{classifier}_points"] = {
            k: round(100 * (out["int8"][classifier][k] - out["fp32"][classifier][k]), 2) for k in keys
        }
        out[f"same_top_route_{classifier}"] = round(float(same.mean()), 4)
    print(f"accuracy: {out}", flush=True)
    return out


def measure(data: Path | None, smoke: bool, threads: int = THREADS) -> dict[str, Any]:
    """Latency always (smoke: 40 texts); CLINC150 accuracy when not smoke and the data is there."""
    torch.set_num_threads(threads)  # before the onnx session: it takes torch's thread count
    encoders = {"fp32": Embedder(), "int8": Embedder(encoder="onnx-int8")}
    for embedder in encoders.values():
        embedder.load()
    result: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": threads,
            "torch": version("torch"),
            "onnxruntime": version("onnxruntime"),
            "int8_model": encoders["int8"].name,
        },
        "smoke": smoke,
    }
    started = time.perf_counter()
    texts = _texts(data, 40 if smoke else 200)
    result["latency"] = latency(encoders, texts, texts if smoke else _texts(data, 20 * CHUNK))
    if not smoke:
        if data is None or not (data / "clinc150_val.jsonl").is_file():
            raise SystemExit(f"CLINC150 val not found under {data}; --smoke measures latency alone")
        result["clinc150_val"] = accuracy(data, encoders)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--smoke", action="store_true", help="40 texts, latency only.")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch and onnxruntime threads.")
    parser.add_argument("--out", type=Path, default=RESULTS / "int8.json")
    args = parser.parse_args()
    result = measure(args.data, args.smoke, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
