"""Train the sentiment head on the shared MiniLM embedding, with honest held-out numbers.

Split by a hash of the text (stable across runs and machines): 80% train, 10% calibration (temperature),
10% test (reported, never fitted on).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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
    max_iter: int = 200,
) -> SentimentHead:
    """Class-balanced multinomial logistic regression by full-batch L-BFGS (torch is here for the encoder).

    Balanced weights keep the minority `neutral` class from vanishing (unweighted, its F1 was 0.0).
    """
    import torch

    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    x = torch.from_numpy(np.asarray(vectors, dtype=np.float32))
    counts = torch.bincount(y, minlength=len(classes)).float()
    class_weight = counts.sum() / (len(classes) * counts)
    rows = torch.ones(len(labels)) if sample_weight is None else torch.from_numpy(sample_weight).float()
    rows = rows * class_weight[y]
    rows = rows / rows.mean()
    torch.manual_seed(0)
    linear = torch.nn.Linear(x.shape[1], len(classes))
    optimiser = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        per_row = torch.nn.functional.cross_entropy(linear(x), y, reduction="none")
        loss = (per_row * rows).mean() + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return SentimentHead(
        weights=linear.weight.detach().numpy().copy(),
        bias=linear.bias.detach().numpy().copy(),
        labels=classes,
    )


def macro_f1(gold: list[str], pred: list[str], classes: list[str]) -> dict[str, float]:
    scores = {}
    for c in classes:
        tp = sum(g == c and p == c for g, p in zip(gold, pred, strict=True))
        fp = sum(g != c and p == c for g, p in zip(gold, pred, strict=True))
        fn = sum(g == c and p != c for g, p in zip(gold, pred, strict=True))
        scores[c] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return scores


def _score(head: SentimentHead, vectors: np.ndarray, gold: list[str]) -> SplitScore:
    probs = head.probabilities(vectors)
    pred = [head.labels[i] for i in probs.argmax(axis=1)]
    correct = np.array([p == g for p, g in zip(pred, gold, strict=True)], dtype=float)
    f1 = macro_f1(gold, pred, head.labels)
    return SplitScore(
        rows=len(gold),
        accuracy=round(float(correct.mean()), 4),
        macro_f1=round(float(np.mean(list(f1.values()))), 4),
        ece=round(expected_calibration_error(probs.max(axis=1), correct), 4),
        per_class_f1={k: round(v, 4) for k, v in f1.items()},
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
        tests[name] = _score(head, embedder.encode([t for t, _ in texts]), [lab for _, lab in texts])
    return HeadReport(
        train=len(y_train), calibration=len(y_cal), temperature=round(head.temperature, 4), test=tests
    )
