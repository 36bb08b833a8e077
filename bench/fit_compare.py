"""`slm-router tune` against semantic-router's `fit` on CLINC150, side by side: the same routes (built only
from the train split, as in bench/clinc_tune.py), the same MiniLM encoder (slm-router's Embedder, wrapped as
a semantic-router encoder, so nothing comes from the hub) and the same stratified tuning/report halves of
the validation split. Both are tuned on the tuning half; every number is measured on the report half by
this script, the same way for both.

    .venv/bin/python bench/fit_compare.py --data ../shared/data

The baseline is semantic-router 0.3.3 (`pip install semantic-router==0.3.3`; the `bench` extra has 1.1.1,
for bench/vs_semantic_router.py), the last line whose `fit` searches per-route thresholds (random search
for accuracy; 1.x replaced it with a confidence calibrator). Its `fit` re-runs the same similarity search
for every tuning query on every iteration; that search does not depend on the thresholds, so it is
memoised per query vector (fit's own code still makes every decision, and the JSON estimates the
unmemoised time). `--stock-fit` runs it unmemoised: hours.

Writes bench/results/fit_compare.json.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import random
import shlex
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# fit's per-route threshold search exists only up to 0.3.x (1.x has no `SemanticRouter` nor that `fit`).
try:
    SR_VERSION = version("semantic-router")
except PackageNotFoundError:
    SR_VERSION = "none"
if SR_VERSION != "0.3.3":
    sys.exit(
        "bench/fit_compare.py needs semantic-router==0.3.3 (pip install semantic-router==0.3.3); "
        f"this environment has {SR_VERSION}"
    )

import numpy as np
from clinc_tune import clinc_policy  # a sibling script: bench/ is on sys.path when run as bench/x.py
from pydantic import PrivateAttr
from semantic_router import Route
from semantic_router.encoders import DenseEncoder
from semantic_router.index import LocalIndex
from semantic_router.routers import SemanticRouter

from slm_router.policies import DEFAULT_POLICY, policy_from_dict
from slm_router.router.core.embedder import Embedder
from slm_router.router.core.index import RouteIndex, load_utterances
from slm_router.router.ops.evaluation import policy_ood_threshold, policy_thresholds, read_rows, score, split
from slm_router.router.ops.tuning import OOD, ScoredSet, Target, evaluate, tune

RESULTS = Path(__file__).resolve().parent / "results"
# semantic-router's default for this model: HuggingFaceEncoder sets score_threshold=0.5 when none is given.
SR_DEFAULT_THRESHOLD = 0.5
FIT_MAX_ITER = inspect.signature(SemanticRouter.fit).parameters["max_iter"].default


class UncachedEmbedder(Embedder):
    """Encodes on every call: a timed encode must not be answered by the on-disk cache of an earlier run."""

    def encode_cached(self, texts: list[str], kind: str, show_progress: bool = False) -> np.ndarray:
        return self.encode(texts, show_progress)


class SharedMiniLM(DenseEncoder):
    """slm-router's MiniLM as a semantic-router encoder, so both routers compare the very same vectors.

    Route examples are looked up from the slm-router index (the same model gives the same vectors, and
    encoding 15k of them again would only add minutes); every other text is encoded, and the seconds
    spent are counted so fit's time can be split into encoding and search.
    """

    type: str = "slm-router"
    _embedder: Embedder = PrivateAttr()
    _known: dict[str, np.ndarray] = PrivateAttr()
    _encode_s: float = PrivateAttr(default=0.0)

    def __init__(self, embedder: Embedder, known: dict[str, np.ndarray]) -> None:
        super().__init__(name="all-MiniLM-L6-v2", score_threshold=SR_DEFAULT_THRESHOLD)
        self._embedder = embedder
        self._known = known

    @property
    def encode_s(self) -> float:
        return self._encode_s

    def __call__(self, docs: list[Any]) -> list[list[float]]:
        texts = [str(d) for d in docs]
        missing = list(dict.fromkeys(t for t in texts if t not in self._known))
        fresh: dict[str, np.ndarray] = {}
        if missing:
            start = time.perf_counter()
            fresh = dict(zip(missing, self._embedder.encode(missing), strict=True))
            self._encode_s += time.perf_counter() - start
        return [(self._known[t] if t in self._known else fresh[t]).tolist() for t in texts]

    async def acall(self, docs: list[Any]) -> list[list[float]]:
        return self(docs)


class MemoLocalIndex(LocalIndex):
    """LocalIndex with its similarity search memoised per query vector (and counted).

    `fit` scores the same tuning vectors once per iteration and only the thresholds change in between, so
    a repeated search returns what the first one did; the misses' mean time gives the stock fit's time.
    """

    _memo: dict[tuple[bytes, int], tuple[np.ndarray, list[str]]] = PrivateAttr(default_factory=dict)
    _hits: int = PrivateAttr(default=0)
    _miss_s: float = PrivateAttr(default=0.0)

    def query(
        self,
        vector: np.ndarray,
        top_k: int = 5,
        route_filter: list[str] | None = None,
        sparse_vector: Any = None,
    ) -> tuple[np.ndarray, list[str]]:
        if route_filter is not None or sparse_vector is not None:  # never used here; not memoised
            return super().query(vector, top_k, route_filter, sparse_vector)
        key = (np.asarray(vector, dtype=np.float64).tobytes(), top_k)
        if key in self._memo:
            self._hits += 1
            return self._memo[key]
        start = time.perf_counter()
        found = super().query(vector, top_k)
        self._miss_s += time.perf_counter() - start
        self._memo[key] = found
        return found

    def counts(self) -> tuple[int, int, float]:
        """(searches run, searches answered by the memo, seconds spent searching) so far."""
        return len(self._memo), self._hits, self._miss_s


def split_rows(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of router.evaluation.split's tuning and report halves (it returns scores, not rows):
    the split only looks at labels, so splitting a set whose `in_scope` is the row number recovers them."""
    n = len(labels)
    probe = ScoredSet(["_"], np.zeros((n, 1)), np.arange(n, dtype=float), labels, np.ones(1, dtype=bool))
    tuning, held = split(probe)
    return tuning.in_scope.astype(int), held.in_scope.astype(int)


