"""Evaluate the specialists themselves on labelled data: sentiment, entity extraction, translation.

The router evaluation (router/evaluation.py) asks "did the request reach the right specialist?"; this module
asks "is the specialist's answer right?". Each kind has a reader (JSONL, errors name the file and line), an
`evaluate_*` function that runs any `Agent` in batches, and a pydantic report with `summary()` rows for a
table. The metric arithmetic lives in pure helpers (`span_scores`, `translation_scores`) so it is tested
without models.

Escalation follows the router's own rule (`check_specialist`): an answer escalates when the agent declines
(`supported=False`) or, given `min_confidence`, when its confidence is below it. Scores always cover every
row, declined ones included (as wrong / empty), so a specialist cannot look better by declining more. The
accuracy of kept and of escalated answers, and how many times as often escalated ones are wrong, say whether
`min_confidence` escalates the wrong answers or random ones. Reference models (`references`: VADER, bare
spaCy) run on the same rows, so each specialist is read beside what it has to beat.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel

from slm_router.agents.base import (
    Agent,
    AgentError,
    AgentInput,
    AgentResult,
    Entity,
    ExtractionOutput,
    TranslationOutput,
)
from slm_router.extras import require
from slm_router.router.core.calibration import expected_calibration_error
from slm_router.router.core.rules import check_specialist
from slm_router.router.ops.training import f1_scores, read_jsonl

SENTIMENT_LABELS = ("negative", "neutral", "positive")
BATCH_SIZE = 64

LabelMap = Mapping[str, str | Sequence[str]]
"""Predicted label -> the data label(s) it stands for; several when the agent's label is coarser."""

WNUT17_LABEL_MAP: dict[str, tuple[str, ...]] = {
    "PERSON": ("person",),
    "GPE": ("location",),
    "LOC": ("location",),
    "FAC": ("location",),
    "ORG": ("corporation", "group"),
    "PRODUCT": ("product",),
    "WORK_OF_ART": ("creative-work",),
}
"""spaCy (OntoNotes) labels -> WNUT-17 labels, the default for `evaluate_entities`.

OntoNotes ORG covers both WNUT `corporation` (Google) and `group` (bands, teams, parties), so an ORG span
counts as right for either; a wrong ORG counts as a false `corporation` (the first listed). Mapping ORG to
one of them would score a correct span with an undecidable label as both a false positive and a miss.
FAC and WORK_OF_ART are listed for other spaCy setups; our extractor does not emit them (agents/extraction.py
SPACY_LABELS), so WNUT `creative-work` can only be missed. Labels not mapped here (DATE, MONEY, EMAIL,
ORDER_ID, ...) are entity types WNUT does not annotate: such predictions are ignored, not counted as false
positives, and reported as `ignored_predictions`.
"""

CONLL2003_LABEL_MAP: dict[str, tuple[str, ...]] = {
    "PERSON": ("PER",),
    "GPE": ("LOC",),
    "LOC": ("LOC",),
    "FAC": ("LOC",),
    "ORG": ("ORG",),
    "NORP": ("MISC",),
    "EVENT": ("MISC",),
    "PRODUCT": ("MISC",),
    "WORK_OF_ART": ("MISC",),
    "LANGUAGE": ("MISC",),
    "LAW": ("MISC",),
}
"""spaCy (OntoNotes) labels -> CoNLL-2003 PER / LOC / ORG / MISC.

CoNLL's MISC gathers nationalities (NORP: "German"), events, products and works; DATE, MONEY, CARDINAL and
the support patterns have no CoNLL type and are ignored, as for WNUT-17.
"""

LABEL_MAP_PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "wnut17": WNUT17_LABEL_MAP,
    "conll2003": CONLL2003_LABEL_MAP,
}
"""Label maps by data set name, for `slm-router eval --entities FILE --label-map NAME`."""


# ---------------------------------------------------------------------------------------------- reading


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key!r} must be a string, not {type(value).__name__}")
    return value


class SentimentRow(NamedTuple):
    text: str
    label: str


