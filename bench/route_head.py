"""The trained route head against kNN on development data, shift-robust tuning, decision latency, and
translate-then-route agreement. Nothing here reads a reserved test split.

    .venv/bin/python bench/route_head.py --data ../shared/data            # ~10 min on 2 cores
    .venv/bin/python bench/route_head.py --data ../shared/data --smoke    # CI: one Banking77 fold, fewer rows

- CLINC150: routes from train (150 intents, plus `other` = the 100 out-of-scope train rows, the
  `ood_route`), measured on val (3,000 in-scope, 100 out-of-scope) with default thresholds. "Overall"
  counts out-of-scope as a class (right when escalated) and is also reported reweighted to 18.2%
  out-of-scope, the share of the CLINC150 test split (1,000 of 5,500), without reading it.
- Banking77: stratified 5-fold over train (no dev split exists); routes from four folds plus the same
  CLINC150 `other` route, measured on the fifth.
- Tuning that survives a shift: thresholds tuned on half of CLINC150 val (3% out of scope), measured on
  the other half at its own share and reweighted to 18.2%.
- Decision latency at batch 1 (encoder forward + scoring + decision), linear head vs kNN, same run.
- Portuguese support messages (tests/data/pt_support.jsonl, written for the tests) through `Router.invoke`:
  share routed like their English versions.
Writes bench/results/route_head.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

from slm_router.policies import DEFAULT_POLICY, Policy, load_policy, policy_from_dict
from slm_router.router import Router
from slm_router.router.core.calibration import expected_calibration_error
from slm_router.router.core.embedder import Embedder
from slm_router.router.core.index import RouteIndex
from slm_router.router.ops.evaluation import policy_ood_threshold, policy_thresholds, score, split
from slm_router.router.ops.tuning import OOD, ScoredSet, Target, escalated, evaluate, tune

RESULTS = Path(__file__).resolve().parent / "results"
PT_PAIRS = Path(__file__).resolve().parents[1] / "tests" / "data" / "pt_support.jsonl"
TEST_OOS_SHARE = 1000 / 5500  # CLINC150 test's published mix; used only as a weight


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def routes_policy_dict(by_route: dict[str, list[str]], classifier: str) -> dict[str, Any]:
    """A policy with these routes (utterances inline), no agents, no fallback: the router alone."""
    return {
        "routes": {name: {"utterances": texts} for name, texts in sorted(by_route.items())},
        "router": {"ood_route": "other", "classifier": classifier},
        "languages": {"non_native_route": None},
        "fallback": {"enabled": False},
    }


def routes_policy(by_route: dict[str, list[str]], classifier: str) -> Policy:
    return policy_from_dict(routes_policy_dict(by_route, classifier), base_dir=DEFAULT_POLICY.parent)


def metrics(data: ScoredSet, policy: Policy) -> dict[str, float | None]:
    """Default-threshold figures; escalated = out of scope, below threshold, or the `other` route."""
    esc = escalated(data, policy_thresholds(policy, data.routes), policy_ood_threshold(policy, data))
    pred = data.probs.argmax(axis=1)
    oos = data.labels == OOD
    right = (pred == data.labels) & ~esc
    conf = data.probs.max(axis=1)
    out: dict[str, float | None] = {
        "rows": len(data.labels),
        "top_route_right": float((pred == data.labels)[~oos].mean()),
        "in_scope_accuracy": float(right[~oos].mean()),
        "in_scope_false_escalation": float(esc[~oos].mean()),
        "ece_in_scope": expected_calibration_error(conf[~oos], (pred == data.labels)[~oos].astype(float)),
        "escalation_rate": float(esc.mean()),
        "oos_recall": float(esc[oos].mean()) if oos.any() else None,
    }
    if oos.any():
        out["overall_accuracy"] = float((right | (oos & esc)).mean())
        out["overall_accuracy_at_18pct_oos"] = float(
            (1 - TEST_OOS_SHARE) * right[~oos].mean() + TEST_OOS_SHARE * esc[oos].mean()
        )
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def build(
    by_route: dict[str, list[str]], classifier: str, embedder: Embedder
) -> tuple[Policy, RouteIndex, float]:
    policy = routes_policy(by_route, classifier)
    start = time.perf_counter()
    index = RouteIndex.from_policy(policy, embedder)
    return policy, index, time.perf_counter() - start


def clinc(data: Path, embedder: Embedder, limit: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    by_route: dict[str, list[str]] = defaultdict(list)
    for row in _jsonl(data / "clinc150_train.jsonl"):
        by_route["other" if row["intent"] == "oos" else row["intent"]].append(row["text"])
    val = _jsonl(data / "clinc150_val.jsonl")
    val = val[:: max(1, len(val) // limit)] if limit else val  # every intent and out-of-scope
    texts, labels = [r["text"] for r in val], [r["intent"] for r in val]
    out: dict[str, Any] = {}
    scored: dict[str, tuple[Policy, RouteIndex, ScoredSet]] = {}
    for classifier in ("knn", "linear"):
        policy, index, build_s = build(by_route, classifier, embedder)
        data_set = score(texts, labels, policy, index, embedder, show_progress=False)
        out[classifier] = {"index_build_s": round(build_s, 1), **metrics(data_set, policy)}
        out[classifier]["calibration"] = index.calibration.model_dump()
        scored[classifier] = (policy, index, data_set)
        print(f"CLINC150 val, {classifier}: {out[classifier]}", flush=True)
    return out, {"scored": scored, "texts": texts}


def shift(policy: Policy, data: ScoredSet) -> dict[str, Any]:
    """Tune on one half of val at its own out-of-scope share; measure the other half at 3% and at 18%."""
    tuning, held = split(data)
    rows: dict[str, Any] = {"tuning_oos_share": round(tuning.oos_share, 4)}
    cases = {
        "max_escalation 0.2": Target("max_escalation", 0.2),
        "max_escalation 0.2 --expected-oos-share 0.182": Target(
            "max_escalation", 0.2, oos_share=TEST_OOS_SHARE
        ),
        "max_false_escalation 0.1": Target("max_false_escalation", 0.1),
        "min_oos_recall 0.9": Target("min_oos_recall", 0.9),
    }
    for name, target in cases.items():
        chosen = tune(tuning, target).chosen
        own = evaluate(held, chosen.thresholds, chosen.ood_threshold, Target("max_escalation", 1))
        at18 = evaluate(
            held,
            chosen.thresholds,
            chosen.ood_threshold,
            Target("max_escalation", 1, oos_share=TEST_OOS_SHARE),
        )
        rows[name] = {
            "on_tuning_half": {
                "escalation_rate": round(chosen.escalation_rate, 4),
                "in_scope_false_escalation": _r(chosen.in_scope_false_escalation),
                "oos_recall": _r(chosen.oos_recall),
            },
            "report_half_own_share": {
                "escalation_rate": round(own.escalation_rate, 4),
                "in_scope_false_escalation": _r(own.in_scope_false_escalation),
                "oos_recall": _r(own.oos_recall),
                "routed_accuracy": round(own.routed_accuracy, 4),
            },
            "report_half_at_18pct_oos": {
                "escalation_rate": round(at18.escalation_rate, 4),
                "routed_accuracy": round(at18.routed_accuracy, 4),
            },
        }
        print(f"shift, {name}: {rows[name]}", flush=True)
    return rows


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def banking(data: Path, embedder: Embedder, folds: int, other: list[str]) -> dict[str, Any]:
    rows = _jsonl(data / "banking77_train.jsonl")
    texts = np.array([r["text"] for r in rows])
    labels = np.array([r["intent"] for r in rows])
    per_fold: dict[str, list[dict[str, Any]]] = {"knn": [], "linear": []}
    splitter = StratifiedKFold(5, shuffle=True, random_state=0)
    for fold, (train, test) in enumerate(splitter.split(texts, labels)):
        if fold >= folds:
            break
        by_route: dict[str, list[str]] = defaultdict(list)
        for i in train:
            by_route[str(labels[i])].append(str(texts[i]))
        by_route["other"] = other
        for classifier in ("knn", "linear"):
            policy, index, _ = build(by_route, classifier, embedder)
            data_set = score(
                list(texts[test]), list(labels[test]), policy, index, embedder, show_progress=False
            )
            per_fold[classifier].append(metrics(data_set, policy))
            print(f"Banking77 fold {fold}, {classifier}: {per_fold[classifier][-1]}", flush=True)
    keys = ("top_route_right", "in_scope_accuracy", "escalation_rate", "ece_in_scope")
    return {
        c: {"folds": len(v), **{k: round(statistics.mean(float(m[k] or 0) for m in v), 4) for k in keys}}
        for c, v in per_fold.items()
    }


def latency(
    scored: dict[str, tuple[Policy, RouteIndex, ScoredSet]], texts: list[str], embedder: Embedder, n: int
) -> dict[str, Any]:
    """Batch 1, the way a request is routed: encode one text, score it, decide."""
    from slm_router.router.core.rules import decide

    out: dict[str, Any] = {}
    sample = texts[:: max(1, len(texts) // n)][:n]
    for classifier, (policy, index, _) in scored.items():
        for text in sample[:10]:  # warm up
            index.score(embedder.encode_one(text))
        total, scoring = [], []
        for text in sample:
            start = time.perf_counter()
            vector = embedder.encode_one(text)
            mid = time.perf_counter()
            decide(index.score(vector), policy, "en", 1.0)
            end = time.perf_counter()
            total.append((end - start) * 1000)
            scoring.append((end - mid) * 1000)
        out[classifier] = {
            "decision_p50_ms": round(statistics.median(total), 3),
            "scoring_p50_ms": round(statistics.median(scoring), 3),
        }
    out["linear_over_knn_decision_p50"] = round(
        out["linear"]["decision_p50_ms"] / out["knn"]["decision_p50_ms"], 3
    )
    out["linear_over_knn_scoring_p50"] = round(
        out["linear"]["scoring_p50_ms"] / out["knn"]["scoring_p50_ms"], 3
    )
    print(f"latency: {out}", flush=True)
    return out


def portuguese() -> dict[str, Any]:
    pairs = _jsonl(PT_PAIRS)
    policy = load_policy().model_copy(deep=True)
    policy.fallback.enabled = False  # routes are compared; nothing needs the fallback's answer
    router = Router(policy)
    same = 0
    by: dict[str, int] = defaultdict(int)
    for pair in pairs:
        pt, en = router.invoke(pair["pt"]), router.invoke(pair["en"])
        same += pt.route == en.route
        by[pt.translation.translated_by if pt.translation else "not translated"] += 1
    return {"pairs": len(pairs), "same_route_share": round(same / len(pairs), 4), "translated_by": dict(by)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--folds", type=int, default=5, help="Banking77 folds measured (of 5).")
    parser.add_argument("--smoke", action="store_true", help="One Banking77 fold and 600 CLINC150 val rows.")
    parser.add_argument("--out", type=Path, default=RESULTS / "route_head.json")
    args = parser.parse_args()
    embedder = Embedder()
    started = time.perf_counter()
    clinc_out, state = clinc(args.data, embedder, 600 if args.smoke else None)
    policy, _, data_set = state["scored"]["linear"]
    result: dict[str, Any] = {
        "clinc150_val": clinc_out,
        "shift_tuning_clinc150_val": shift(policy, data_set),
        "latency_batch1_clinc150": latency(
            state["scored"], state["texts"], embedder, 50 if args.smoke else 300
        ),
    }
    other = [r["text"] for r in _jsonl(args.data / "clinc150_train.jsonl") if r["intent"] == "oos"]
    result["banking77_train_5fold"] = banking(args.data, embedder, 1 if args.smoke else args.folds, other)
    result["portuguese_same_route"] = portuguese()
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
