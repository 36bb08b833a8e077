"""Sentiment as a linear head on the router's MiniLM embedding: no second model, microseconds per request."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slm_router.agents.base import AgentError, AgentInput, AgentResult, SentimentOutput

PACKAGED_HEAD = Path(__file__).parent / "weights" / "sentiment_head.npz"
SUPPORT_SET = Path(__file__).parent / "data" / "support_sentiment.jsonl"
"""Hand-written support messages with sentiment labels, trained on beside public data."""

Encoder = Callable[[list[str]], np.ndarray]


@dataclass
class SentimentHead:
    """Multinomial logistic regression plus a fitted temperature, stored as a few KB of .npz."""

    weights: np.ndarray  # (classes, dim)
    bias: np.ndarray  # (classes,)
    labels: list[str]
    temperature: float = 1.0

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        logits = (vectors @ self.weights.T + self.bias) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return np.asarray(e / e.sum(axis=1, keepdims=True))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            weights=self.weights,
            bias=self.bias,
            labels=np.array(self.labels),
            temperature=np.array(self.temperature),
        )

    @classmethod
    def load(cls, path: Path) -> SentimentHead:
        if not path.is_file():
            raise AgentError(
                "sentiment", f"head weights not found: {path} (train them: slm-router train sentiment)"
            )
        with np.load(path) as data:
            return cls(
                weights=data["weights"],
                bias=data["bias"],
                labels=[str(x) for x in data["labels"]],
                temperature=float(data["temperature"]),
            )


class SentimentAgent:
    """negative / neutral / positive with calibrated class probabilities as confidence."""

    def __init__(self, encode: Encoder, head_path: str | Path | None = None, name: str = "sentiment") -> None:
        self.name = name
        self._encode = encode
        self._path = Path(head_path) if head_path else PACKAGED_HEAD
        self._head: SentimentHead | None = None
        self._lock = threading.Lock()

    @property
    def head(self) -> SentimentHead:
        with self._lock:
            if self._head is None:
                self._head = SentimentHead.load(self._path)
            return self._head

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        missing = [i for i, item in enumerate(items) if item.embedding is None]
        vectors: list[np.ndarray | None] = [item.embedding for item in items]
        if missing:
            fresh = self._encode([items[i].text for i in missing])
            for i, vec in zip(missing, fresh, strict=True):
                vectors[i] = vec
        probs = self.head.probabilities(np.stack([v for v in vectors if v is not None]))
        results = []
        for row in probs:
            best = int(row.argmax())
            label = self.head.labels[best]
            results.append(
                AgentResult(
                    agent=self.name,
                    output=label,
                    details=SentimentOutput(
                        label=label,
                        probabilities={
                            lab: round(float(p), 4) for lab, p in zip(self.head.labels, row, strict=True)
                        },
                    ),
                    confidence=float(row[best]),
                )
            )
        return results