def read_sentiment(path: Path, labels: Collection[str] | None = SENTIMENT_LABELS) -> list[SentimentRow]:
    """Rows `{"text", "label"}` (or `"sentiment"`), labels lower-cased; with `labels`, any other label is an
    error on its line (a file with "pos" or "4" would otherwise score 0 without saying why)."""

    def parse(data: dict[str, Any]) -> SentimentRow:
        key = "label" if data.get("label") is not None else "sentiment"
        label = _text(data, key).strip().lower()
        if not label or (labels is not None and label not in labels):
            raise ValueError(f"label {label!r} is not one of {sorted(labels or ())}")
        return SentimentRow(_text(data, "text"), label)

    keys = "'text' and 'label' (or 'sentiment')"
    return read_jsonl(path, parse, keys + (f" in {sorted(labels)}" if labels is not None else ""))


class Span(NamedTuple):
    """A labelled character span, end exclusive."""

    start: int
    end: int
    label: str


class EntityRow(NamedTuple):
    text: str
    entities: list[Span]


def read_entities(path: Path) -> list[EntityRow]:
    """Rows `{"text", "entities": [{"start", "end", "label", "text"?}]}`; offsets must lie inside the text
    and, when an entity gives its text, select exactly it (catches end-inclusive or token offsets)."""

    def parse(data: dict[str, Any]) -> EntityRow:
        text = _text(data, "text")
        spans = []
        for e in data["entities"]:
            start, end, label = e["start"], e["end"], _text(e, "label")
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
                raise ValueError(f"span {start}..{end} is not inside the text ({len(text)} chars)")
            if e.get("text") is not None and text[start:end] != e["text"]:
                raise ValueError(f"text[{start}:{end}] is {text[start:end]!r}, the entity says {e['text']!r}")
            spans.append(Span(start, end, label))
        return EntityRow(text, spans)

    return read_jsonl(path, parse, "'text' and 'entities' with character offsets 'start', 'end' and 'label'")


class TranslationPair(NamedTuple):
    source: str
    reference: str


def read_translation(path: Path, source: str, target: str) -> list[TranslationPair]:
    """Parallel rows keyed by language code (`{"en": ..., "pt": ...}`, either direction from one file) or
    generic `{"source", "target"}` rows already in the direction source -> target."""

    def parse(data: dict[str, Any]) -> TranslationPair:
        if source in data or target in data:
            return TranslationPair(_text(data, source), _text(data, target))
        return TranslationPair(_text(data, "source"), _text(data, "target"))

    return read_jsonl(path, parse, f"keys {source!r} and {target!r}, or 'source' and 'target'")


# ---------------------------------------------------------------------------------------------- running

Progress = Callable[[int], None]
"""Called with the number of rows just finished (e.g. `lambda n: bar.advance(task, n)`)."""


def predict_all(
    agent: Agent,
    items: Sequence[AgentInput],
    batch_size: int = BATCH_SIZE,
    show_progress: bool = False,
    progress: Progress | None = None,
    label: str = "",
) -> tuple[list[AgentResult], float]:
    """All results in input order and the seconds spent in the agent, calling it in chunks so memory
    stays flat and progress can be shown. One chunk failing fails the evaluation: a score over the rows
    that happened to work would be misleading."""
    from rich.console import Console
    from rich.progress import Progress as Bar

    results: list[AgentResult] = []
    seconds = 0.0
    with Bar(console=Console(stderr=True), disable=not show_progress, transient=True) as bar:
        task = bar.add_task(label or agent.name, total=len(items))
        for i in range(0, len(items), batch_size):
            chunk = list(items[i : i + batch_size])
            start = time.perf_counter()
            out = agent.predict_batch(chunk)
            seconds += time.perf_counter() - start
            if len(out) != len(chunk):
                raise AgentError(agent.name, f"returned {len(out)} results for {len(chunk)} inputs")
            results += out
            bar.advance(task, len(chunk))
            if progress is not None:
                progress(len(chunk))
    return results, seconds


def _escalates(result: AgentResult, min_confidence: float | None) -> bool:
    """The router's rule, so "kept" here means what the graph would keep."""
    return (
        check_specialist(result.confidence, result.supported, result.note, min_confidence, "eval") is not None
    )


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rate(count: int, total: int) -> str:
    return f"{count} ({count / total:.1%})" if total else str(count)


