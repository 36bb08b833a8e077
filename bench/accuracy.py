"""Route accuracy and sentiment accuracy on public validation data the router and head were not fit on.

    .venv/bin/python bench/accuracy.py --data ../shared/data

Route sets (expected route after the full decision: language rule, OOD, thresholds):
- CLINC150 val, intent `translate` -> translate; every other in-scope intent -> other (general questions the
  fallback answers); `oos` -> other (via the OOD flag or the `other` route). Route examples come only from
  CLINC150 *train*.
- Tatoeba en-pt dev, Portuguese side -> translate (the non-native language rule, decided on the text as it
  is: `decide_many(translate=False)`; translate-then-route is measured in bench/route_head.py).
Sentiment: the head's held-out 10% bucket of SST train (by text hash; never trained or calibrated on) and of
the hand-written support set.
Writes bench/results/accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from slm_router.agents.base import AgentInput
from slm_router.router import Router
from slm_router.router.core.calibration import expected_calibration_error
from slm_router.router.ops.training import f1_scores, read_labelled, split_of

RESULTS = Path(__file__).resolve().parent / "results"
SUPPORT = Path(__file__).resolve().parents[1] / "agents" / "data" / "support_sentiment.jsonl"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def route_report(router: Router, texts: list[str], expected: list[str]) -> dict:
    start = time.perf_counter()
    routed = router.decide_many(texts, translate=False)
    seconds = time.perf_counter() - start
    chosen = [r.decision.route for r in routed]
    correct = np.array([c == e for c, e in zip(chosen, expected, strict=True)], dtype=float)
    confidence = np.array([r.scores.probabilities.get(r.decision.route, 0.0) for r in routed])
    escalated = [r.decision.action != "specialist" for r in routed]
    return {
        "rows": len(texts),
        "accuracy": round(float(correct.mean()), 4),
        "escalation_rate": round(float(np.mean(escalated)), 4),
        "ece": round(expected_calibration_error(confidence, correct), 4),
        "routed_to": dict(Counter(chosen)),
        "texts_per_second": round(len(texts) / seconds, 1),
    }


def sentiment_report(router: Router, path: Path) -> dict:
    rows = [(t, y) for t, y in read_labelled(path) if split_of(t) == "test"]
    agent = router.pool
    results = agent.run("sentiment", [AgentInput(text=t) for t, _ in rows])
    pred = [r.output for r in results]
    gold = [y for _, y in rows]
    correct = np.array([p == g for p, g in zip(pred, gold, strict=True)], dtype=float)
    f1 = f1_scores(gold, pred, sorted(set(gold)))
    return {
        "rows": len(rows),
        "accuracy": round(float(correct.mean()), 4),
        "macro_f1": f1.macro,
        "per_class_f1": f1.per_class,
        "ece": round(expected_calibration_error(np.array([r.confidence for r in results]), correct), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=RESULTS / "accuracy.json")
    args = parser.parse_args()

    router = Router.from_policy()
    clinc = _jsonl(args.data / "clinc150_val.jsonl")
    in_scope = [r for r in clinc if r["intent"] != "oos"]
    oos = [r for r in clinc if r["intent"] == "oos"]
    tatoeba = _jsonl(args.data / "dev_translation_en-pt.jsonl")
    report = {
        "routes": {
            "clinc150_val_in_scope": route_report(
                router,
                [r["text"] for r in in_scope],
                ["translate" if r["intent"] == "translate" else "other" for r in in_scope],
            ),
            "clinc150_val_translate_intent": route_report(
                router,
                [r["text"] for r in in_scope if r["intent"] == "translate"],
                ["translate"] * sum(r["intent"] == "translate" for r in in_scope),
            ),
            "clinc150_val_oos": route_report(router, [r["text"] for r in oos], ["other"] * len(oos)),
            "tatoeba_pt": route_report(router, [r["pt"] for r in tatoeba], ["translate"] * len(tatoeba)),
        },
        "sentiment": {
            "sst_heldout": sentiment_report(router, args.data / "sentiment_train.jsonl"),
            "support_heldout": sentiment_report(router, SUPPORT),
        },
        "router_calibration_on_examples": router.index.calibration.model_dump(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
