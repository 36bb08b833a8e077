"""Routes defined by example utterances: their embeddings, scored by a trained linear head (with an
out-of-scope test) or, for tiny route sets, by the nearest examples; both calibrated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, Field

from slm_router.policies import Policy, PolicyError
from slm_router.router.core.calibration import expected_calibration_error, fit_temperature, softmax
from slm_router.router.core.embedder import Embedder, cache_dir
from slm_router.router.core.head import HeadSettings, RouteHead, fit_cached

Classifier = Literal["linear", "knn"]


class RouteScores(BaseModel):
    """Everything the decision needs about one request, and what `explain` shows."""

    classifier: Classifier = "knn"
    probabilities: dict[str, float]
    top: str
    confidence: float
    runner_up: str | None
    margin: float
    ood: bool
    in_scope_p: float | None = Field(
        default=None, description="linear: share of held-out route examples that look at least as unusual"
    )
    max_similarity: float | None = Field(default=None, description="knn: best cosine similarity")
    similarities: dict[str, float] = Field(
        default_factory=dict, description="knn: each route's mean similarity of its nearest examples"
    )


class Neighbour(BaseModel):
    route: str
    text: str
    similarity: float


class CalibrationReport(BaseModel):
    classifier: Classifier
    temperature: float
    examples: int
    held_out: str = Field(description="how the held-out scores were made: leave-one-out or k-fold")
    held_out_accuracy: float
    ece: float


def load_utterances(policy: Policy) -> dict[str, list[str]]:
    """Read every route's examples (inline + file); errors name the route's field."""
    result: dict[str, list[str]] = {}
    for name, route in policy.routes.items():
        texts = list(route.utterances)
        for file in route.examples:
            texts += _read_examples(policy.resolve(file), f"routes.{name}.examples")
        texts = [t.strip() for t in texts if t and t.strip()]
        if not texts:
            raise PolicyError(f"routes.{name}", ["route has no non-empty example utterances"])
        result[name] = list(dict.fromkeys(texts))
    return result


def _read_examples(path: Path, field: str) -> list[str]:
    if not path.is_file():
        raise PolicyError(field, [f"{field}: examples file not found: {path}"])
    raw = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
            return [row["text"] if isinstance(row, dict) else str(row) for row in rows]
        data = yaml.safe_load(raw)
    except (json.JSONDecodeError, KeyError, yaml.YAMLError) as exc:
        raise PolicyError(field, [f"{field}: cannot read {path}: {exc}"]) from exc
    if isinstance(data, dict):
        data = data.get("utterances")
    if not isinstance(data, list):
        raise PolicyError(field, [f"{field}: {path} must hold a list of strings (or a key `utterances`)"])
    return [str(item) for item in data]


class RouteIndex:
    """The route examples' embeddings and the scorer the policy chose.

    The linear head (router/core/head.py) is the default once every route has enough examples: it routes
    about 5 points more accurately than kNN on CLINC150 and has an out-of-scope test that holds when the
    share of out-of-scope traffic changes. kNN (a route's score is the mean cosine similarity of its
    `top_k` nearest examples) serves tiny route sets, and `explain` always shows the nearest examples; the
    leave-one-out scores of the examples give it held-out data for its temperature.
    """

    def __init__(
        self,
        utterances: dict[str, list[str]],
        embedder: Embedder,
        top_k: int,
        ood_threshold: float,
        ood_route: str,
        classifier: Literal["auto", "linear", "knn"] = "knn",
        linear_min_examples: int = 20,
        ood_false_alarm: float = 0.02,
        head_settings: HeadSettings | None = None,
    ) -> None:
        self.routes = list(utterances)
        self.texts = [t for r in self.routes for t in utterances[r]]
        self.labels = np.array([i for i, r in enumerate(self.routes) for _ in utterances[r]])
        # A route's examples are contiguous: slicing a block is much cheaper than masking (150+ routes).
        ends = np.cumsum([len(utterances[r]) for r in self.routes])
        self._blocks = [
            slice(int(e - len(utterances[r])), int(e)) for r, e in zip(self.routes, ends, strict=True)
        ]
        self.top_k = top_k
        self.ood_threshold = ood_threshold
        self.ood_false_alarm = ood_false_alarm
        self.ood_route = ood_route
        self.vectors = embedder.encode_cached(self.texts, "routes")  # the slow part of start-up
        self.classifier: Classifier = _pick(classifier, utterances, linear_min_examples)
        self.head: RouteHead | None = None
        if self.classifier == "linear":
            in_scope = np.array([r != ood_route for r in self.routes])
            try:
                self.head = fit_cached(
                    self.vectors, self.labels, in_scope, head_settings or HeadSettings(), cache_dir()
                )
            except ValueError as exc:
                raise PolicyError("router.classifier", [f"router.classifier: linear: {exc}"]) from exc
            self.calibration = CalibrationReport(
                classifier="linear",
                temperature=self.head.temperature,
                examples=len(self.labels),
                held_out=f"{self.head.report.folds}-fold",
                held_out_accuracy=self.head.report.held_out_accuracy,
                ece=self.head.report.ece,
            )
        else:
            self.calibration = self._calibrate_knn()

    @classmethod
    def from_policy(cls, policy: Policy, embedder: Embedder) -> RouteIndex:
        settings = policy.router
        return cls(
            load_utterances(policy),
            embedder,
            settings.top_k,
            settings.ood_threshold,
            settings.ood_route,
            classifier=settings.classifier,
            linear_min_examples=settings.linear_min_examples,
            ood_false_alarm=settings.ood_false_alarm,
            head_settings=HeadSettings(c=settings.linear_c),
        )

    def knn_scores(self, sims: np.ndarray) -> np.ndarray:
        """sims: (n, N) similarities to all examples -> (n, R) route scores."""
        out = np.empty((sims.shape[0], len(self.routes)), dtype=np.float32)
        for r, columns in enumerate(self._blocks):
            block = sims[:, columns]
            k = min(self.top_k, block.shape[1])
            top = -np.partition(-block, k - 1, axis=1)[:, :k]
            out[:, r] = np.where(np.isfinite(top), top, 0.0).mean(axis=1)
        return out

    def _calibrate_knn(self) -> CalibrationReport:
        sims = self.vectors @ self.vectors.T
        np.fill_diagonal(sims, -np.inf)
        scores = self.knn_scores(sims)
        self.temperature = fit_temperature(scores, self.labels)
        probs = softmax(scores, self.temperature)
        correct = (probs.argmax(axis=1) == self.labels).astype(float)
        return CalibrationReport(
            classifier="knn",
            temperature=self.temperature,
            examples=len(self.labels),
            held_out="leave-one-out",
            held_out_accuracy=float(correct.mean()),
            ece=expected_calibration_error(probs.max(axis=1), correct),
        )

    def score_many(self, vectors: np.ndarray) -> list[RouteScores]:
        if self.head is not None:
            probs, in_scope_p = self.head.predict(vectors)
            fields = [{"classifier": "linear", "in_scope_p": round(float(p), 4)} for p in in_scope_p]
            return self._summarise(probs, in_scope_p < self.ood_false_alarm, fields)
        sims = vectors @ self.vectors.T
        scores = self.knn_scores(sims)
        max_sims = sims.max(axis=1)
        fields = [
            {
                "max_similarity": float(best),
                "similarities": dict(
                    zip(self.routes, np.round(row.astype(np.float64), 4).tolist(), strict=True)
                ),
            }
            for best, row in zip(max_sims, scores, strict=True)
        ]
        return self._summarise(softmax(scores, self.temperature), max_sims < self.ood_threshold, fields)

    def score(self, vector: np.ndarray) -> RouteScores:
        return self.score_many(vector[None, :])[0]

    def _summarise(
        self, probs: np.ndarray, ood: np.ndarray, fields: list[dict[str, Any]]
    ) -> list[RouteScores]:
        """The fields both scorers share, row by row, plus each row's scorer `fields`. Sorted and rounded
        once for the batch, and built without re-validation (every field comes from here): this runs on
        the request path, where it saves ~0.1 ms a request."""
        rows = np.arange(len(probs))
        order = np.argsort(-probs, axis=1)
        top = order[:, 0]
        confidence = probs[rows, top]
        second = order[:, 1] if probs.shape[1] > 1 else None
        margin = confidence - (probs[rows, second] if second is not None else 0.0)
        rounded = np.round(probs.astype(np.float64), 4).tolist()
        return [
            RouteScores.model_construct(
                probabilities=dict(zip(self.routes, rounded[i], strict=True)),
                top=self.routes[top[i]],
                confidence=float(confidence[i]),
                runner_up=self.routes[second[i]] if second is not None else None,
                margin=float(margin[i]),
                ood=bool(ood[i]),
                **fields[i],
            )
            for i in rows
        ]

    def route_similarities(self, vector: np.ndarray) -> dict[str, float]:
        """Each route's kNN score, whatever the scorer: what `explain` shows beside the nearest examples."""
        scores = self.knn_scores((self.vectors @ vector)[None, :])[0]
        return {r: round(float(v), 4) for r, v in zip(self.routes, scores, strict=True)}

    def example_counts(self) -> dict[str, int]:
        return {route: int((self.labels == i).sum()) for i, route in enumerate(self.routes)}

    def nearest(self, vector: np.ndarray, n: int = 5) -> list[Neighbour]:
        sims = self.vectors @ vector
        idx = np.argsort(-sims)[:n]
        return [
            Neighbour(
                route=self.routes[self.labels[i]], text=self.texts[i], similarity=round(float(sims[i]), 4)
            )
            for i in idx
        ]


def _pick(
    classifier: Literal["auto", "linear", "knn"], utterances: dict[str, list[str]], min_examples: int
) -> Classifier:
    if classifier != "auto":
        return classifier
    enough = len(utterances) >= 2 and min(len(v) for v in utterances.values()) >= min_examples
    return "linear" if enough else "knn"
