"""Train the sentiment head on the shared MiniLM embedding, with honest held-out numbers.

Split by a hash of the text (`split_of`): 80% train, 10% calibration (temperature), 10% test (reported,
never fitted on). The fitting and the metrics are scikit-learn's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
from pydantic import BaseModel

from slm_router.agents.sentiment import SentimentHead
from slm_router.router.core.calibration import expected_calibration_error, fit_temperature
from slm_router.router.core.embedder import Embedder

T = TypeVar("T")


class SplitScore(BaseModel):
    rows: int
    accuracy: float
    macro_f1: float
    ece: float
    per_class_f1: dict[str, float]


class HeadReport(BaseModel):
    """Held-out scores per data source: a domain set can be small and must not hide behind the big one."""

    train: int
    calibration: int
    temperature: float
    test: dict[str, SplitScore]


def text_hash(text: str) -> int:
    """The first 8 hex digits of the text's SHA-256: a split by it is stable across runs and machines."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)


def split_of(text: str) -> str:
    """The row's split (train / calibration / test) by `text_hash`, not a seeded shuffle (`train_test_split`):
    a row keeps its split across runs, machines and data growth, so the benches (bench/accuracy.py,
    bench/specialists.py) find the shipped models' held-out rows again, and added rows never move a test row
    into train."""
    bucket = text_hash(text) % 10
    return "test" if bucket == 0 else "calibration" if bucket == 1 else "train"


def read_jsonl(path: Path, parse: Callable[[dict[str, Any]], T], expected: str) -> list[T]:
    """One parsed row per non-blank line; a bad line raises ValueError naming `path:line` and what was
    expected, so a data problem is fixed in the file rather than debugged in the metrics."""
    rows: list[T] = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise TypeError(f"a JSON object, not {type(data).__name__}")
                rows.append(parse(data))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"{path}:{n}: expected {expected}: {exc!r}") from None
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def read_labelled(path: Path, label_keys: tuple[str, ...] = ("label",)) -> list[tuple[str, str]]:
    """(text, label) per JSONL row, the label from the first of `label_keys` present; errors name the line."""

    def parse(row: dict[str, Any]) -> tuple[str, str]:
        label = next((row[k] for k in label_keys if row.get(k) is not None), None)
        if label is None:
            raise KeyError(label_keys)
        return str(row["text"]), str(label)

    return read_jsonl(path, parse, f"JSON with 'text' and one of {list(label_keys)}")


def fit_head(
    vectors: np.ndarray,
    labels: list[str],
    sample_weight: np.ndarray | None = None,
    l2: float = 1e-4,
) -> SentimentHead:
    """Class-balanced multinomial logistic regression (scikit-learn, lbfgs) on the row-weighted data.

    Balanced weights keep the minority `neutral` class from vanishing (unweighted, its F1 was 0.0). `l2` is
    the penalty beside the mean row loss (`C = 1 / (2 * l2 * rows)`), so it means the same at any size.
    """
    from sklearn.linear_model import LogisticRegression

    rows = np.ones(len(labels)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    model = LogisticRegression(C=1.0 / (2 * l2 * len(labels)), class_weight="balanced", max_iter=1000)
    model.fit(np.asarray(vectors, dtype=np.float32), labels, sample_weight=rows / rows.mean())
    weights, bias = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # scikit-learn keeps one row for two classes; softmax([0, z]) = sigmoid(z)
        weights, bias = np.vstack([np.zeros_like(weights), weights]), np.concatenate([[0.0], bias])
    return SentimentHead(
        weights=weights.astype(np.float32),
        bias=bias.astype(np.float32),
        labels=[str(c) for c in model.classes_],
    )


class F1(NamedTuple):
    macro: float
    per_class: dict[str, float]


def f1_scores(gold: Sequence[str], pred: Sequence[str], classes: Sequence[str]) -> F1:
    """Macro-F1 and F1 per class of `classes`, rounded to 4 places (scikit-learn's `f1_score`); a class
    nobody has or predicts scores 0.0, and so does every class when there are no rows."""
    from sklearn.metrics import f1_score

    if not gold or not classes:
        return F1(0.0, {c: 0.0 for c in classes})
    scores = f1_score(list(gold), list(pred), labels=list(classes), average=None, zero_division=0.0)
    per_class = {c: round(float(f), 4) for c, f in zip(classes, scores, strict=True)}
    return F1(round(float(scores.mean()), 4), per_class)


def split_score(probs: np.ndarray, labels: Sequence[str], gold: Sequence[str]) -> SplitScore:
    """Accuracy, macro-F1, ECE of the top probability and per-class F1 of class probabilities (columns in
    the order of `labels`) against the gold labels."""
    pred = [labels[i] for i in probs.argmax(axis=1)]
    correct = np.array([p == g for p, g in zip(pred, gold, strict=True)], dtype=float)
    f1 = f1_scores(gold, pred, labels)
    return SplitScore(
        rows=len(gold),
        accuracy=round(float(correct.mean()), 4) if len(gold) else 0.0,
        macro_f1=f1.macro,
        ece=round(expected_calibration_error(probs.max(axis=1), correct), 4),
        per_class_f1=f1.per_class,
    )


def train_sentiment_head(
    sources: dict[str, tuple[Path, float]], out: Path, embedder: Embedder, show_progress: bool = True
) -> HeadReport:
    """sources: name -> (JSONL file, row weight). Each source is split 80/10/10 by text hash."""
    parts: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for name, (path, _) in sources.items():
        parts[name] = {"train": [], "calibration": [], "test": []}
        for text, label in read_labelled(path):
            parts[name][split_of(text)].append((text, label))

    def stacked(split: str) -> tuple[np.ndarray, list[str], np.ndarray]:
        rows = [(row, sources[name][1]) for name in sources for row in parts[name][split]]
        vectors = embedder.encode([text for (text, _), _ in rows], show_progress=show_progress)
        return vectors, [label for (_, label), _ in rows], np.array([w for _, w in rows], dtype=np.float32)

    x_train, y_train, w_train = stacked("train")
    head = fit_head(x_train, y_train, w_train)
    x_cal, y_cal, _ = stacked("calibration")
    head.temperature = fit_temperature(
        x_cal @ head.weights.T + head.bias, np.array([head.labels.index(y) for y in y_cal])
    )
    head.save(out)
    tests = {}
    for name in sources:
        texts = parts[name]["test"]
        tests[name] = split_score(
            head.probabilities(embedder.encode([t for t, _ in texts])), head.labels, [lab for _, lab in texts]
        )
    return HeadReport(
        train=len(y_train), calibration=len(y_cal), temperature=round(head.temperature, 4), test=tests
    )
