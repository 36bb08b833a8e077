"""Routes defined by example utterances: a kNN index over their embeddings, scored and calibrated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel

from slm_router.policies import Policy, PolicyError
from slm_router.router.core.calibration import expected_calibration_error, fit_temperature, softmax
from slm_router.router.core.embedder import Embedder


class RouteScores(BaseModel):
    """Everything the decision needs about one request, and what `explain` shows."""

    similarities: dict[str, float]
    probabilities: dict[str, float]
    top: str
    confidence: float
    runner_up: str | None
    margin: float
    max_similarity: float
    ood: bool


class Neighbour(BaseModel):
    route: str
    text: str
    similarity: float


class CalibrationReport(BaseModel):
    temperature: float
    examples: int
    loo_accuracy: float
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
    """kNN scoring: a route's score is the mean cosine similarity of its `top_k` nearest examples.

    kNN (rather than centroids) keeps routes with varied phrasings intact; the leave-one-out scores of the
    examples themselves give held-out data for the temperature, so no extra labelled set is needed.
    """

    def __init__(
        self,
        utterances: dict[str, list[str]],
        embedder: Embedder,
        top_k: int,
        ood_threshold: float,
        ood_route: str,
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
        self.ood_route = ood_route
        self.vectors = embedder.encode_cached(self.texts, "routes")  # the slow part of start-up
        self.calibration = self._calibrate()

    @classmethod
    def from_policy(cls, policy: Policy, embedder: Embedder) -> RouteIndex:
        return cls(
            load_utterances(policy),
            embedder,
            policy.router.top_k,
            policy.router.ood_threshold,
            policy.router.ood_route,
        )

    def _route_scores(self, sims: np.ndarray) -> np.ndarray:
        """sims: (n, N) similarities to all examples -> (n, R) route scores."""
        out = np.empty((sims.shape[0], len(self.routes)), dtype=np.float32)
        for r, columns in enumerate(self._blocks):
            block = sims[:, columns]
            k = min(self.top_k, block.shape[1])
            top = -np.partition(-block, k - 1, axis=1)[:, :k]
            out[:, r] = np.where(np.isfinite(top), top, 0.0).mean(axis=1)
        return out

    def _calibrate(self) -> CalibrationReport:
        sims = self.vectors @ self.vectors.T
        np.fill_diagonal(sims, -np.inf)
        scores = self._route_scores(sims)
        self.temperature = fit_temperature(scores, self.labels)
        probs = softmax(scores, self.temperature)
        correct = (probs.argmax(axis=1) == self.labels).astype(float)
        return CalibrationReport(
            temperature=self.temperature,
            examples=len(self.labels),
            loo_accuracy=float(correct.mean()),
            ece=expected_calibration_error(probs.max(axis=1), correct),
        )

    def score_many(self, vectors: np.ndarray) -> list[RouteScores]:
        sims = vectors @ self.vectors.T
        scores = self._route_scores(sims)
        probs = softmax(scores, self.temperature)
        max_sims = sims.max(axis=1)
        return [self._summarise(scores[i], probs[i], float(max_sims[i])) for i in range(len(vectors))]

    def score(self, vector: np.ndarray) -> RouteScores:
        return self.score_many(vector[None, :])[0]

    def _summarise(self, scores: np.ndarray, probs: np.ndarray, max_sim: float) -> RouteScores:
        order = np.argsort(-probs)
        top = int(order[0])
        second = int(order[1]) if len(order) > 1 else None
        return RouteScores(
            similarities={r: round(float(s), 4) for r, s in zip(self.routes, scores, strict=True)},
            probabilities={r: round(float(p), 4) for r, p in zip(self.routes, probs, strict=True)},
            top=self.routes[top],
            confidence=float(probs[top]),
            runner_up=self.routes[second] if second is not None else None,
            margin=float(probs[top] - (probs[second] if second is not None else 0.0)),
            max_similarity=max_sim,
            ood=max_sim < self.ood_threshold,
        )

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
