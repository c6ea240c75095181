"""AUROC, once: the labeler's evaluation, training's validation and the benchmarks all use it.

The statistic is Mann-Whitney's with ties counted as 1/2 (equal to scikit-learn's
`roc_auc_score`). It takes optional per-item weights of shape (B, N), one row per bootstrap draw
(a weight is how many times the draw picked the item), so a point estimate and its bootstrap
share one implementation and cannot drift apart. With integer weights every sum is exact in
float64, so the result equals the classic rank-sum formula bit for bit.
"""

from __future__ import annotations

import numpy as np


def as_weights(n: int, weights: np.ndarray | None) -> np.ndarray:
    """(B, N) float64 weights; ones for a plain (unweighted) estimate."""
    if weights is None:
        return np.ones((1, n))
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim == 1:
        weights = weights[None]
    if weights.shape[1] != n:
        raise ValueError(f'weights must have {n} columns (one per item), not {weights.shape[1]}')
    return weights


def binary_masks(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positive, valid) masks: 1 is positive, 0 negative; NaN and any other value are masked."""
    labels = np.asarray(labels, dtype=np.float64)
    positive = labels == 1
    return positive, positive | (labels == 0)


def auroc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """AUROC of one class for each weight row; a float when `weights` is None.

    NaN where the (weighted) rows hold only one class: an undefined AUROC must never read as a
    number.

    Args:
        scores: (N,) higher means more likely positive.
        labels: (N,) 1 positive, 0 negative, anything else (NaN, -1) ignored.
        weights: (B, N) non-negative item weights, e.g. bootstrap multiplicities.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive, valid = binary_masks(labels)
    if positive.shape != scores.shape or scores.ndim != 1:
        raise ValueError(
            f'scores and labels must be 1-D of one length, not {scores.shape} and {positive.shape}'
        )
    w = as_weights(len(scores), weights)
    order = np.argsort(scores, kind='stable')
    sorted_scores = scores[order]
    new = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(scores)]
    # Items along axis 0 (N, B): cumulative sums and row gathers stay contiguous per draw.
    wt = w.T[order] * valid[order][:, None]
    pos = positive[order]
    neg_cum = np.vstack([np.zeros((1, wt.shape[1])), np.cumsum(wt * ~pos[:, None], axis=0)])
    rows = np.flatnonzero(pos)
    wp = wt[rows]
    # Negatives strictly below a positive count 1, tied ones 1/2: (below + below-or-tied) / 2.
    num = 0.5 * np.sum(wp * (neg_cum[starts[group[rows]]] + neg_cum[ends[group[rows]]]), axis=0)
    den = wp.sum(axis=0) * neg_cum[-1]
    with np.errstate(invalid='ignore', divide='ignore'):
        out = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return float(out[0]) if weights is None else out
