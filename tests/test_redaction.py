"""Redaction against the real spaCy model: nothing sensitive leaves, and restore undoes it exactly."""

from __future__ import annotations

import pytest

from slm_router.agents.extraction import ExtractionAgent
from slm_router.agents.redaction import Redactor, restore

TEXT = (
    "Hi, I'm Jane Doe. Email jane.doe@example.com or call +1 415 555 0100; "
    "card 4111 1111 1111 1111 was charged $49.99 for order #A12345. Again: jane.doe@example.com"
)


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor(ExtractionAgent())


def test_redact_hides_pii_and_keeps_the_rest(redactor: Redactor) -> None:
    redaction = redactor.redact(TEXT)
    assert redaction.text == (
        "Hi, I'm [PERSON_1]. Email [EMAIL_1] or call [PHONE_1]; "
        "card [CARD_NUMBER_1] was charged $49.99 for order #A12345. Again: [EMAIL_1]"
    )
    for secret in ("Jane", "jane.doe@example.com", "415 555 0100", "4111 1111 1111 1111"):
        assert secret not in redaction.text
    assert redaction.mapping == {
        "[PERSON_1]": "Jane Doe",
        "[EMAIL_1]": "jane.doe@example.com",
        "[PHONE_1]": "+1 415 555 0100",
        "[CARD_NUMBER_1]": "4111 1111 1111 1111",
    }
    assert redaction.count == 5


def test_round_trip(redactor: Redactor) -> None:
    texts = [TEXT, "Contact John Smith at john@acme.com or (415) 555-0100.", "nothing personal here"]
    for text, redaction in zip(texts, redactor.redact_batch(texts), strict=True):
        assert restore(redaction.text, redaction.mapping) == text


def test_distinct_values_get_distinct_placeholders(redactor: Redactor) -> None:
    redaction = redactor.redact("Write to a@example.com, b@example.com and a@example.com")
    assert redaction.text == "Write to [EMAIL_1], [EMAIL_2] and [EMAIL_1]"
    assert redaction.count == 3


def test_restore_tolerates_case_and_spacing(redactor: Redactor) -> None:
    mapping = {"[EMAIL_1]": "jane@example.com", "[PERSON_1]": "Jane Doe"}
    answer = "Dear [person_1], we wrote to [ EMAIL_1 ]; [PHONE_9] is unknown."
    expected = "Dear Jane Doe, we wrote to jane@example.com; [PHONE_9] is unknown."
    assert redactor.restore(answer, mapping) == expected


def test_labels_are_configurable(redactor: Redactor) -> None:
    redaction = Redactor(redactor.extractor, labels=["EMAIL"]).redact("Jane Doe: jane@example.com")
    assert redaction.text == "Jane Doe: [EMAIL_1]"
