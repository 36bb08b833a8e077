"""The sentiment specialist: the packaged fine-tuned model, the cheap head on the router's embedding, and
the trainers that produce both (real MiniLM, real VADER)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slm_router.agents.base import AgentError, AgentInput
from slm_router.agents.sentiment import PACKAGED_MODEL, SentimentAgent, SentimentHead, SentimentModel
from slm_router.router.ops.sentiment_finetune import FinetuneSettings, SourceSpec, finetune_sentiment
from slm_router.router.ops.training import fit_head, split_of, train_sentiment_head
from slm_router.router.runnable import Router

KNOWN = [
    ("Absolutely brilliant support, thank you!", "positive"),
    ("The food was cold and the waiter was rude.", "negative"),
    ("I would like to update the billing address on my account.", "neutral"),
    ("Can you send me a copy of my latest invoice?", "neutral"),
    ("This is the third time my parcel is late. Unacceptable.", "negative"),
    ("lol best day ever :)", "positive"),
]


@pytest.fixture(scope="module")
def model_agent(router: Router) -> SentimentAgent:
    return SentimentAgent(router.embedder.encode)


@pytest.fixture(scope="module")
def head_agent(router: Router) -> SentimentAgent:
    return SentimentAgent(router.embedder.encode, backend="head")


@pytest.mark.parametrize(("text", "label"), KNOWN)
def test_model_known_inputs(model_agent: SentimentAgent, text: str, label: str) -> None:
    (result,) = model_agent.predict_batch([AgentInput(text=text)])
    assert result.output == label
    assert result.details is not None and result.details.kind == "sentiment"
    assert sum(result.details.probabilities.values()) == pytest.approx(1.0, abs=1e-3)
    assert result.confidence == pytest.approx(max(result.details.probabilities.values()), abs=1e-3)


@pytest.mark.parametrize(("text", "label"), KNOWN[:4])
def test_head_known_inputs(head_agent: SentimentAgent, text: str, label: str) -> None:
    (result,) = head_agent.predict_batch([AgentInput(text=text)])
    assert result.output == label


def test_batch_equals_single(model_agent: SentimentAgent) -> None:
    """Padding in a batch must not change an answer."""
    texts = [t for t, _ in KNOWN]
    batched = model_agent.predict_batch([AgentInput(text=t) for t in texts])
    single = [model_agent.predict_batch([AgentInput(text=t)])[0] for t in texts]
    for b, s in zip(batched, single, strict=True):
        assert b.output == s.output
        assert b.confidence == pytest.approx(s.confidence, abs=1e-3)


def test_packaged_model_card_reports_held_out_scores() -> None:
    card = json.loads((PACKAGED_MODEL / "training.json").read_text())
    test = card["report"]["test"]
    assert len(test) >= 2 and card["report"]["train"] > 1000
    assert all(0.0 <= split["ece"] <= 1.0 for split in test.values())


def test_head_reuses_router_embedding(head_agent: SentimentAgent, router: Router) -> None:
    text = "Absolutely brilliant support, thank you!"
    with_vector = head_agent.predict_batch(
        [AgentInput(text=text, embedding=router.embedder.encode_one(text))]
    )
    without = head_agent.predict_batch([AgentInput(text=text)])
    assert with_vector[0].details == without[0].details


@pytest.mark.parametrize("backend", ["model", "head"])
def test_missing_weights_are_a_clear_error(router: Router, tmp_path: Path, backend: str) -> None:
    broken = SentimentAgent(router.embedder.encode, backend=backend, path=tmp_path / "none")  # type: ignore[arg-type]
    with pytest.raises(AgentError, match="slm-router train sentiment"):
        broken.predict_batch([AgentInput(text="fine")])


def test_int8_agrees_with_fp32(model_agent: SentimentAgent, router: Router) -> None:
    int8 = SentimentAgent(router.embedder.encode, int8=True)
    texts = [AgentInput(text=t) for t, _ in KNOWN]
    same = [
        a.output == b.output
        for a, b in zip(int8.predict_batch(texts), model_agent.predict_batch(texts), strict=True)
    ]
    assert sum(same) >= len(same) - 1


def test_fit_head_learns_separable_classes() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    x = np.concatenate([c + 0.1 * rng.normal(size=(40, 16)) for c in centres]).astype(np.float32)
    y = [label for label in ("a", "b", "c") for _ in range(40)]
    head = fit_head(x, y)
    pred = [head.labels[i] for i in head.probabilities(x).argmax(axis=1)]
    assert np.mean([p == t for p, t in zip(pred, y, strict=True)]) == 1.0


def _tiny_data(tmp_path: Path) -> Path:
    data = tmp_path / "tiny.jsonl"
    rows = [
        ("I love it, wonderful", "positive"),
        ("Awful, I hate it", "negative"),
        ("It is a box", "neutral"),
    ]
    data.write_text(
        "\n".join(json.dumps({"text": f"{t} {i}", "label": y}) for i in range(30) for t, y in rows)
    )
    return data


def test_train_head_round_trip_and_stable_split(router: Router, tmp_path: Path) -> None:
    out = tmp_path / "head.npz"
    report = train_sentiment_head(
        {"tiny": (_tiny_data(tmp_path), 1.0)}, out, router.embedder, show_progress=False
    )
    head = SentimentHead.load(out)
    assert head.labels == ["negative", "neutral", "positive"] and head.temperature > 0
    assert report.train + report.calibration + report.test["tiny"].rows == 90
    assert split_of("same text") == split_of("same text")


def test_finetune_writes_a_loadable_small_adapter(tmp_path: Path) -> None:
    out = tmp_path / "model"
    settings = FinetuneSettings(epochs=2, batch_size=16, lora_rank=4)
    report = finetune_sentiment(
        {"tiny": SourceSpec(path=_tiny_data(tmp_path))}, out, settings, show_progress=False
    )
    assert report.train + report.calibration + report.test["tiny"].rows == 90
    assert report.adapter_bytes < 5_000_000
    model = SentimentModel.load(out)
    probs = model.probabilities(["I love it, wonderful 7", "Awful, I hate it 3"])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert "base_model_name_or_path" in json.loads((out / "adapter_config.json").read_text())


def test_finetune_rejects_unknown_labels(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "meh", "label": "mixed"}\n')
    with pytest.raises(ValueError, match="not one of"):
        finetune_sentiment({"bad": SourceSpec(path=data)}, tmp_path / "m", show_progress=False)
