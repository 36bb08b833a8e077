"""Temperature scaling: turn raw route scores into probabilities that mean what they say.

A confidence of 0.9 should be right about 90% of the time. Raw cosine scores are not probabilities, so we
fit one temperature on held-out (leave-one-out) scores of labelled examples, as in Guo et al. 2017.

ECE is written out: scikit-learn has `calibration_curve` but no ECE, and that curve drops the bin sizes ECE
is weighted by; `confidence_bins` keeps ECE and the reliability diagram on the same bins.
"""

from __future__ import annotations

import numpy as np


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    z = scores / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def nll(scores: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    probs = softmax(scores, temperature)
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def fit_temperature(scores: np.ndarray, labels: np.ndarray) -> float:
    """Minimise negative log-likelihood over a log grid, then refine around the best point."""
    if len(labels) == 0:
        return 1.0
    grid = np.logspace(-3, 1, 161)
    best = min(grid, key=lambda t: nll(scores, labels, float(t)))
    fine = np.linspace(best / 1.06, best * 1.06, 41)
    return float(min(fine, key=lambda t: nll(scores, labels, float(t))))


def confidence_bins(confidence: np.ndarray, bins: int = 10) -> np.ndarray:
    """The equal-width bin (0..bins-1) of each confidence, as ECE and the reliability diagram count them."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Weighted gap between confidence and accuracy over equal-width confidence bins."""
    if len(confidence) == 0:
        return 0.0
    idx = confidence_bins(confidence, bins)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.mean() * abs(confidence[mask].mean() - correct[mask].mean())
    return float(ece)
