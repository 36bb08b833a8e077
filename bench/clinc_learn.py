"""The learning flywheel on CLINC150: a router seeded with a few examples per intent sees the rest of the
train split as traffic; the requests it escalates are labelled (operator labels: the gold intent) and learned
as new route examples (`router.learning.compare`, what `slm-router learn --labels` runs). Measured on the
validation split before and after, against a baseline that learns the same number of random traffic rows.

    .venv/bin/python bench/clinc_learn.py --data ../shared/data --seed-examples 10

Writes bench/results/clinc_learn.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from slm_router.policies import DEFAULT_POLICY, policy_from_dict
from slm_router.router.core.embedder import Embedder
from slm_router.router.core.index import RouteIndex
from slm_router.router.ops.evaluation import policy_ood_threshold, policy_thresholds, read_rows, score
from slm_router.router.ops.learning import Example, compare
from slm_router.router.ops.tuning import OOD, Target, escalated, evaluate

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("in_scope_accuracy", "escalation_rate", "routed_accuracy", "oos_recall", "ece")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seed-examples", type=int, default=10, help="Examples per intent to start from.")
    args = parser.parse_args()

    by_intent: dict[str, list[str]] = defaultdict(list)
    for line in (args.data / "clinc150_train.jsonl").open(encoding="utf-8"):
        row = json.loads(line)
        by_intent["other" if row["intent"] == "oos" else row["intent"]].append(row["text"])
    seed = {name: texts[: args.seed_examples] for name, texts in sorted(by_intent.items())}
    traffic = [(t, name) for name, texts in sorted(by_intent.items()) for t in texts[args.seed_examples :]]
    policy = policy_from_dict(
        {
            "routes": {name: {"utterances": texts} for name, texts in seed.items()},
            "router": {"ood_route": "other", "ood_threshold": 0.3},
            "languages": {"non_native_route": None},
            "fallback": {"enabled": False},
        },
        base_dir=DEFAULT_POLICY.parent,
    )
    embedder = Embedder()
    index = RouteIndex.from_policy(policy, embedder)
    texts, routes = zip(*traffic, strict=True)
    seen = score(list(texts), list(routes), policy, index, embedder)
    thresholds = policy_thresholds(policy, seen.routes)
    on_traffic = evaluate(seen, thresholds, policy_ood_threshold(policy, seen), Target("max_escalation", 1.0))
    sent_on = escalated(seen, thresholds, policy_ood_threshold(policy, seen))
    picked = [traffic[i] for i in np.flatnonzero(sent_on & (seen.labels != OOD))]
    random_rows = random.Random(0).sample(traffic, len(picked))
    heldout = read_rows(args.data / "clinc150_val.jsonl")
    out: dict[str, object] = {
        "seed_examples_per_route": args.seed_examples,
        "routes": len(seed),
        "traffic_rows": len(traffic),
        "traffic_escalation_rate": round(on_traffic.escalation_rate, 4),
        "learned_rows": len(picked),
        "heldout_rows": len(heldout[0]),
    }
    for name, rows in (("escalations", picked), ("random_traffic", random_rows)):
        start = time.perf_counter()
        result, _ = compare(
            policy, [Example(text=t, route=r, source="operator") for t, r in rows], embedder, heldout
        )
        out[f"learn_{name}"] = {
            "refit_and_eval_s": round(time.perf_counter() - start, 1),
            "before": {k: getattr(result.before, k) for k in KEYS},
            "after": {k: getattr(result.after, k) for k in KEYS},
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "clinc_learn.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
