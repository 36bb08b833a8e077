"""Evaluate the specialists themselves on labelled data: sentiment, entity extraction, translation.

The router evaluation (router/evaluation.py) asks "did the request reach the right specialist?"; this module
asks "is the specialist's answer right?". Each kind has a reader (JSONL, errors name the file and line), an
`evaluate_*` function that runs any `Agent` in batches, and a pydantic report with `summary()` rows for a
table. The metric arithmetic lives in pure helpers (`span_scores`, `translation_scores`) so it is tested
without models.

Escalation follows the router's own rule (`check_specialist`): an answer escalates when the agent declines
(`supported=False`) or, given `min_confidence`, when its confidence is below it. Scores always cover every
row, declined ones included (as wrong / empty), so a specialist cannot look better by declining more.
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
from slm_router.router.core.calibration import expected_calibration_error
from slm_router.router.core.rules import check_specialist
from slm_router.router.ops.training import macro_f1, read_jsonl

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


# -------------------------------------------------------------------------------------------- sentiment


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
    seconds: float

    def summary(self) -> list[tuple[str, str]]:
        rows = [
            ("rows", str(self.rows)),
            ("accuracy", _fmt(self.accuracy)),
            ("macro-F1", _fmt(self.macro_f1)),
            *((f"F1 {label}", _fmt(f1)) for label, f1 in self.per_class_f1.items()),
            ("ECE", _fmt(self.ece)),
            (f"escalated (min confidence {_fmt(self.min_confidence, 2)})", _rate(self.escalated, self.rows)),
            ("accuracy of kept answers", _fmt(self.kept_accuracy)),
        ]
        return [*rows, ("seconds", f"{self.seconds:.1f}")]


class LabelScores(NamedTuple):
    accuracy: float
    macro_f1: float
    per_class_f1: dict[str, float]
    confusion: dict[str, dict[str, int]]


def label_scores(gold: Sequence[str], predicted: Sequence[str | None]) -> LabelScores:
    """Accuracy, macro-F1 over the gold and predicted labels (as scikit-learn does), per-class F1 and the
    confusion counts; a `None` prediction (declined) is wrong and shows as "(declined)"."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    pred = [p or "" for p in predicted]
    classes = sorted(set(gold) | (set(pred) - {""}))
    f1 = macro_f1(list(gold), pred, classes)
    confusion: dict[str, dict[str, int]] = {g: {} for g in sorted(set(gold))}
    for (g, p), n in sorted(Counter(zip(gold, pred, strict=True)).items()):
        confusion[g][p or "(declined)"] = n
    hits = sum(g == p for g, p in zip(gold, pred, strict=True))
    return LabelScores(
        accuracy=round(hits / len(gold), 4) if gold else 0.0,
        macro_f1=round(float(np.mean(list(f1.values()))), 4) if f1 else 0.0,
        per_class_f1={k: round(v, 4) for k, v in f1.items()},
        confusion=confusion,
    )


def evaluate_sentiment(
    rows: Sequence[SentimentRow],
    agent: Agent,
    min_confidence: float | None = None,
    batch_size: int = BATCH_SIZE,
    show_progress: bool = False,
    progress: Progress | None = None,
) -> SentimentEval:
    """`label_scores` of the agent's labels, the ECE of its confidence, and how many answers the router
    would escalate at `min_confidence` (still scored: a declined row counts as wrong)."""
    results, seconds = predict_all(
        agent, [AgentInput(text=r.text) for r in rows], batch_size, show_progress, progress, "sentiment"
    )
    gold = [r.label for r in rows]
    pred = [r.output.strip().lower() if r.supported else None for r in results]
    scores = label_scores(gold, pred)
    correct = np.array([p == g for p, g in zip(pred, gold, strict=True)], dtype=float)
    kept = np.array([not _escalates(r, min_confidence) for r in results], dtype=bool)
    return SentimentEval(
        rows=len(rows),
        accuracy=scores.accuracy,
        macro_f1=scores.macro_f1,
        per_class_f1=scores.per_class_f1,
        confusion=scores.confusion,
        ece=round(expected_calibration_error(np.array([r.confidence for r in results]), correct), 4),
        min_confidence=min_confidence,
        escalated=int((~kept).sum()),
        kept_accuracy=round(float(correct[kept].mean()), 4) if kept.any() else None,
        seconds=round(seconds, 3),
    )


# --------------------------------------------------------------------------------------------- entities


class PRF(BaseModel):
    precision: float
    recall: float
    f1: float
    gold: int
    predicted: int
    correct: int


def prf(correct: int, predicted: int, gold: int) -> PRF:
    """Precision, recall, F1; a ratio with nothing to divide by is 0.0 (as in router/training.py), and the
    counts are kept next to it so "0 of 0" is not mistaken for a failure."""
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
    seconds: float

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
        return [*rows, ("seconds", f"{self.seconds:.1f}")]


def evaluate_entities(
    rows: Sequence[EntityRow],
    agent: Agent,
    label_map: LabelMap | None = None,
    batch_size: int = BATCH_SIZE,
    show_progress: bool = False,
    progress: Progress | None = None,
) -> EntityEval:
    """Exact span+label micro P/R/F1, per-label scores and unlabelled span scores, after mapping the agent's
    labels to the data's (default `WNUT17_LABEL_MAP`). A declined row predicts nothing."""
    mapping = normalise_label_map(WNUT17_LABEL_MAP if label_map is None else label_map)
    results, seconds = predict_all(
        agent, [AgentInput(text=r.text) for r in rows], batch_size, show_progress, progress, "entities"
    )
    predicted: list[list[Span]] = []
    ignored: Counter[str] = Counter()
    for row, result in zip(rows, results, strict=True):
        details = result.details
        if result.supported and not isinstance(details, ExtractionOutput):
            raise AgentError(
                agent.name, f"answered {type(details).__name__}, not entities (ExtractionOutput)"
            )
        entities = details.entities if isinstance(details, ExtractionOutput) and result.supported else []
        spans, dropped = map_predictions(entities, row.entities, mapping)
        predicted.append(spans)
        ignored += dropped
    gold = [r.entities for r in rows]
    labelled = span_scores(gold, predicted)
    reachable = {t for targets in mapping.values() for t in targets}
    return EntityEval(
        rows=len(rows),
        gold_entities=labelled.micro.gold,
        predicted_entities=labelled.micro.predicted,
        ignored_predictions=sum(ignored.values()),
        ignored_labels=dict(ignored),
        micro=labelled.micro,
        per_label=labelled.per_label,
        unlabelled=span_scores(unlabelled(gold), unlabelled(predicted)).micro,
        unreachable_labels=sorted({s.label for row in gold for s in row} - reachable),
        label_map={k: list(v) for k, v in mapping.items()},
        seconds=round(seconds, 3),
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
