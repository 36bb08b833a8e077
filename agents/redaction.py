"""PII redaction for text that leaves the machine (the large-model fallback), and restoring the answer.

Detection is the extraction agent's own (patterns for e-mail, phone and card; spaCy PERSON for names),
so redaction and extraction never disagree about what an e-mail address looks like.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence

from pydantic import BaseModel

from agents.base import Entity
from agents.extraction import ExtractionAgent

DEFAULT_PII_LABELS = frozenset({"EMAIL", "PHONE", "CARD_NUMBER", "PERSON"})

# A placeholder as an LLM may echo it back: "[EMAIL_1]", "[email_1]", "[ EMAIL_1 ]".
_PLACEHOLDER = re.compile(r"\[\s*([A-Za-z_]+_\d+)\s*\]")


class Redaction(BaseModel):
    """Redacted text and what it takes to undo it.

    `mapping` goes placeholder -> original ("[EMAIL_1]" -> "jane@example.com"); a value that occurs twice
    gets one placeholder. `count` is the number of spans replaced, repeats included.
    """

    text: str
    mapping: dict[str, str]
    count: int


def restore(text: str, mapping: Mapping[str, str]) -> str:
    """Put the originals back; placeholders match case-insensitively and with stray inner spaces, because
    models rarely echo them byte for byte. Unknown placeholders are left as they are.
    """
    upper = {placeholder.upper(): original for placeholder, original in mapping.items()}
    return _PLACEHOLDER.sub(lambda m: upper.get(f"[{m.group(1).upper()}]", m.group(0)), text)


class Redactor:
    """Replaces PII with numbered placeholders per label ([PERSON_1], [EMAIL_2]) before a remote call."""

    def __init__(self, extractor: ExtractionAgent, labels: Collection[str] = DEFAULT_PII_LABELS) -> None:
        self.extractor = extractor
        self.labels = frozenset(labels)

    def redact(self, text: str) -> Redaction:
        return self.redact_batch([text])[0]

    def redact_batch(self, texts: Sequence[str]) -> list[Redaction]:
        """Batched, so spaCy runs once over all texts (`nlp.pipe`)."""
        batches = self.extractor.find_entities_batch(texts, self.labels)
        return [_redact(text, entities) for text, entities in zip(texts, batches, strict=True)]

    @staticmethod
    def restore(text: str, mapping: Mapping[str, str]) -> str:
        return restore(text, mapping)


def _redact(text: str, entities: list[Entity]) -> Redaction:
    """Replace the (non-overlapping, ordered) entity spans; the same label and value share a placeholder."""
    placeholders: dict[tuple[str, str], str] = {}
    per_label: dict[str, int] = {}
    parts: list[str] = []
    cursor = 0
    for entity in entities:
        key = (entity.label, entity.text)
        if key not in placeholders:
            per_label[entity.label] = per_label.get(entity.label, 0) + 1
            placeholders[key] = f"[{entity.label}_{per_label[entity.label]}]"
        parts += [text[cursor : entity.start], placeholders[key]]
        cursor = entity.end
    parts.append(text[cursor:])
    mapping = {placeholder: value for (_, value), placeholder in placeholders.items()}
    return Redaction(text="".join(parts), mapping=mapping, count=len(entities))