class Escalation(NamedTuple):
    escalated: int
    kept_accuracy: float | None
    """None when the router keeps no answer."""
    escalated_accuracy: float | None
    """None when it escalates none."""
    escalated_error_ratio: float | None
    """Error rate of escalated answers / error rate of kept ones; None when either group is empty or no kept
    answer is wrong (the ratio has no finite value)."""


def escalation_split(correct: np.ndarray, kept: np.ndarray) -> Escalation:
    """Accuracy of the answers the router keeps and of those it escalates. `min_confidence` is worth its
    fallback calls when escalated answers are wrong several times as often as kept ones; a ratio near 1
    means the cascade escalates at random."""
    correct, kept = np.asarray(correct, dtype=float), np.asarray(kept, dtype=bool)
    kept_acc = float(correct[kept].mean()) if kept.any() else None
    escalated_acc = float(correct[~kept].mean()) if (~kept).any() else None
    ratio = None
    if kept_acc is not None and escalated_acc is not None and kept_acc < 1.0:
        ratio = round((1.0 - escalated_acc) / (1.0 - kept_acc), 2)
    return Escalation(
        escalated=int((~kept).sum()),
        kept_accuracy=None if kept_acc is None else round(kept_acc, 4),
        escalated_accuracy=None if escalated_acc is None else round(escalated_acc, 4),
        escalated_error_ratio=ratio,
    )


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _escalation_rows(
    split: Escalation | SentimentEval | EntityEval, rows: int, min_confidence: float | None
) -> list[tuple[str, str]]:
    return [
        (f"escalated (min confidence {_fmt(min_confidence, 2)})", _rate(split.escalated, rows)),
        ("accuracy of kept answers", _fmt(split.kept_accuracy)),
        ("accuracy of escalated answers", _fmt(split.escalated_accuracy)),
        ("escalated answers wrong x times as often as kept", _ratio(split.escalated_error_ratio)),
    ]


class Comparison(BaseModel):
    """The specialist and the reference models side by side: a header and one row per metric."""

    header: list[str]
    rows: list[list[str]]


# -------------------------------------------------------------------------------------------- sentiment


class ReferenceSentiment(BaseModel):
    """A reference model's scores on the specialist's rows."""

    accuracy: float
    macro_f1: float
    per_class_f1: dict[str, float]
    confusion: dict[str, dict[str, int]]
    seconds: float


class SentimentEval(BaseModel):
    rows: int
    accuracy: float
    macro_f1: float
    per_class_f1: dict[str, float]
    confusion: dict[str, dict[str, int]]
    """gold label -> predicted label -> rows."""
    ece: float
    min_confidence: float | None
    escalated: int
    """Declined, or below `min_confidence`; still scored (as the agent answered, or wrong if declined)."""
    kept_accuracy: float | None
    """Accuracy on the rows the router would keep; None when it keeps none."""
    escalated_accuracy: float | None
    """Accuracy on the rows the router would escalate; None when it escalates none."""
    escalated_error_ratio: float | None
    """How many times as often escalated answers are wrong as kept ones (`escalation_split`)."""
    seconds: float
    references: dict[str, ReferenceSentiment] = {}
    """Reference models (e.g. VADER) on the same rows, by name."""

    def summary(self) -> list[tuple[str, str]]:
        rows = [
            ("rows", str(self.rows)),
            ("accuracy", _fmt(self.accuracy)),
            ("macro-F1", _fmt(self.macro_f1)),
            *((f"F1 {label}", _fmt(f1)) for label, f1 in self.per_class_f1.items()),
            ("ECE", _fmt(self.ece)),
            *_escalation_rows(self, self.rows, self.min_confidence),
        ]
        return [*rows, ("seconds", f"{self.seconds:.1f}")]

    def comparison(self, name: str = "specialist") -> Comparison | None:
        """Accuracy, macro-F1 and per-class F1 of the specialist (`name`) and each reference; None without
        references. Only the specialist's confidence is calibrated, so ECE is its alone."""
        if not self.references:
            return None
        models: list[SentimentEval | ReferenceSentiment] = [self, *self.references.values()]
        classes = sorted({c for m in models for c in m.per_class_f1})
        rows = [
            ["accuracy", *(_fmt(m.accuracy) for m in models)],
            ["macro-F1", *(_fmt(m.macro_f1) for m in models)],
            *([f"F1 {c}", *(_fmt(m.per_class_f1.get(c)) for m in models)] for c in classes),
            ["ECE", _fmt(self.ece), *("-" for _ in self.references)],
            ["seconds", *(f"{m.seconds:.1f}" for m in models)],
        ]
        return Comparison(header=["", name, *self.references], rows=rows)


