"""Train the sentiment head on the shared MiniLM embedding, with honest held-out numbers.

Split by a hash of the text (stable across runs and machines): 80% train, 10% calibration (temperature),
10% test (reported, never fitted on).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from agents.sentiment import SentimentHead
from router.calibration import expected_calibration_error, fit_temperature
from router.embedder import Embedder


class HeadReport(BaseModel):
    train: int
    calibration: int
    test: int
    temperature: float
    test_accuracy: float
    test_macro_f1: float
    test_ece: float
    per_class_f1: dict[str, float]


def split_of(text: str) -> str:
    bucket = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 10
    return "test" if bucket == 0 else "calibration" if bucket == 1 else "train"


def read_labelled(path: Path, text_key: str = "text", label_key: str = "label") -> list[tuple[str, str]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows.append((str(row[text_key]), str(row[label_key])))
            except (json.JSONDecodeError, KeyError) as exc:
                raise ValueError(f"{path}:{n}: expected JSON with {text_key!r} and {label_key!r}: {exc}") from exc
    return rows


def fit_head(vectors: np.ndarray, labels: list[str], l2: float = 1e-4, max_iter: int = 200) -> SentimentHead:
    """Class-balanced multinomial logistic regression by full-batch L-BFGS (torch is here for the encoder).

    Balanced weights keep the minority `neutral` class from vanishing (unweighted, its F1 was 0.0).
    """
    import torch

    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    x = torch.from_numpy(np.asarray(vectors, dtype=np.float32))
    counts = torch.bincount(y, minlength=len(classes)).float()
    weight = counts.sum() / (len(classes) * counts)
    torch.manual_seed(0)
    linear = torch.nn.Linear(x.shape[1], len(classes))
    optimiser = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x), y, weight=weight) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return SentimentHead(weights=linear.weight.detach().numpy().copy(),
                         bias=linear.bias.detach().numpy().copy(), labels=classes)


def macro_f1(gold: list[str], pred: list[str], classes: list[str]) -> dict[str, float]:
    scores = {}
    for c in classes:
        tp = sum(g == c and p == c for g, p in zip(gold, pred, strict=True))
        fp = sum(g != c and p == c for g, p in zip(gold, pred, strict=True))
        fn = sum(g == c and p != c for g, p in zip(gold, pred, strict=True))
        scores[c] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return scores


def train_sentiment_head(data: Path, out: Path, embedder: Embedder, show_progress: bool = True) -> HeadReport:
    rows = read_labelled(data)
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "calibration": [], "test": []}
    for text, label in rows:
        splits[split_of(text)].append((text, label))
    vectors = {name: embedder.encode([t for t, _ in part], show_progress=show_progress)
               for name, part in splits.items()}
    labels = {name: [lab for _, lab in part] for name, part in splits.items()}

    head = fit_head(vectors["train"], labels["train"])
    cal_logits = vectors["calibration"] @ head.weights.T + head.bias
    head.temperature = fit_temperature(cal_logits, np.array([head.labels.index(x) for x in labels["calibration"]]))
    head.save(out)

    probs = head.probabilities(vectors["test"])
    pred = [head.labels[i] for i in probs.argmax(axis=1)]
    correct = np.array([p == g for p, g in zip(pred, labels["test"], strict=True)], dtype=float)
    f1 = macro_f1(labels["test"], pred, head.labels)
    return HeadReport(
        train=len(splits["train"]), calibration=len(splits["calibration"]), test=len(splits["test"]),
        temperature=head.temperature, test_accuracy=float(correct.mean()),
        test_macro_f1=float(np.mean(list(f1.values()))), test_ece=expected_calibration_error(probs.max(axis=1), correct),
        per_class_f1={k: round(v, 4) for k, v in f1.items()},
    )