def slm_predictions(data: ScoredSet, thresholds: dict[str, float], ood_threshold: float) -> list[str | None]:
    """The router's decision per row (None: escalated), the rule `evaluate` (router/ops/tuning.py)
    aggregates."""
    pred = data.probs.argmax(axis=1)
    conf = data.probs.max(axis=1)
    t = np.array([thresholds.get(r, 0.0) for r in data.routes])
    escalated = (data.in_scope < ood_threshold) | ~data.servable[pred] | (conf < t[pred])
    point = evaluate(data, thresholds, ood_threshold, Target("max_escalation", 1.0))
    if abs(point.escalation_rate - float(escalated.mean())) > 1e-12:
        raise RuntimeError("this copy of the decision rule no longer matches router/ops/tuning.py evaluate")
    return [None if e else data.routes[p] for p, e in zip(pred, escalated, strict=True)]


def sr_predictions(router: SemanticRouter, vectors: np.ndarray, oos_route: str | None) -> list[str | None]:
    """semantic-router's own decision per row (`__call__` on the vector); no route, or `oos_route`, is
    escalated."""
    out: list[str | None] = []
    for vector in vectors:
        choice = router(vector=vector, simulate_static=True)
        name = (choice[0] if isinstance(choice, list) else choice).name
        out.append(None if name == oos_route else name)
    return out


def metrics(pred: list[str | None], truth: list[str | None]) -> dict[str, float]:
    """Both routers' rows scored alike; None is escalated (prediction) or out of scope (truth)."""
    p = np.array([x or "" for x in pred], dtype=object)
    t = np.array([x or "" for x in truth], dtype=object)
    escalated, oos = p == "", t == ""
    right = (p == t) & ~escalated
    in_scope, local = ~oos, ~escalated
    return {
        "in_scope_accuracy": round(float(right[in_scope].mean()), 4),  # escalated counts as wrong
        "routed_accuracy": round(float(right[in_scope & local].sum() / (in_scope & local).sum()), 4),
        "local_precision": round(float(right[local].sum() / local.sum()), 4),  # tune's objective
        "oos_recall": round(float(escalated[oos].mean()), 4),
        "escalation_rate": round(float(escalated.mean()), 4),
        "decision_accuracy": round(float((right | (oos & escalated)).mean()), 4),  # fit's objective
    }


