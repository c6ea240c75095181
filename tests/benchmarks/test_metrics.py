"""Classification metrics against sklearn and against small cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from benchmarks import metrics as M


def _brute_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The protocol's rule, written as a plain loop over the 100 candidates."""
    best_d, best_t = np.inf, None
    n_pos, n_neg = (labels == 1).sum(), (labels == 0).sum()
    for t in np.linspace(0, 1, 100):
        pred = scores > t
        tpr = (pred & (labels == 1)).sum() / n_pos if n_pos else 1.0
        fpr = (pred & (labels == 0)).sum() / n_neg if n_neg else 0.0
        d = np.sqrt((1 - tpr) ** 2 + fpr**2)
        if d <= best_d + 1e-12:  # '<=' walks upward, so ties end on the larger t
            best_d, best_t = min(d, best_d), t
    return best_t


@pytest.mark.parametrize('seed', range(40))
def test_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 80))
    y = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(float)
    s = np.round(rng.random(n), int(rng.integers(1, 3)))  # coarse rounding makes many ties
    if 0 < y.sum() < n:
        assert M.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    out = M.threshold_metrics(s, y)
    t = _brute_threshold(s, y)
    assert out['threshold'] == pytest.approx(t)
    pred = (s > t).astype(float)
    assert out['f1_weighted'] == pytest.approx(
        f1_score(y, pred, average='weighted', zero_division=0)
    )
    assert out['f1_positive'] == pytest.approx(f1_score(y, pred, zero_division=0))
    assert out['accuracy'] == pytest.approx(accuracy_score(y, pred))
    assert out['precision'] == pytest.approx(precision_score(y, pred, zero_division=0))
    if 0 < y.sum() < n:
        assert out['sensitivity'] == pytest.approx(recall_score(y, pred))
        assert out['specificity'] == pytest.approx(recall_score(1 - y, 1 - pred))


def test_hand_computed_auroc_with_tie():
    # pairs (pos, neg): (0.8>0.3) 1, (0.8>0.5) 1, (0.5=0.5) 1/2, (0.5>0.3) 1 -> 3.5 / 4
    s = np.array([0.8, 0.5, 0.5, 0.3])
    y = np.array([1, 1, 0, 0])
    assert M.auroc(s, y) == pytest.approx(0.875)


def test_threshold_tie_goes_to_larger_threshold():
    # Every t in [0.2, 0.8) separates perfectly (distance 0): the rule must pick the largest one.
    s = np.array([0.1, 0.2, 0.8, 0.9])
    y = np.array([0, 0, 1, 1])
    out = M.threshold_metrics(s, y)
    grid = np.linspace(0, 1, 100)
    assert out['threshold'] == pytest.approx(grid[grid < 0.8].max())
    assert out['f1_weighted'] == out['accuracy'] == out['sensitivity'] == out['specificity'] == 1.0


def test_strict_inequality_at_threshold():
    # A score equal to a candidate threshold is not predicted positive at that threshold.
    grid = np.linspace(0, 1, 100)
    s = np.array([grid[50], grid[50], 0.0])
    y = np.array([1, 0, 0])
    conf = M.confusion_from_histograms(M.histograms(s, y)[0])
    assert conf['tp'][50] == 0 and conf['tp'][49] == 1


def test_constant_scores():
    s = np.full(6, 0.5)
    y = np.array([1, 0, 1, 0, 0, 0])
    assert M.auroc(s, y) == 0.5
    out = M.threshold_metrics(s, y)
    # Distances: t < 0.5 predicts all positive (TPR 1, FPR 1 -> 1.0); t >= 0.5 none (-> 1.0): a
    # tie everywhere, so the largest t (1.0) wins and nothing is predicted positive.
    assert out['threshold'] == 1.0
    assert out['precision'] == 0.0 and out['sensitivity'] == 0.0 and out['specificity'] == 1.0
    assert out['f1_weighted'] == pytest.approx(f1_score(y, np.zeros(6), average='weighted'))


def test_class_without_positives():
    s = np.array([0.1, 0.7, 0.4])
    y = np.zeros(3)
    assert np.isnan(M.auroc(s, y))
    out = M.threshold_metrics(s, y)
    assert np.isnan(out['sensitivity'])
    assert out['specificity'] == 1.0  # FPR alone decides: a threshold above every score
    assert out['f1_weighted'] == 1.0 and out['f1_positive'] == 0.0


def test_class_without_negatives():
    s = np.array([0.1, 0.7])
    y = np.ones(2)
    assert np.isnan(M.auroc(s, y))
    out = M.threshold_metrics(s, y)
    assert np.isnan(out['specificity']) and out['sensitivity'] == 1.0


def test_uncertain_and_missing_labels_are_ignored():
    s = np.array([0.9, 0.1, 0.95, 0.05, 0.5])
    y = np.array([1, 0, -1, np.nan, 0])
    assert M.auroc(s, y) == M.auroc(s[[0, 1, 4]], y[[0, 1, 4]])
    assert M.class_counts(y) == (1, 2)


def test_weights_equal_duplicated_rows():
    rng = np.random.default_rng(3)
    s = np.round(rng.random(30), 1)
    y = (rng.random(30) < 0.4).astype(float)
    w = rng.integers(0, 4, size=30).astype(float)
    rep = np.repeat(np.arange(30), w.astype(int))
    assert M.auroc(s, y, w[None])[0] == pytest.approx(roc_auc_score(y[rep], s[rep]))
    hist = M.histograms(s, y, w[None])[0]
    weighted = M.threshold_metrics_from_histograms(hist)
    plain = M.threshold_metrics(s[rep], y[rep])
    for name, value in plain.items():
        assert float(weighted[name]) == pytest.approx(value)


def test_roc_curve_ends():
    fpr, tpr = M.roc_curve(np.array([0.2, 0.4, 0.6]), np.array([0, 1, 1]))
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)


def test_bad_weights_shape():
    with pytest.raises(ValueError, match='weights must have 3 columns'):
        M.auroc(np.zeros(3), np.zeros(3), np.ones((2, 4)))
