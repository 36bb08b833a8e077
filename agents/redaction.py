"""PII redaction for text that leaves the machine (the large-model fallback), and restoring the answer.

Detection is the extraction agent's own (agents/extraction.py: patterns for e-mail, card, IBAN, street
address and ids, libphonenumber for phones, cue patterns and spaCy PERSON for names), so redaction and
extraction never disagree about what an e-mail address looks like. The message language decides which
national phone formats are read and whether the English spaCy model may name people (it reads German nouns
as names); the caller passes it, or it is detected (agents.langid).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence

from pydantic import BaseModel

from slm_router.agents.base import Entity
from slm_router.agents.extraction import NOT_A_NAME, ExtractionAgent, overlaps
from slm_router.agents.langid import UNDETERMINED, detect_language

# What identifies or reaches a person. Order and ticket ids (ORDER_ID, TICKET_ID) are PII-able too and the
# shipped policy redacts them (privacy.entities); a bare Redactor leaves them, so that a caller that names no
# labels still shows the remote model the ids it is asked about.
DEFAULT_PII_LABELS = frozenset({"EMAIL", "PHONE", "CARD_NUMBER", "PERSON", "IBAN", "ADDRESS"})

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


class TurnsRedaction(BaseModel):
    """Several turns of one conversation, redacted with one placeholder table: a value has the same
    placeholder in every turn. `count` is the number of spans replaced over all turns.
    """

    texts: list[str]
    mapping: dict[str, str]
    count: int


# Below this detection probability the language is "und": national phone formats of every supported region
# are read and spaCy names nobody ("Meine Telefonnummer lautet 040 / 822 44 190" comes out French at 0.14).
MIN_LANGUAGE_CONFIDENCE = 0.5


def _detected_language(text: str) -> str:
    language, probability = detect_language(text)
    return language if probability >= MIN_LANGUAGE_CONFIDENCE else UNDETERMINED


class Redactor:
    """Replaces PII with numbered placeholders per label ([PERSON_1], [EMAIL_2]) before a remote call.

    `detect` gives a text's ISO 639-1 language when the caller does not ("und" when it cannot tell: then only
    patterns run, no spaCy PERSON).
    """

    def __init__(
        self,
        extractor: ExtractionAgent,
        labels: Collection[str] = DEFAULT_PII_LABELS,
        detect: Callable[[str], str] = _detected_language,
    ) -> None:
        self.extractor = extractor
        self.labels = frozenset(labels)
        self.detect = detect

    def redact(self, text: str, language: str | None = None) -> Redaction:
        return self.redact_batch([text], None if language is None else [language])[0]

    def redact_batch(
        self, texts: Sequence[str], languages: Sequence[str | None] | None = None
    ) -> list[Redaction]:
        """Batched, so spaCy runs once over all texts (`nlp.pipe`); a missing language is detected."""
        entities = self._entities(texts, languages)
        return [
            _redact(text, _with_repeats([text], [found])[0], _Table())
            for text, found in zip(texts, entities, strict=True)
        ]

    def redact_turns(self, turns: Sequence[str], language: str | None = None) -> TurnsRedaction:
        """Redact each turn on its own (no separator joins them, so none can be eaten by a pattern or split a
        value) with one placeholder table for the conversation. The language, when not given, is detected
        once over all turns: one turn is often too short to tell. A value found in one turn is redacted in
        every turn ("mein Name ist Jonas Weber", then "Hallo Jonas").
        """
        language = language or self.detect("\n".join(turns))
        table = _Table()
        found = _with_repeats(turns, self._entities(turns, [language] * len(turns)))
        redactions = [_redact(text, entities, table) for text, entities in zip(turns, found, strict=True)]
        return TurnsRedaction(
            texts=[r.text for r in redactions],
            mapping=table.mapping(),
            count=sum(r.count for r in redactions),
        )

    def _entities(self, texts: Sequence[str], languages: Sequence[str | None] | None) -> list[list[Entity]]:
        given = list(languages) if languages is not None else [None] * len(texts)
        resolved = [lang or self.detect(text) for text, lang in zip(texts, given, strict=True)]
        return self.extractor.find_entities_batch(texts, self.labels, resolved)

    @staticmethod
    def restore(text: str, mapping: Mapping[str, str]) -> str:
        return restore(text, mapping)


_MIN_NAME_PART = 3  # "Jonas" of "Jonas Weber" is redacted on its own; "de" of "Jan de Vries" is not


def _with_repeats(texts: Sequence[str], found: Sequence[list[Entity]]) -> list[list[Entity]]:
    """Add every other occurrence, as a whole word, of a value found anywhere in `texts`, and of each
    capitalised part of a name: a cue or the model finds a name once ("Mein Name ist Jonas Weber"), the rest
    of the text mentions it bare ("Danke, Jonas"), and that must not leak.
    """
    known: dict[str, Entity] = {}
    for entities in found:
        for e in entities:
            known.setdefault(e.text, e)
            if e.label == "PERSON":
                for part in e.text.split():
                    if len(part) >= _MIN_NAME_PART and part[0].isupper() and part.lower() not in NOT_A_NAME:
                        known.setdefault(part, e.model_copy(update={"text": part}))
    if not known:
        return [list(entities) for entities in found]
    values = sorted(known, key=len, reverse=True)  # the longest reading first: "Jonas Weber" before "Jonas"
    out = []
    for text, entities in zip(texts, found, strict=True):
        taken = list(entities)
        for value in values:  # str.find, not a regex alternation of them all: linear in their number
            start = text.find(value)
            while start >= 0:
                end = start + len(value)
                whole_word = not _word_char(text, start - 1) and not _word_char(text, end)
                if whole_word and not overlaps(start, end, taken):
                    taken.append(known[value].model_copy(update={"start": start, "end": end}))
                start = text.find(value, end)
        out.append(sorted(taken, key=lambda e: e.start))
    return out


def _word_char(text: str, i: int) -> bool:
    return 0 <= i < len(text) and (text[i].isalnum() or text[i] == "_")


class _Table:
    """Placeholders handed out so far: the same label and value share one, numbered per label."""

    def __init__(self) -> None:
        self.placeholders: dict[tuple[str, str], str] = {}
        self.per_label: dict[str, int] = {}

    def placeholder(self, label: str, value: str) -> str:
        key = (label, value)
        if key not in self.placeholders:
            self.per_label[label] = self.per_label.get(label, 0) + 1
            self.placeholders[key] = f"[{label}_{self.per_label[label]}]"
        return self.placeholders[key]

    def mapping(self) -> dict[str, str]:
        return {placeholder: value for (_, value), placeholder in self.placeholders.items()}


def _redact(text: str, entities: list[Entity], table: _Table) -> Redaction:
    """Replace the (non-overlapping, ordered) entity spans; `mapping` holds this text's placeholders only."""
    parts: list[str] = []
    used: dict[str, str] = {}
    cursor = 0
    for entity in entities:
        placeholder = table.placeholder(entity.label, entity.text)
        used[placeholder] = entity.text
        parts += [text[cursor : entity.start], placeholder]
        cursor = entity.end
    parts.append(text[cursor:])
    return Redaction(text="".join(parts), mapping=used, count=len(entities))
