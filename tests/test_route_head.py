"""The trained route head on real embeddings: chosen when routes have enough examples, calibrated, an
out-of-scope p-value that flags about the share it promises, cached by content, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slm_router.policies import Policy, PolicyError
from slm_router.router.core.embedder import Embedder, cache_dir
from slm_router.router.core.head import HeadSettings, RouteHead, fit_cached
from slm_router.router.core.index import RouteIndex, load_utterances
from slm_router.router.core.rules import decide
from tests.conftest import policy_with

OUT_OF_SCOPE = [
    "what is the boiling point of mercury in kelvin",
    "who painted the ceiling of the sistine chapel",
    "recommend a good hiking trail near the alps",
    "how many legs does a spider have",
    "what's the chess opening called with e4 c5",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="module")
def linear(default_policy: Policy, embedder: Embedder) -> RouteIndex:
    return RouteIndex.from_policy(policy_with(default_policy, **{"router.classifier": "linear"}), embedder)


def test_auto_keeps_knn_for_small_route_sets_and_picks_linear_for_big_ones(
    default_policy: Policy, embedder: Embedder
) -> None:
    assert RouteIndex.from_policy(default_policy, embedder).classifier == "knn"  # triage has 15 examples
    lower = policy_with(default_policy, **{"router.linear_min_examples": 15})
    assert RouteIndex.from_policy(lower, embedder).classifier == "linear"


def test_linear_head_is_calibrated_on_held_out_folds(linear: RouteIndex) -> None:
    cal = linear.calibration
    assert cal.classifier == "linear" and cal.held_out == "5-fold" and cal.examples == len(linear.texts)
    assert cal.held_out_accuracy > 0.85 and cal.ece < 0.08


def test_linear_head_routes_and_its_p_value_flags_out_of_scope(
    linear: RouteIndex, embedder: Embedder
) -> None:
    messages = {
        "I am furious, this is the worst service I have ever had": "sentiment",
        "translate 'where is the train station' into Portuguese": "translate",
    }
    for text, route in messages.items():
        scores = linear.score(embedder.encode_one(text))
        assert scores.top == route and scores.classifier == "linear" and not scores.ood
        assert scores.in_scope_p is not None and scores.max_similarity is None
    out = linear.score_many(embedder.encode(OUT_OF_SCOPE))
    # Out of scope either lands in the catch-all route or fails the p-value test; never on a specialist.
    assert all(s.top == "other" or s.ood for s in out)
    assert np.mean([s.in_scope_p for s in out]) < np.mean(
        [linear.score(embedder.encode_one(t)).in_scope_p for t in messages]
    )


def test_p_value_flags_about_the_promised_share_of_in_scope_examples(linear: RouteIndex) -> None:
    """On the examples the head was fit on (easier than held-out ones), `in_scope_p < alpha` may flag at
    most about alpha of them."""
    assert linear.head is not None
    in_scope = linear.labels != linear.routes.index("other")
    _, p = linear.head.predict(linear.vectors[in_scope])
    for alpha in (0.02, 0.1, 0.3):
        assert (p < alpha).mean() <= alpha + 0.03


def test_ood_decision_names_the_p_value(
    default_policy: Policy, linear: RouteIndex, embedder: Embedder
) -> None:
    scores = linear.score(embedder.encode_one("how many legs does a spider have"))
    flagged = scores.model_copy(update={"ood": True})
    decision = decide(flagged, policy_with(default_policy, **{"router.classifier": "linear"}))
    assert decision.code == "fallback_route" and decision.route == "other"
    assert "held-out route examples look this unusual" in decision.reason


def test_head_is_cached_by_content_and_refit_when_examples_change(
    default_policy: Policy, linear: RouteIndex, tmp_path: Path
) -> None:
    assert linear.head is not None
    in_scope = np.array([r != "other" for r in linear.routes])
    settings = HeadSettings()
    before = set(cache_dir().glob("head-*.npz"))
    again = fit_cached(linear.vectors, linear.labels, in_scope, settings, cache_dir())
    assert set(cache_dir().glob("head-*.npz")) == before  # read, not refit
    p1, q1 = linear.head.predict(linear.vectors[:20])
    p2, q2 = again.predict(linear.vectors[:20])
    np.testing.assert_allclose(p1, p2, rtol=1e-5)
    np.testing.assert_allclose(q1, q2)
    fewer = fit_cached(linear.vectors[:-1], linear.labels[:-1], in_scope, settings, tmp_path)
    assert len(list(tmp_path.glob("head-*.npz"))) == 1 and fewer.report.folds == 5
    (tmp_path / "head-broken.npz").write_bytes(b"not a zip")
    assert RouteHead.load(tmp_path / "head-broken.npz", settings) is None


def test_linear_head_with_too_few_examples_is_a_policy_error(
    default_policy: Policy, embedder: Embedder
) -> None:
    utterances = load_utterances(default_policy)
    tiny = {"sentiment": utterances["sentiment"][:1], "other": utterances["other"][:5]}
    with pytest.raises(PolicyError, match=r"router\.classifier"):
        RouteIndex(tiny, embedder, 5, 0.3, "other", classifier="linear")