class LabelScores(NamedTuple):
    accuracy: float
    macro_f1: float
    per_class_f1: dict[str, float]
    confusion: dict[str, dict[str, int]]


def label_scores(gold: Sequence[str], predicted: Sequence[str | None]) -> LabelScores:
    """Accuracy, macro-F1 over the gold and predicted labels (scikit-learn's `f1_score`), per-class F1 and
    the confusion counts as a sparse gold -> predicted mapping; a `None` prediction (declined) is wrong and
    shows as "(declined)"."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    pred = [p or "" for p in predicted]
    classes = sorted(set(gold) | (set(pred) - {""}))
    f1 = f1_scores(gold, pred, classes)
    confusion: dict[str, dict[str, int]] = {g: {} for g in sorted(set(gold))}
    for (g, p), n in sorted(Counter(zip(gold, pred, strict=True)).items()):
        confusion[g][p or "(declined)"] = n
    hits = sum(g == p for g, p in zip(gold, pred, strict=True))
    return LabelScores(
        accuracy=round(hits / len(gold), 4) if gold else 0.0,
        macro_f1=f1.macro,
        per_class_f1=f1.per_class,
        confusion=confusion,
    )


def evaluate_sentiment(
    rows: Sequence[SentimentRow],
    agent: Agent,
    min_confidence: float | None = None,
    batch_size: int = BATCH_SIZE,
    show_progress: bool = False,
    progress: Progress | None = None,
    references: Sequence[Agent] = (),
) -> SentimentEval:
    """`label_scores` of the agent's labels, the ECE of its confidence, how many answers the router would
    escalate at `min_confidence` (still scored: a declined row counts as wrong) and the accuracy of kept
    and escalated answers; each of `references` (e.g. `references.VaderReference`) is scored on the same
    rows."""
    items = [AgentInput(text=r.text) for r in rows]
    results, seconds = predict_all(agent, items, batch_size, show_progress, progress, "sentiment")
    gold = [r.label for r in rows]
    pred = _sentiment_labels(results)
    scores = label_scores(gold, pred)
    correct = np.array([p == g for p, g in zip(pred, gold, strict=True)], dtype=float)
    kept = np.array([not _escalates(r, min_confidence) for r in results], dtype=bool)
    split = escalation_split(correct, kept)
    compared = {}
    for reference in references:
        ref_results, ref_seconds = predict_all(reference, items, batch_size, show_progress, None)
        ref = label_scores(gold, _sentiment_labels(ref_results))
        compared[reference.name] = ReferenceSentiment(**ref._asdict(), seconds=round(ref_seconds, 3))
    return SentimentEval(
        rows=len(rows),
        accuracy=scores.accuracy,
        macro_f1=scores.macro_f1,
        per_class_f1=scores.per_class_f1,
        confusion=scores.confusion,
        ece=round(expected_calibration_error(np.array([r.confidence for r in results]), correct), 4),
        min_confidence=min_confidence,
        escalated=split.escalated,
        kept_accuracy=split.kept_accuracy,
        escalated_accuracy=split.escalated_accuracy,
        escalated_error_ratio=split.escalated_error_ratio,
        seconds=round(seconds, 3),
        references=compared,
    )


def _sentiment_labels(results: Sequence[AgentResult]) -> list[str | None]:
    return [r.output.strip().lower() if r.supported else None for r in results]


# --------------------------------------------------------------------------------------------- entities


class PRF(BaseModel):
    precision: float
    recall: float
    f1: float
    gold: int
    predicted: int
    correct: int


def prf(correct: int, predicted: int, gold: int) -> PRF:
    """Precision, recall, F1 from match counts; a ratio with nothing to divide by is 0.0 (scikit-learn's
    `zero_division=0`), and the counts are kept next to it so "0 of 0" is not mistaken for a failure.

    Written out because the counts are of character spans (`span_scores`): scikit-learn scores one label per
    row, and seqeval (not a dependency) scores BIO token sequences, which character offsets from spaCy, regex
    patterns and the tagger would first have to be forced into."""
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PRF(
        precision=round(precision, 4),
        recall=round(recall, 4),
        f1=round(f1, 4),
        gold=gold,
        predicted=predicted,
        correct=correct,
    )


class SpanScores(NamedTuple):
    micro: PRF
    per_label: dict[str, PRF]


def span_scores(gold: Sequence[Iterable[Span]], predicted: Sequence[Iterable[Span]]) -> SpanScores:
    """Exact match (start, end and label) per row, micro-averaged over all rows, and per label.

    Spans are multisets per row: a duplicate prediction is a false positive, not a second hit.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold rows but {len(predicted)} predicted rows")
    gold_n: Counter[str] = Counter()
    pred_n: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    for g_row, p_row in zip(gold, predicted, strict=True):
        g, p = Counter(g_row), Counter(p_row)
        gold_n.update(s.label for s in g.elements())
        pred_n.update(s.label for s in p.elements())
        hits.update(s.label for s in (g & p).elements())
    per_label = {label: prf(hits[label], pred_n[label], gold_n[label]) for label in sorted(gold_n | pred_n)}
    micro = prf(sum(hits.values()), sum(pred_n.values()), sum(gold_n.values()))
    return SpanScores(micro, per_label)


