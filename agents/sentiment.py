"""Sentiment: a fine-tuned MiniLM classifier by default, or a linear head on the router's own embedding.

The fine-tuned model is the packaged all-MiniLM-L6-v2 with a LoRA adapter (agents/adapted.py), mean pooling,
and a linear layer over the pooled vector plus four VADER lexicon scores. The lexicon carries what a
movie-review and Reddit training set cannot: emoticons, slang and intensifiers of short social text. Its
probabilities are temperature-scaled on held-out rows, so `min_confidence` escalates the doubtful answers.

The head (`backend: head`) is the cheap option: no second forward pass, microseconds per request, about
ten points of macro-F1 less (bench/README.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from slm_router.agents.adapted import base_encoder_path, files_key, load_adapted, read_card, shared_model
from slm_router.agents.base import AgentError, AgentInput, AgentResult, SentimentOutput

if TYPE_CHECKING:
    import torch

PACKAGED_HEAD = Path(__file__).parent / "weights" / "sentiment_head.npz"
PACKAGED_MODEL = Path(__file__).parent / "weights" / "sentiment_model"
SUPPORT_SET = Path(__file__).parent / "data" / "support_sentiment.jsonl"
"""Hand-written support messages with sentiment labels, trained on beside public data."""

CLASSIFIER_FILE = "classifier.npz"
MAX_TOKENS = 128
"""Longer messages are cut here: the opening of a support message carries its tone, and the cost of a
forward pass grows with its length."""

Backend = Literal["model", "head"]
Encoder = Callable[[list[str]], np.ndarray]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


@dataclass
class SentimentHead:
    """Multinomial logistic regression plus a fitted temperature, stored as a few KB of .npz."""

    weights: np.ndarray  # (classes, dim)
    bias: np.ndarray  # (classes,)
    labels: list[str]
    temperature: float = 1.0

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(vectors @ self.weights.T + self.bias)

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        return softmax(self.logits(vectors) / self.temperature)

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
                "sentiment", f"weights not found: {path} (train them: slm-router train sentiment)"
            )
        with np.load(path) as data:
            return cls(
                weights=data["weights"],
                bias=data["bias"],
                labels=[str(x) for x in data["labels"]],
                temperature=float(data["temperature"]),
            )


def lexicon_features(texts: Sequence[str]) -> np.ndarray:
    """VADER's neg/neu/pos/compound per text: a hand-built social-media lexicon (PyPI `vaderSentiment`)."""
    analyser = _vader()
    rows = [analyser.polarity_scores(text) for text in texts]
    return np.array([[r["neg"], r["neu"], r["pos"], r["compound"]] for r in rows], dtype=np.float32)


_VADER: Any = None
_VADER_LOCK = threading.Lock()


def _vader() -> Any:
    """One analyser per process: building it parses the 7,500-word lexicon (~50 ms)."""
    global _VADER
    with _VADER_LOCK:
        if _VADER is None:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            _VADER = SentimentIntensityAnalyzer()
        return _VADER


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers' pooling for all-MiniLM-L6-v2: the mean of the token vectors under the mask."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class SentimentModel:
    """Tokeniser + (merged) encoder + classifier over [pooled vector, lexicon scores]; logits as numpy."""

    def __init__(self, tokenizer: Any, encoder: Any, head: SentimentHead) -> None:
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.head = head

    @property
    def labels(self) -> list[str]:
        return self.head.labels

    def features(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = self.encoder(**batch).last_hidden_state
            pooled = mean_pool(hidden, batch["attention_mask"]).numpy()
        return np.concatenate([pooled, lexicon_features(texts)], axis=1)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        return self.head.probabilities(self.features(texts))

    @classmethod
    def load(cls, directory: Path, base: str = "", int8: bool = False) -> SentimentModel:
        """The adapter in `directory` merged into the base encoder (the packaged MiniLM unless `base`), its
        unchanged tensors shared with the router's encoder; one per process for the same files."""
        key = ("sentiment", files_key(directory), base, int8)
        return shared_model(key, lambda: cls._load(directory, base, int8))

    @classmethod
    def _load(cls, directory: Path, base: str, int8: bool) -> SentimentModel:
        """The tokenizer is the model's own: a fast tokenizer's padding and truncation settings are state
        that calls with other settings (the embedder's) would race on."""
        from transformers import AutoTokenizer

        head = SentimentHead.load(directory / CLASSIFIER_FILE)
        encoder = load_adapted(lambda encoder: encoder, directory, "sentiment", base, int8)
        return cls(AutoTokenizer.from_pretrained(str(base_encoder_path(base))), encoder, head)


class _HeadOnEmbedding:
    """The cheap backend: the head applied to the router's vector (or a fresh one for direct calls)."""

    def __init__(self, encode: Encoder, head: SentimentHead) -> None:
        self._encode = encode
        self.head = head
        self.labels = head.labels

    def probabilities_for(self, items: Sequence[AgentInput]) -> np.ndarray:
        vectors: list[np.ndarray | None] = [item.embedding for item in items]
        missing = [i for i, v in enumerate(vectors) if v is None]
        if missing:
            for i, vec in zip(missing, self._encode([items[i].text for i in missing]), strict=True):
                vectors[i] = vec
        return self.head.probabilities(np.stack([v for v in vectors if v is not None]))


class SentimentAgent:
    """negative / neutral / positive, the calibrated class probability as confidence."""

    def __init__(
        self,
        encode: Encoder,
        backend: Backend = "model",
        path: str | Path | None = None,
        base_encoder: str = "",
        int8: bool = False,
        name: str = "sentiment",
    ) -> None:
        self.name = name
        self.backend = backend
        self._encode = encode
        self._path = Path(path) if path else PACKAGED_MODEL if backend == "model" else PACKAGED_HEAD
        self._base = base_encoder
        self._int8 = int8
        self._model: SentimentModel | _HeadOnEmbedding | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> SentimentModel | _HeadOnEmbedding:
        with self._lock:
            if self._model is None:
                if self.backend == "model":
                    self._model = SentimentModel.load(self._path, self._base, self._int8)
                else:
                    self._model = _HeadOnEmbedding(self._encode, SentimentHead.load(self._path))
            return self._model

    @property
    def card(self) -> dict[str, Any]:
        """How the packaged model was trained and scored (empty for the head)."""
        return read_card(self._path) if self.backend == "model" else {}

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        model = self.model
        if isinstance(model, SentimentModel):
            probs = model.probabilities([item.text for item in items])
        else:
            probs = model.probabilities_for(items)
        return [self._result(row, model.labels) for row in probs]

    def _result(self, row: np.ndarray, labels: list[str]) -> AgentResult:
        best = int(row.argmax())
        return AgentResult(
            agent=self.name,
            output=labels[best],
            details=SentimentOutput(
                label=labels[best],
                probabilities={lab: round(float(p), 4) for lab, p in zip(labels, row, strict=True)},
            ),
            confidence=float(row[best]),
        )
