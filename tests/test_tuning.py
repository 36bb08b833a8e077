"""Threshold tuning on recorded scores: targets met on the tuning split, held on a report split, edges."""

from __future__ import annotations

import numpy as np
import pytest

from slm_router.router.ops.tuning import OOD, ScoredSet, Target, TuningError, _hull_slopes, evaluate, tune

ROUTES = ["translate", "sentiment", "extract", "other"]
SERVABLE = np.array([True, True, True, False])


def synthetic(n: int, seed: int, oos_share: float = 0.1) -> ScoredSet:
    """Calibrated-ish scores: the top route is right with probability equal to its confidence."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(len(ROUTES), 0.4), size=n)
    pred = probs.argmax(axis=1)
    correct = rng.random(n) < probs.max(axis=1)
    labels = np.where(correct, pred, (pred + 1 + rng.integers(0, 3, n)) % len(ROUTES))
    oos = rng.random(n) < oos_share
    labels = np.where(oos, OOD, labels)
    in_scope = np.where(oos, rng.uniform(0.1, 0.45, n), rng.uniform(0.3, 0.9, n))
    return ScoredSet(ROUTES, probs, in_scope, labels, SERVABLE)


def test_max_escalation_is_met_and_holds_on_a_report_split() -> None:
    tuning, report = synthetic(4000, 0), synthetic(4000, 1)
    target = Target("max_escalation", 0.5)
    result = tune(tuning, target)
    assert result.chosen.escalation_rate <= 0.5 + 1e-9
    nothing = evaluate(tuning, dict.fromkeys(ROUTES, 0.0), 0.0, target)
    assert result.chosen.routed_accuracy > nothing.routed_accuracy + 0.05
    held = evaluate(report, result.chosen.thresholds, result.chosen.ood_threshold, target)
    assert abs(held.escalation_rate - 0.5) <= 0.03
    assert set(result.chosen.thresholds) == set(ROUTES)
    rates = [r for r, _ in result.curve]
    assert rates == sorted(rates) and len(result.curve) > 10


def test_min_accuracy_uses_the_least_escalation() -> None:
    data = synthetic(3000, 2)
    strict = tune(data, Target("min_accuracy", 0.95)).chosen
    loose = tune(data, Target("min_accuracy", 0.85)).chosen
    assert strict.routed_accuracy >= 0.95 and loose.routed_accuracy >= 0.85
    assert loose.escalation_rate <= strict.escalation_rate


def test_budget_keeps_cost_within_it() -> None:
    data = synthetic(3000, 3)
    chosen = tune(data, Target("budget", 0.6, fallback_cost=1.0, local_cost=0.1)).chosen
    assert chosen.cost_per_request <= 0.6 + 1e-9
    with pytest.raises(TuningError, match="below the cost of answering locally"):
        tune(data, Target("budget", 0.05, fallback_cost=1.0, local_cost=0.1))


def test_all_correct_data_escalates_nothing_it_does_not_have_to() -> None:
    data = synthetic(1000, 4, oos_share=0.0)
    perfect = ScoredSet(ROUTES, data.probs, data.in_scope, data.probs.argmax(axis=1), SERVABLE)
    chosen = tune(perfect, Target("max_escalation", 0.35)).chosen  # ~25% predict `other`, always escalated
    assert chosen.routed_accuracy == 1.0
    assert chosen.escalation_rate == pytest.approx(float((~SERVABLE[perfect.labels]).mean()))
    assert tune(perfect, Target("min_accuracy", 1.0)).chosen.routed_accuracy == 1.0


def test_all_out_of_distribution_data() -> None:
    data = synthetic(1000, 5, oos_share=1.0)
    assert (data.labels == OOD).all()
    everything = tune(data, Target("min_accuracy", 0.9)).chosen
    assert everything.escalation_rate == 1.0 and everything.oos_recall == 1.0
    capped = tune(data, Target("max_escalation", 0.35)).chosen
    assert capped.escalation_rate <= 0.35 and capped.routed_accuracy == 0.0
    assert capped.in_scope_false_escalation is None


def test_unreachable_target_says_what_is_possible() -> None:
    data = synthetic(2000, 6)
    share_other = float((~SERVABLE[data.probs.argmax(axis=1)]).mean())
    with pytest.raises(TuningError, match="lowest reachable escalation rate is") as info:
        tune(data, Target("max_escalation", share_other / 2))
    assert f"{share_other:.3f}" in str(info.value)
    with pytest.raises(TuningError, match="between 0 and 1"):
        tune(data, Target("min_accuracy", 1.5))
    with pytest.raises(TuningError, match="no examples"):
        ScoredSet(ROUTES, np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=int), SERVABLE)


def test_hull_slopes_are_non_increasing_and_sum_to_the_errors() -> None:
    errors = np.array([0, 1, 1, 0, 1, 0, 0, 0, 1, 0], dtype=float)
    slopes = _hull_slopes(errors)
    assert np.all(np.diff(slopes) <= 1e-12)
    assert slopes.sum() == pytest.approx(errors.sum())


def test_false_escalation_target_holds_when_the_out_of_scope_share_moves() -> None:
    """Tuned where 5% is out of scope, measured where 30% is: the in-scope share escalated stays put,
    while an escalation-rate target would not."""
    tuning, live = synthetic(6000, 7, oos_share=0.05), synthetic(6000, 8, oos_share=0.3)
    target = Target("max_false_escalation", 0.4)  # ~26% predict `other`, which only the fallback serves
    chosen = tune(tuning, target).chosen
    assert chosen.in_scope_false_escalation is not None and chosen.in_scope_false_escalation <= 0.4 + 1e-9
    held = evaluate(live, chosen.thresholds, chosen.ood_threshold, target)
    assert held.in_scope_false_escalation is not None
    assert abs(held.in_scope_false_escalation - chosen.in_scope_false_escalation) <= 0.03
    rate = tune(tuning, Target("max_escalation", 0.4)).chosen
    drifted = evaluate(live, rate.thresholds, rate.ood_threshold, target)
    assert drifted.escalation_rate > 0.4 + 0.05  # the rate target is blind to the share it will meet


def test_min_oos_recall_escalates_enough_out_of_scope_and_little_else() -> None:
    data = synthetic(6000, 9, oos_share=0.2)
    loose, strict = (tune(data, Target("min_oos_recall", v)).chosen for v in (0.5, 0.9))
    assert loose.oos_recall is not None and loose.oos_recall >= 0.5 - 1e-9
    assert strict.oos_recall is not None and strict.oos_recall >= 0.9 - 1e-9
    assert loose.in_scope_false_escalation is not None and strict.in_scope_false_escalation is not None
    assert loose.in_scope_false_escalation <= strict.in_scope_false_escalation
    with pytest.raises(TuningError, match="needs out-of-scope rows"):
        tune(synthetic(500, 10, oos_share=0.0), Target("min_oos_recall", 0.5))


def test_expected_oos_share_reweights_the_escalation_target_and_draws_both_curves() -> None:
    tuning, live = synthetic(6000, 11, oos_share=0.05), synthetic(20000, 12, oos_share=0.3)
    target = Target("max_escalation", 0.4, oos_share=0.3)
    result = tune(tuning, target)
    assert result.chosen.escalation_rate <= 0.4 + 1e-9  # at the expected share
    measured = evaluate(
        live, result.chosen.thresholds, result.chosen.ood_threshold, Target("max_escalation", 1)
    )
    assert abs(measured.escalation_rate - 0.4) <= 0.04  # what the live traffic then sees
    assert len(result.curves) == 2 and any("30%" in label for label in result.curves)
    with pytest.raises(TuningError, match="cannot reweight"):
        tune(synthetic(500, 13, oos_share=0.0), Target("max_escalation", 0.4, oos_share=0.2))


def test_hull_slopes_with_costs_put_free_gains_first() -> None:
    slopes = _hull_slopes(np.array([0.0, 1.0, 1.0]), np.array([1.0, 0.0, 1.0]))
    assert slopes[0] == slopes[1] and slopes[1] >= slopes[2]
    assert np.isinf(_hull_slopes(np.array([1.0]), np.array([0.0]))[0])
