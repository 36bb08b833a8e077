"""The sentiment head on the real MiniLM embedding, and the trainer that produces it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slm_router.agents.base import AgentError, AgentInput
from slm_router.agents.sentiment import SentimentAgent, SentimentHead
from slm_router.router.ops.training import fit_head, split_of, train_sentiment_head
from slm_router.router.runnable import Router


@pytest.fixture(scope="module")
def agent(router: Router) -> SentimentAgent:
    return SentimentAgent(router.embedder.encode)


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Absolutely brilliant support, thank you!", "positive"),
        ("The food was cold and the waiter was rude.", "negative"),
        ("I would like to update the billing address on my account.", "neutral"),
        ("Can you send me a copy of my latest invoice?", "neutral"),
    ],
)
def test_known_inputs(agent: SentimentAgent, text: str, label: str) -> None:
    (result,) = agent.predict_batch([AgentInput(text=text)])
    assert result.output == label
    assert result.details is not None and result.details.kind == "sentiment"
    assert sum(result.details.probabilities.values()) == pytest.approx(1.0, abs=1e-3)
    assert result.confidence == pytest.approx(max(result.details.probabilities.values()), abs=1e-3)


def test_router_embedding_is_reused(agent: SentimentAgent, router: Router) -> None:
    text = "Absolutely brilliant support, thank you!"
    with_vector = agent.predict_batch([AgentInput(text=text, embedding=router.embedder.encode_one(text))])
    without = agent.predict_batch([AgentInput(text=text)])
    assert with_vector[0].details == without[0].details


def test_missing_head_is_a_clear_error(router: Router, tmp_path: Path) -> None:
    broken = SentimentAgent(router.embedder.encode, head_path=tmp_path / "none.npz")
    with pytest.raises(AgentError, match="head weights not found"):
        broken.predict_batch([AgentInput(text="fine")])


def test_fit_head_learns_separable_classes() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    x = np.concatenate([c + 0.1 * rng.normal(size=(40, 16)) for c in centres]).astype(np.float32)
    y = [label for label in ("a", "b", "c") for _ in range(40)]
    head = fit_head(x, y)
    pred = [head.labels[i] for i in head.probabilities(x).argmax(axis=1)]
    assert np.mean([p == t for p, t in zip(pred, y, strict=True)]) == 1.0


def test_train_round_trip_and_stable_split(router: Router, tmp_path: Path) -> None:
    data = tmp_path / "tiny.jsonl"
    rows = [
        ("I love it, wonderful", "positive"),
        ("Awful, I hate it", "negative"),
        ("It is a box", "neutral"),
    ]
    data.write_text("\n".join(f'{{"text": "{t} {i}", "label": "{y}"}}' for i in range(30) for t, y in rows))
    out = tmp_path / "head.npz"
    report = train_sentiment_head({"tiny": (data, 1.0)}, out, router.embedder, show_progress=False)
    head = SentimentHead.load(out)
    assert head.labels == ["negative", "neutral", "positive"] and head.temperature > 0
    assert report.train + report.calibration + report.test["tiny"].rows == 90
    assert split_of("same text") == split_of("same text")
