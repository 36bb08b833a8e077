"""The packaged entity tagger (real model) and the `slm-router train entities` command on a tiny slice."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slm_router.agents.base import AgentInput, ExtractionOutput
from slm_router.agents.entity_tagger import MAX_PIECES, PACKAGED_TAGGER, EntityTagger
from slm_router.agents.extraction import ExtractionAgent
from slm_router.router.cli import app

TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "ner_train.jsonl"


@pytest.fixture(scope="module")
def tagger() -> EntityTagger:
    return EntityTagger()


def test_packaged_tagger_finds_person_and_place(tagger: EntityTagger) -> None:
    text = "Barack Obama flew to Paris with his daughter last week"
    [tagging] = tagger.tag([text])
    found = {(text[s.start : s.end], s.label) for s in tagging.spans}
    assert ("Barack Obama", "person") in found
    assert ("Paris", "location") in found
    assert all(0.0 < s.score <= 1.0 for s in tagging.spans)
    assert 0.0 < tagging.sequence_probability <= tagging.min_word_probability <= 1.0


def test_spans_align_and_batching_changes_nothing(tagger: EntityTagger) -> None:
    texts = [
        "@jane_doe loving my new iPhone from Apple , thanks Tim Cook !!",
        "  Leaving   São Paulo for Lisbon tomorrow,\tsee you at the Real Madrid game  ",
        "",
        "no names here at all",
    ]
    together = tagger.tag(texts)
    alone = [tagger.tag([t])[0] for t in texts]
    for text, a, b in zip(texts, together, alone, strict=True):
        assert [(s.start, s.end, s.label) for s in a.spans] == [(s.start, s.end, s.label) for s in b.spans]
        for s in a.spans:
            span = text[s.start : s.end]
            assert span == span.strip() and span
    assert together[2].spans == [] and together[2].words == 0


def test_long_text_is_read_in_windows(tagger: EntityTagger) -> None:
    filler = "we waited for the parcel and nothing came . " * 40
    text = f"{filler}Then Angela Merkel called from Berlin ."
    assert len(tagger.model.tokenizer(text)["input_ids"]) > MAX_PIECES + 2
    [tagging] = tagger.tag([text])
    found = {(text[s.start : s.end], s.label) for s in tagging.spans}
    assert ("Angela Merkel", "person") in found
    assert tagging.words > MAX_PIECES


def test_agent_uses_tagger_and_calibrated_confidence() -> None:
    agent = ExtractionAgent()
    texts = ["just saw taylor swift at the airport lol", "thanks, all sorted now", "order #A12345"]
    results = agent.predict_batch([AgentInput(text=t) for t in texts])
    for r in results:
        assert 0.0 <= r.confidence <= 1.0
        assert isinstance(r.details, ExtractionOutput)
    names = {(e.label, e.text) for e in results[0].details.entities}  # type: ignore[union-attr]
    assert ("PERSON", "taylor swift") in names  # spaCy alone: PERSON "taylor"
    assert results[1].output == "no entities found"
    assert results[1].confidence >= 0.5  # nothing to find, and the tagger is sure of it
    assert agent.tagger is not None and agent.tagger.card["confidence"]["fitted_on"] == "wnut17_dev.jsonl"


def test_packaged_card_says_what_it_was_trained_on() -> None:
    card = json.loads((PACKAGED_TAGGER / "training.json").read_text(encoding="utf-8"))
    assert card["data"]["train"] == "ner_train.jsonl"
    assert card["tags"][0] == "O" and "B-person" in card["tags"]
    size = sum(p.stat().st_size for p in PACKAGED_TAGGER.iterdir())
    assert size < 4_000_000


@pytest.mark.skipif(not TRAIN.is_file(), reason="WNUT-17 train file not present")
def test_train_command_on_a_slice(tmp_path: Path) -> None:
    rows = [line for line in TRAIN.read_text(encoding="utf-8").splitlines() if line.strip()][:40]
    data = tmp_path / "slice.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "tagger"
    started = time.perf_counter()
    result = CliRunner().invoke(
        app, ["train", "entities", str(data), "--out", str(out), "--epochs", "1", "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - started < 120
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["train"] + report["held_out"] == 40
    tagger = EntityTagger(out)
    [tagging] = tagger.tag(["Justin Bieber is in Toronto"])
    assert 0.0 < tagging.sequence_probability <= 1.0
    card = tagger.card
    assert card["confidence"]["features"] and card["tags"][0] == "O"
    agent = ExtractionAgent(tagger=out)
    [answer] = agent.predict_batch([AgentInput(text="Justin Bieber is in Toronto")])
    assert 0.0 <= answer.confidence <= 1.0
