"""CLINC150: routes built only from the train split (150 intents + `other` from oos_train), evaluated on the
validation split; thresholds tuned for a target on half of it and reported on the other half.

    .venv/bin/python bench/clinc_tune.py --data ../shared/data --max-escalation 0.2

Writes bench/results/clinc_tune.json and the pictures bench/results/clinc_{curve,confusion,reliability}.png;
`--policy-out FILE` also writes the CLINC policy (train utterances inline: keep it out of the repository),
for `slm-router eval ../shared/data/clinc150_val.jsonl -p FILE`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import yaml

from slm_router.policies import DEFAULT_POLICY, policy_from_dict
from slm_router.router.core.embedder import Embedder
from slm_router.router.core.index import RouteIndex
from slm_router.router.ops.evaluation import (
    policy_ood_threshold,
    policy_thresholds,
    read_rows,
    report,
    score,
    split,
)
from slm_router.router.ops.report import plot_confusion, plot_curve, plot_reliability
from slm_router.router.ops.tuning import Target, evaluate, tune

RESULTS = Path(__file__).resolve().parent / "results"


def clinc_policy(train: Path) -> dict:
    by_intent: dict[str, list[str]] = defaultdict(list)
    for line in train.open(encoding="utf-8"):
        row = json.loads(line)
        by_intent["other" if row["intent"] == "oos" else row["intent"]].append(row["text"])
    routes = {name: {"utterances": texts, "threshold": 0.5} for name, texts in sorted(by_intent.items())}
    return {
        "routes": routes,
        "router": {"ood_route": "other", "ood_threshold": 0.3},
        "languages": {"non_native_route": None},
        "fallback": {"enabled": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--max-escalation", type=float, default=0.2)
    parser.add_argument("--policy-out", type=Path, help="Also write the CLINC policy YAML here.")
    args = parser.parse_args()

    policy_data = clinc_policy(args.data / "clinc150_train.jsonl")
    policy = policy_from_dict(policy_data, base_dir=DEFAULT_POLICY.parent)
    if args.policy_out:
        args.policy_out.write_text(yaml.safe_dump(policy_data, sort_keys=False, allow_unicode=True))
    embedder = Embedder()
    start = time.perf_counter()
    index = RouteIndex.from_policy(policy, embedder)
    build_s = time.perf_counter() - start
    texts, routes = read_rows(args.data / "clinc150_val.jsonl")
    start = time.perf_counter()
    data = score(texts, routes, policy, index, embedder)
    score_s = time.perf_counter() - start
    before, _ = report(data, policy)

    tuning, held = split(data)
    target = Target("max_escalation", args.max_escalation)
    start = time.perf_counter()
    result = tune(tuning, target)
    tune_s = time.perf_counter() - start
    on_report = evaluate(held, result.chosen.thresholds, result.chosen.ood_threshold, target)
    baseline = evaluate(
        held, policy_thresholds(policy, held.routes), policy_ood_threshold(policy, held), target
    )
    RESULTS.mkdir(exist_ok=True)
    before_on_tuning = evaluate(
        tuning, policy_thresholds(policy, tuning.routes), policy_ood_threshold(policy, tuning), target
    )
    plot_curve(result, before_on_tuning, RESULTS / "clinc_curve.png")  # the curve is on the tuning split
    plot_confusion(data, RESULTS / "clinc_confusion.png")
    plot_reliability(data, before.ece, RESULTS / "clinc_reliability.png")
    out = {
        "routes": len(index.routes),
        "route_examples": len(index.texts),
        "val_rows": len(texts),
        "index_build_s": round(build_s, 1),
        "scoring_s": round(score_s, 1),
        "tune_s": round(tune_s, 3),
        "eval_default_policy": before.model_dump(exclude={"per_route"}),
        "worst_routes_f1": {
            name: s.f1 for name, s in sorted(before.per_route.items(), key=lambda kv: kv[1].f1)[:5]
        },
        "target": {"max_escalation": args.max_escalation},
        "tuning_split": {
            "escalation_rate": result.chosen.escalation_rate,
            "routed_accuracy": result.chosen.routed_accuracy,
        },
        "report_split": {k: v for k, v in vars(on_report).items() if k != "thresholds"},
        "report_split_before_tuning": {k: v for k, v in vars(baseline).items() if k != "thresholds"},
    }
    (RESULTS / "clinc_tune.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