def build_sr(
    utterances: dict[str, list[str]], encoder: SharedMiniLM, memo: bool
) -> tuple[SemanticRouter, float]:
    start = time.perf_counter()
    routes = [Route(name=name, utterances=texts) for name, texts in utterances.items()]
    index = MemoLocalIndex() if memo else LocalIndex()
    router = SemanticRouter(encoder=encoder, routes=routes, index=index, auto_sync="local")
    return router, time.perf_counter() - start


def sr_variant(
    name: str,
    utterances: dict[str, list[str]],
    oos_route: str | None,
    encoder: SharedMiniLM,
    texts: list[str],
    truth: list[str | None],
    rows: tuple[np.ndarray, np.ndarray],
    report_vectors: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One semantic-router setup: default thresholds, then `fit` on the tuning half, both on the report half.

    `oos_route` is the route (if any) that stands for out of scope: fit's labels name it for oos rows.
    """
    tuning_rows, report_rows = rows
    router, build_s = build_sr(utterances, encoder, memo=not args.stock_fit)
    report_truth = [truth[i] for i in report_rows]
    before = metrics(sr_predictions(router, report_vectors, oos_route), report_truth)
    x = [texts[i] for i in tuning_rows]
    y = [truth[i] if truth[i] is not None else oos_route for i in tuning_rows]
    random.seed(args.seed)  # fit draws thresholds from the global `random`
    encoded_before = encoder.encode_s
    counted_before = router.index.counts() if isinstance(router.index, MemoLocalIndex) else None
    start = time.perf_counter()
    router.fit(X=x, y=y, max_iter=args.max_iter)  # type: ignore[arg-type]  # y: None means no route
    fit_s = time.perf_counter() - start
    fit_encode_s = encoder.encode_s - encoded_before
    counted_after = router.index.counts() if isinstance(router.index, MemoLocalIndex) else None
    thresholds = np.array(list(router.get_thresholds().values()))
    out: dict[str, Any] = {
        "routes": len(router.routes),
        "oos_route": oos_route,
        "index_build_s": round(build_s, 2),
        "fit_s": round(fit_s, 1),
        "fit_encode_s": round(fit_encode_s, 1),
        "fit_search_s": round(fit_s - fit_encode_s, 1),
        "report_split_before_fit": before,
        "report_split": metrics(sr_predictions(router, report_vectors, oos_route), report_truth),
        "thresholds": {
            "min": round(float(thresholds.min()), 3),
            "median": round(float(np.median(thresholds)), 3),
            "max": round(float(thresholds.max()), 3),
            "unchanged_from_default": int(np.isclose(thresholds, SR_DEFAULT_THRESHOLD).sum()),
        },
    }
    if counted_before is not None and counted_after is not None:
        run, hits, search_s = (a - b for a, b in zip(counted_after, counted_before, strict=True))
        search_ms = search_s / run * 1e3
        # Without the memo every repeated search would cost what a first one did.
        out["fit_memo"] = {"searches_run": run, "memo_hits": hits, "search_ms": round(search_ms, 2)}
        out["fit_s_stock_estimate"] = round(fit_s + hits * search_ms / 1e3)
    tuning_vectors = np.array(encoder(x))
    out["tuning_split"] = metrics(
        sr_predictions(router, tuning_vectors, oos_route), [truth[i] for i in tuning_rows]
    )
    print(f"semantic-router {name}: fit {fit_s:.1f} s, {out['report_split']}", file=sys.stderr)
    return out


def slm_tuned(
    tuning: ScoredSet, held: ScoredSet, target: Target, report_truth: list[str | None]
) -> dict[str, Any]:
    """`tune` for one target on the tuning half (timed: pure numpy), measured on the report half."""
    start = time.perf_counter()
    chosen = tune(tuning, target).chosen
    tune_s = time.perf_counter() - start
    return {
        "tune_s": round(tune_s, 3),
        "ood_threshold": round(chosen.ood_threshold, 4),
        "tuning_split_escalation_rate": round(chosen.escalation_rate, 4),
        "report_split": metrics(slm_predictions(held, chosen.thresholds, chosen.ood_threshold), report_truth),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--max-escalation", type=float, default=0.2)
    parser.add_argument("--min-accuracy", type=float, default=0.95)
    parser.add_argument(
        "--max-iter", type=int, default=FIT_MAX_ITER, help=f"fit's iterations (its default: {FIT_MAX_ITER})"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the global `random` that fit draws from")
    parser.add_argument("--stock-fit", action="store_true", help="no search memo (fit takes hours)")
    parser.add_argument("--out", type=Path, default=RESULTS / "fit_compare.json")
    args = parser.parse_args()

    policy = policy_from_dict(
        clinc_policy(args.data / "clinc150_train.jsonl"), base_dir=DEFAULT_POLICY.parent
    )
    ood_route = policy.router.ood_route
    embedder, cold = Embedder(), UncachedEmbedder()
    start = time.perf_counter()
    index = RouteIndex.from_policy(policy, embedder)  # route vectors come from the on-disk cache if warm
    index_build_s = time.perf_counter() - start
    texts, routes = read_rows(args.data / "clinc150_val.jsonl")
    cold.load()
    start = time.perf_counter()
    data = score(texts, routes, policy, index, cold, show_progress=False)
    scoring_s = time.perf_counter() - start
    truth = [None if label == OOD else index.routes[label] for label in data.labels]
    rows = split_rows(data.labels)

    tuning, held = split(data)
    report_truth = [truth[i] for i in rows[1]]
    before = slm_predictions(held, policy_thresholds(policy, held.routes), policy_ood_threshold(policy, held))
    slm: dict[str, Any] = {
        "index_build_s": round(index_build_s, 2),
        "scoring_s": round(scoring_s, 1),
        "report_split_before_tuning": metrics(before, report_truth),
    }
    for target in (Target("max_escalation", args.max_escalation), Target("min_accuracy", args.min_accuracy)):
        slm[f"{target.kind}={target.value:g}"] = slm_tuned(tuning, held, target, report_truth)

    utterances = load_utterances(policy)  # the texts the slm-router index holds, in its order
    known = dict(zip(index.texts, index.vectors, strict=True))
    encoder = SharedMiniLM(cold, known)
    report_vectors = np.array(encoder([texts[i] for i in rows[1]]))
    in_scope = {name: u for name, u in utterances.items() if name != ood_route}
    sr = {
        "in_scope_routes": sr_variant(
            "in-scope routes", in_scope, None, encoder, texts, truth, rows, report_vectors, args
        ),
        "with_other_route": sr_variant(
            f"+ {ood_route}", utterances, ood_route, encoder, texts, truth, rows, report_vectors, args
        ),
    }
    # tune again with fit's escalation rate on the tuning half as the budget: the two at equal cost.
    matched = Target("max_escalation", sr["in_scope_routes"]["tuning_split"]["escalation_rate"])
    slm[f"max_escalation={matched.value:g} (fit's)"] = slm_tuned(tuning, held, matched, report_truth)

    out = {
        "command": shlex.join([".venv/bin/python", "bench/fit_compare.py", *sys.argv[1:]]),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
        "versions": {
            pkg: version(pkg) for pkg in ("slm-router", "semantic-router", "torch", "sentence-transformers")
        },
        "data": {
            "routes": len(index.routes),
            "route_examples": len(index.texts),
            "val_rows": len(texts),
            "tuning_rows": len(rows[0]),
            "report_rows": len(rows[1]),
            "report_oos_rows": sum(truth[i] is None for i in rows[1]),
        },
        "fit": {"max_iter": args.max_iter, "max_iter_default": FIT_MAX_ITER, "seed": args.seed},
        "slm_router": slm,
        "semantic_router": sr,
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
