"""Zero-shot classification metrics under the CT-CLIP protocol, vectorised over bootstrap draws.

Every function takes optional per-item weights of shape (B, N): one row per bootstrap draw, where
a weight is how many times the draw picked the item's scan. Weights of ones give the plain
metric, so the point estimate and the bootstrap share one implementation and cannot drift apart.

Conventions (also stated in every report):
- AUROC is the Mann-Whitney statistic with ties counted as 1/2 (equal to sklearn's
  `roc_auc_score`); it is NaN when the evaluated rows hold only one class (`ctcommon.metrics`,
  re-exported here as `auroc`).
- The threshold rule: candidates `linspace(0, 1, 100)`, prediction `score > t` (strict), pick the t
  minimising sqrt((1 - TPR)^2 + FPR^2), ties going to the larger t. A class without positives
  (or without negatives) drops the undefined term from the distance.
- At that threshold: support-weighted F1 over the classes {0, 1} (sklearn's
  `f1_score(average='weighted')`), positive-class F1, accuracy, precision of the positive class
  (0 when nothing is predicted positive, as sklearn's default), sensitivity and specificity
  (NaN when undefined).
"""

from __future__ import annotations

import numpy as np

from ctcommon.metrics import as_weights as _as_weights
from ctcommon.metrics import auroc as auroc  # re-exported: `M.auroc` in scoring
from ctcommon.metrics import binary_masks as _binary

N_THRESHOLDS = 100
THRESHOLDS = np.linspace(0.0, 1.0, N_THRESHOLDS)
THRESHOLD_METRICS = (
    'f1_weighted',
    'f1_positive',
    'accuracy',
    'precision',
    'sensitivity',
    'specificity',
)


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct score, from (0, 0) to (1, 1), for plotting."""
    scores = np.asarray(scores, dtype=np.float64)
    positive, valid = _binary(labels)
    scores, positive = scores[valid], positive[valid]
    order = np.argsort(-scores, kind='stable')
    s, p = scores[order], positive[order]
    last = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(p)[last]
    fp = np.cumsum(~p)[last]
    n_pos, n_neg = max(p.sum(), 1), max((~p).sum(), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def threshold_bins(scores: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """Bin j of a score = how many thresholds lie strictly below it, so `score > t_k` iff k < j."""
    return np.searchsorted(thresholds, np.asarray(scores, dtype=np.float64), side='left')


def histograms(
    scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Weighted counts per threshold bin: (B, 2, T + 1), axis 1 = (positives, negatives)."""
    positive, valid = _binary(labels)
    w = _as_weights(len(positive), weights)
    onehot = np.zeros((len(positive), N_THRESHOLDS + 1))
    onehot[np.arange(len(positive)), threshold_bins(scores)] = 1.0
    pos = w @ (onehot * (positive & valid)[:, None])
    neg = w @ (onehot * (~positive & valid)[:, None])
    return np.stack([pos, neg], axis=-2)


def confusion_from_histograms(hist: np.ndarray) -> dict[str, np.ndarray]:
    """TP, FP, FN, TN at every threshold (..., T) from bin histograms (..., 2, T + 1)."""
    pos, neg = hist[..., 0, :], hist[..., 1, :]
    n_pos, n_neg = pos.sum(-1, keepdims=True), neg.sum(-1, keepdims=True)
    tp = n_pos - np.cumsum(pos, axis=-1)[..., :-1]
    fp = n_neg - np.cumsum(neg, axis=-1)[..., :-1]
    return {'tp': tp, 'fp': fp, 'fn': n_pos - tp, 'tn': n_neg - fp}


def choose_threshold(conf: dict[str, np.ndarray]) -> np.ndarray:
    """Index of the CT-CLIP threshold (..., ): closest to (FPR 0, TPR 1), ties to the larger t."""
    tp, fp, fn, tn = conf['tp'], conf['fp'], conf['fn'], conf['tn']
    n_pos, n_neg = tp + fn, fp + tn
    with np.errstate(invalid='ignore', divide='ignore'):
        miss = np.where(n_pos > 0, 1.0 - tp / n_pos, 0.0)
        fpr = np.where(n_neg > 0, fp / n_neg, 0.0)
    # Rounding makes mathematically equal distances compare equal, so ties resolve by rule.
    dist = np.round(np.sqrt(miss**2 + fpr**2), 12)
    last = dist.shape[-1] - 1
    return last - np.argmin(dist[..., ::-1], axis=-1)


def _ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(den > 0, num / np.where(den > 0, den, 1), empty)


def metrics_at(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """Threshold metrics from confusion counts (any shape, weighted counts allowed)."""
    n_pos, n_neg = tp + fn, fp + tn
    f1_pos = _ratio(2 * tp, 2 * tp + fp + fn, 0.0)
    f1_neg = _ratio(2 * tn, 2 * tn + fn + fp, 0.0)
    return {
        'f1_weighted': _ratio(n_pos * f1_pos + n_neg * f1_neg, n_pos + n_neg, np.nan),
        'f1_positive': f1_pos,
        'accuracy': _ratio(tp + tn, n_pos + n_neg, np.nan),
        'precision': _ratio(tp, tp + fp, 0.0),
        'sensitivity': _ratio(tp, n_pos, np.nan),
        'specificity': _ratio(tn, n_neg, np.nan),
    }


def threshold_metrics_from_histograms(hist: np.ndarray) -> dict[str, np.ndarray]:
    """Apply the threshold rule and return the metrics (...,) plus `threshold`."""
    conf = confusion_from_histograms(hist)
    k = choose_threshold(conf)
    picked = {
        name: np.take_along_axis(v, k[..., None], axis=-1)[..., 0] for name, v in conf.items()
    }
    out = metrics_at(picked['tp'], picked['fp'], picked['fn'], picked['tn'])
    out['threshold'] = THRESHOLDS[k]
    return out


def threshold_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The CT-CLIP operating point and its metrics for one class (plain floats)."""
    out = threshold_metrics_from_histograms(histograms(scores, labels)[0])
    return {name: float(v) for name, v in out.items()}


def class_counts(labels: np.ndarray) -> tuple[int, int]:
    positive, valid = _binary(labels)
    return int(positive.sum()), int((valid & ~positive).sum())