def unlabelled(rows: Sequence[Iterable[Span]]) -> list[list[Span]]:
    """The same spans with the label dropped, for boundary-only scoring."""
    return [[Span(s.start, s.end, "") for s in row] for row in rows]


def normalise_label_map(label_map: LabelMap) -> dict[str, tuple[str, ...]]:
    return {k: (v,) if isinstance(v, str) else tuple(v) for k, v in label_map.items()}


def parse_label_map(spec: str) -> dict[str, tuple[str, ...]]:
    """ "PERSON=person,ORG=corporation|group" -> a label map (for a command-line option)."""
    out: dict[str, tuple[str, ...]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        targets = tuple(filter(None, (t.strip() for t in value.split("|"))))
        if not sep or not key.strip() or not targets:
            raise ValueError(
                f"label map entry {part!r} must look like PREDICTED=gold or PREDICTED=gold1|gold2"
            )
        out[key.strip()] = targets
    return out


def resolve_label_map(spec: str) -> dict[str, tuple[str, ...]]:
    """A preset name (`LABEL_MAP_PRESETS`, any case) or a "PREDICTED=gold,..." spec (`parse_label_map`);
    anything else is an error that lists the presets."""
    preset = LABEL_MAP_PRESETS.get(spec.strip().lower())
    if preset is not None:
        return dict(preset)
    if "=" not in spec:
        raise ValueError(
            f"unknown label map {spec!r}: give a preset ({', '.join(sorted(LABEL_MAP_PRESETS))}) "
            "or a mapping such as PERSON=person,ORG=corporation|group"
        )
    return parse_label_map(spec)


def map_predictions(
    entities: Iterable[Entity | Span], gold: Iterable[Span], label_map: Mapping[str, tuple[str, ...]]
) -> tuple[list[Span], Counter[str]]:
    """Predictions in data labels, and the count per unmapped predicted label (ignored, not scored).

    A label mapping to several data labels takes the one the gold span at the same offsets has, if any
    (the agent's coarser label was right), else the first.
    """
    gold_at: dict[tuple[int, int], set[str]] = {}
    for s in gold:
        gold_at.setdefault((s.start, s.end), set()).add(s.label)
    mapped, ignored = [], Counter[str]()
    for e in entities:
        targets = label_map.get(e.label)
        if not targets:
            ignored[e.label] += 1
            continue
        here = gold_at.get((e.start, e.end), set())
        mapped.append(Span(e.start, e.end, next((t for t in targets if t in here), targets[0])))
    return mapped, ignored


class ReferenceEntities(BaseModel):
    """A reference model's scores on the specialist's rows, with the same label map."""

    micro: PRF
    per_label: dict[str, PRF]
    unlabelled: PRF
    row_accuracy: float
    ignored_predictions: int
    seconds: float


class EntityEval(BaseModel):
    rows: int
    gold_entities: int
    predicted_entities: int
    """Mapped predictions only: these are scored."""
    ignored_predictions: int
    ignored_labels: dict[str, int]
    """Predicted labels with no mapping and how often each came; not counted as false positives."""
    micro: PRF
    per_label: dict[str, PRF]
    unlabelled: PRF
    """Exact span match ignoring the label (mapped predictions only): boundaries, whatever the label set."""
    unreachable_labels: list[str]
    """Gold labels that no mapped prediction can have: their recall is 0 by construction."""
    label_map: dict[str, list[str]]
    row_accuracy: float
    """Rows whose mapped predicted spans equal the gold spans exactly (a row with no gold and no mapped
    prediction is right): what "the answer was right" means for an extraction, per request."""
    ece: float
    """Of the agent's confidence against row correctness."""
    min_confidence: float | None
    escalated: int
    kept_accuracy: float | None
    """Row accuracy on the rows the router would keep; None when it keeps none."""
    escalated_accuracy: float | None
    escalated_error_ratio: float | None
    """How many times as often escalated rows are wrong as kept ones (`escalation_split`)."""
    seconds: float
    references: dict[str, ReferenceEntities] = {}
    """Reference models (e.g. bare spaCy) on the same rows with the same label map, by name."""

    def comparison(self, name: str = "specialist") -> Comparison | None:
        """Micro P/R/F1, per-label F1, unlabelled span F1 and row accuracy of the specialist (`name`) and
        each reference; None without references."""
        if not self.references:
            return None
        models: list[EntityEval | ReferenceEntities] = [self, *self.references.values()]
        labels = sorted({label for m in models for label in m.per_label})
        empty = prf(0, 0, 0)
        rows = [
            ["precision", *(_fmt(m.micro.precision) for m in models)],
            ["recall", *(_fmt(m.micro.recall) for m in models)],
            ["F1", *(_fmt(m.micro.f1) for m in models)],
            *([f"F1 {label}", *(_fmt(m.per_label.get(label, empty).f1) for m in models)] for label in labels),
            ["unlabelled span F1", *(_fmt(m.unlabelled.f1) for m in models)],
            ["row accuracy (exact span set)", *(_fmt(m.row_accuracy) for m in models)],
            ["ignored predictions (no mapping)", *(str(m.ignored_predictions) for m in models)],
            ["seconds", *(f"{m.seconds:.1f}" for m in models)],
        ]
        return Comparison(header=["", name, *self.references], rows=rows)

    def summary(self) -> list[tuple[str, str]]:
        m, u = self.micro, self.unlabelled
        ignored = ", ".join(f"{k} {v}" for k, v in sorted(self.ignored_labels.items(), key=lambda kv: -kv[1]))
        rows = [
            ("rows", str(self.rows)),
            ("gold entities", str(self.gold_entities)),
            ("predicted entities (mapped)", str(self.predicted_entities)),
            (
                "ignored predictions (no mapping)",
                f"{self.ignored_predictions}" + (f": {ignored}" if ignored else ""),
            ),
            ("precision / recall / F1", f"{_fmt(m.precision)} / {_fmt(m.recall)} / {_fmt(m.f1)}"),
            ("unlabelled span P / R / F1", f"{_fmt(u.precision)} / {_fmt(u.recall)} / {_fmt(u.f1)}"),
            *(
                (f"F1 {label}", f"{_fmt(s.f1)} (P {_fmt(s.precision)}, R {_fmt(s.recall)}, gold {s.gold})")
                for label, s in self.per_label.items()
            ),
        ]
        if self.unreachable_labels:
            rows.append(("labels no prediction maps to", ", ".join(self.unreachable_labels)))
        for label, targets in self.label_map.items():
            if len(targets) > 1:
                note = f"right if the gold is any of {'|'.join(targets)}; a wrong one counts as {targets[0]}"
                rows.append((f"{label} (coarser label)", note))
        rows += [
            ("row accuracy (exact span set)", _fmt(self.row_accuracy)),
            ("ECE (rows)", _fmt(self.ece)),
            *_escalation_rows(self, self.rows, self.min_confidence),
        ]
        return [*rows, ("seconds", f"{self.seconds:.1f}")]


def evaluate_entities(
    rows: Sequence[EntityRow],
    agent: Agent,
    label_map: LabelMap | None = None,
    batch_size: int = BATCH_SIZE,
    show_progress: bool = False,
    progress: Progress | None = None,
    min_confidence: float | None = None,
    references: Sequence[Agent] = (),
) -> EntityEval:
    """Exact span+label micro P/R/F1, per-label scores and unlabelled span scores, after mapping the agent's
    labels to the data's (default `WNUT17_LABEL_MAP`). A declined row predicts nothing. Per row: exact
    span-set accuracy, its ECE and its accuracy on kept and escalated rows at `min_confidence`. Each of
    `references` (e.g. `references.BareSpacyReference`) is scored on the same rows with the same map."""
    mapping = normalise_label_map(WNUT17_LABEL_MAP if label_map is None else label_map)
    items = [AgentInput(text=r.text) for r in rows]
    results, seconds = predict_all(agent, items, batch_size, show_progress, progress, "entities")
    scored = _score_entities(rows, results, agent.name, mapping)
    kept = np.array([not _escalates(r, min_confidence) for r in results], dtype=bool)
    split = escalation_split(scored.correct, kept)
    compared = {}
    for reference in references:
        ref_results, ref_seconds = predict_all(reference, items, batch_size, show_progress, None)
        ref = _score_entities(rows, ref_results, reference.name, mapping)
        compared[reference.name] = ReferenceEntities(
            micro=ref.labelled.micro,
            per_label=ref.labelled.per_label,
            unlabelled=ref.unlabelled,
            row_accuracy=round(float(ref.correct.mean()), 4) if len(rows) else 0.0,
            ignored_predictions=sum(ref.ignored.values()),
            seconds=round(ref_seconds, 3),
        )
    gold = [r.entities for r in rows]
    reachable = {t for targets in mapping.values() for t in targets}
    confidence = np.array([r.confidence for r in results])
    return EntityEval(
        rows=len(rows),
        gold_entities=scored.labelled.micro.gold,
        predicted_entities=scored.labelled.micro.predicted,
        ignored_predictions=sum(scored.ignored.values()),
        ignored_labels=dict(scored.ignored),
        micro=scored.labelled.micro,
        per_label=scored.labelled.per_label,
        unlabelled=scored.unlabelled,
        unreachable_labels=sorted({s.label for row in gold for s in row} - reachable),
        label_map={k: list(v) for k, v in mapping.items()},
        row_accuracy=round(float(scored.correct.mean()), 4) if len(rows) else 0.0,
        ece=round(expected_calibration_error(confidence, scored.correct), 4),
        min_confidence=min_confidence,
        escalated=split.escalated,
        kept_accuracy=split.kept_accuracy,
        escalated_accuracy=split.escalated_accuracy,
        escalated_error_ratio=split.escalated_error_ratio,
        seconds=round(seconds, 3),
        references=compared,
    )


class _EntityScores(NamedTuple):
    labelled: SpanScores
    unlabelled: PRF
    correct: np.ndarray
    """1.0 per row whose mapped predictions equal its gold spans (as multisets), else 0.0."""
    ignored: Counter[str]


def _score_entities(
    rows: Sequence[EntityRow],
    results: Sequence[AgentResult],
    agent: str,
    mapping: Mapping[str, tuple[str, ...]],
) -> _EntityScores:
    predicted: list[list[Span]] = []
    ignored: Counter[str] = Counter()
    for row, result in zip(rows, results, strict=True):
        details = result.details
        if result.supported and not isinstance(details, ExtractionOutput):
            raise AgentError(agent, f"answered {type(details).__name__}, not entities (ExtractionOutput)")
        entities = details.entities if isinstance(details, ExtractionOutput) and result.supported else []
        spans, dropped = map_predictions(entities, row.entities, mapping)
        predicted.append(spans)
        ignored += dropped
    gold = [r.entities for r in rows]
    correct = np.array([Counter(g) == Counter(p) for g, p in zip(gold, predicted, strict=True)], dtype=float)
    return _EntityScores(
        labelled=span_scores(gold, predicted),
        unlabelled=span_scores(unlabelled(gold), unlabelled(predicted)).micro,
        correct=correct,
        ignored=ignored,
    )


# ------------------------------------------------------------------------------------------ translation


class TranslationScores(NamedTuple):
    chrf: float
    bleu: float
    chrf_signature: str
    bleu_signature: str


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> TranslationScores:
    """Corpus-level chrF and BLEU (sacrebleu defaults, 0-100 as published results use), with the
    signatures that make the numbers reproducible."""
    require("sacrebleu", "eval", "translation scores (chrF, BLEU)")
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    chrf, bleu = CHRF(), BLEU()
    hyps, refs = list(hypotheses), [list(references)]
    return TranslationScores(
        chrf=round(chrf.corpus_score(hyps, refs).score, 2),
        bleu=round(bleu.corpus_score(hyps, refs).score, 2),
        chrf_signature=str(chrf.get_signature()),
        bleu_signature=str(bleu.get_signature()),
    )


class TranslationEval(BaseModel):
    direction: str
    rows: int
    chrf: float
    """Over all rows; a declined row is an empty hypothesis (0-100)."""
    bleu: float
    declined: int
    """The agent gave no translation (`supported=False`: no model for the pair, nothing to translate...)."""
    min_confidence: float | None
    low_confidence: int
    """Translated but below `min_confidence`: the router would escalate them; scored as translated."""
    chrf_kept: float | None
    """chrF on the rows the router would keep; None when it keeps none."""
    payload_changed: int
    """Rows where the agent's request parser translated less than the whole source (it read an instruction
    into the sentence); these hurt the score although the model may be fine."""
    backends: dict[str, int]
    signatures: dict[str, str]
    seconds: float

    def summary(self) -> list[tuple[str, str]]:
        return [
            ("direction", self.direction),
            ("rows", str(self.rows)),
            ("chrF (all rows)", _fmt(self.chrf, 2)),
            ("BLEU (all rows)", _fmt(self.bleu, 2)),
            ("declined", _rate(self.declined, self.rows)),
            (f"low confidence (< {_fmt(self.min_confidence, 2)})", _rate(self.low_confidence, self.rows)),
            ("chrF of kept answers", _fmt(self.chrf_kept, 2)),
            ("source not translated whole", str(self.payload_changed)),
            ("backends", ", ".join(f"{k} {v}" for k, v in self.backends.items()) or "-"),
            ("seconds", f"{self.seconds:.1f}"),
        ]


def evaluate_translation(
    rows: Sequence[TranslationPair],
    agent: Agent,
    source: str,
    target: str,
    min_confidence: float | None = None,
    batch_size: int = BATCH_SIZE,
    show_progress: bool = False,
    progress: Progress | None = None,
) -> TranslationEval:
    """chrF and BLEU over every row (declined = empty hypothesis, so declining is never free), plus how many
    rows the router would escalate and chrF on the ones it would keep. Languages are passed as
    `source_language` / `target_language`, as a flow step does (`agents.translation.parse_pair("en-pt")`)."""
    params = {"source_language": source, "target_language": target}
    items = [AgentInput(text=r.source, params=params) for r in rows]
    results, seconds = predict_all(agent, items, batch_size, show_progress, progress, f"{source}-{target}")
    hyps = [r.output if r.supported else "" for r in results]
    refs = [r.reference for r in rows]
    scores = translation_scores(hyps, refs)
    declined = sum(not r.supported for r in results)
    kept = [i for i, r in enumerate(results) if not _escalates(r, min_confidence)]
    details = [r.details for r in results if isinstance(r.details, TranslationOutput)]
    changed = sum(
        d.source_text.strip() != row.source.strip()
        for row, r in zip(rows, results, strict=True)
        if isinstance(d := r.details, TranslationOutput)
    )
    return TranslationEval(
        direction=f"{source}-{target}",
        rows=len(rows),
        chrf=scores.chrf,
        bleu=scores.bleu,
        declined=declined,
        min_confidence=min_confidence,
        low_confidence=len(rows) - declined - len(kept),
        chrf_kept=translation_scores([hyps[i] for i in kept], [refs[i] for i in kept]).chrf if kept else None,
        payload_changed=changed,
        backends=dict(Counter(d.backend for d in details if d.backend)),
        signatures={"chrF": scores.chrf_signature, "BLEU": scores.bleu_signature},
        seconds=round(seconds, 3),
    )
