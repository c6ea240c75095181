"""ctcommon.metrics.auroc: scikit-learn's number, weights as repeated rows, ties, one class."""

from __future__ import annotations

import numpy as np
import pytest

from ctcommon.metrics import auroc

roc_auc_score = pytest.importorskip('sklearn.metrics').roc_auc_score


def rank_sum_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The classic formula the callers used before: (rank sum of positives - n+(n+ + 1)/2) / n+n-."""
    order = np.argsort(scores, kind='mergesort')
    ranks = np.empty(len(scores))
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts - 1) / 2.0 + 1, counts)
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.mark.parametrize('seed', range(5))
def test_matches_sklearn_and_the_rank_sum_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    y = rng.integers(0, 2, n)
    y[:2] = (0, 1)
    s = np.round(rng.random(n), 1)  # many ties
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auroc(s, y) == rank_sum_auroc(y, s)  # exact: the callers' numbers did not move


def test_ties_count_half():
    assert auroc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert auroc(np.array([0.1, 0.5, 0.5, 0.9]), np.array([0, 0, 1, 1])) == 0.875


def test_integer_weights_equal_repeated_rows():
    rng = np.random.default_rng(7)
    s, y = np.round(rng.random(40), 1), (rng.random(40) < 0.4).astype(float)
    w = rng.integers(0, 4, size=(3, 40)).astype(float)
    out = auroc(s, y, w)
    assert out.shape == (3,)
    for row, value in zip(w, out, strict=True):
        rep = np.repeat(np.arange(40), row.astype(int))
        assert value == pytest.approx(roc_auc_score(y[rep], s[rep]), abs=1e-12)


def test_one_class_is_nan_and_other_labels_are_ignored():
    s = np.array([0.9, 0.1, 0.95, 0.05, 0.5])
    assert np.isnan(auroc(s, np.ones(5)))
    assert np.isnan(auroc(s, np.array([1, -1, np.nan, 1, 1])))
    y = np.array([1, 0, -1, np.nan, 0])
    assert auroc(s, y) == auroc(s[[0, 1, 4]], y[[0, 1, 4]]) == 1.0
    weights = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0]], dtype=float)  # draw 2: no negatives
    out = auroc(s, y, weights)
    assert out[0] == 1.0 and np.isnan(out[1])


def test_bad_shapes_fail_clearly():
    with pytest.raises(ValueError, match='weights must have 3 columns'):
        auroc(np.zeros(3), np.zeros(3), np.ones((2, 4)))
    with pytest.raises(ValueError, match='scores and labels must be 1-D of one length'):
        auroc(np.zeros(3), np.zeros(4))
