"""ReXGroundingCT's leaderboard metrics, plus the pointing game, with bootstrap CIs over patients.

Definitions (rexrank.ai/ReXGroundingCT), computed per (case, finding) pair:
- global Dice: the mean over pairs of the Dice between the predicted and the true mask;
- global hit rate: the share of pairs whose Dice is >= 0.1;
- instances are 3D connected components (26-connectivity) of a finding's true and predicted
  masks; a true and a predicted instance are matched one to one, best Dice first, and a match is a
  true positive when its Dice is >= 0.2. Unmatched predicted instances are false positives,
  unmatched true instances false negatives. Precision TP / (TP + FP) and recall TP / (TP + FN)
  pool the counts over all pairs (micro), F1 is their harmonic mean;
- pointing game: the map's maximum falls inside the true mask. With several maximal voxels, the
  one nearest their centroid is the point; a constant map (an empty prediction) points nowhere.

A pair with an empty true mask has no defined Dice; it is left out and listed, never scored as 0
or 1 silently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from benchmarks.bootstrap import (
    BootstrapConfig,
    draw_counts,
    summarise,
    unit_index,
    weighted_mean_draws,
)

_logger = logging.getLogger(__name__)

HIT_DICE = 0.1
INSTANCE_DICE = 0.2
METRICS = (
    'global_dice',
    'global_hit_rate',
    'instance_precision',
    'instance_recall',
    'instance_f1',
    'pointing_game',
)
_STRUCTURE = np.ones((3, 3, 3), bool)  # 26-connectivity: diagonal neighbours are one lesion


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty (undefined, not perfect)."""
    truth, pred = np.asarray(truth, bool), np.asarray(pred, bool)
    if truth.shape != pred.shape:
        raise ValueError(f'masks must have the same shape, not {truth.shape} and {pred.shape}')
    total = int(truth.sum()) + int(pred.sum())
    if total == 0:
        return float('nan')
    return 2.0 * int(np.count_nonzero(truth & pred)) / total


def instance_counts(
    truth: np.ndarray, pred: np.ndarray, threshold: float = INSTANCE_DICE
) -> tuple[int, int, int]:
    """(TP, FP, FN) of one finding: connected components matched one to one by Dice."""
    truth, pred = np.asarray(truth, bool), np.asarray(pred, bool)
    t_lab, n_t = ndimage.label(truth, structure=_STRUCTURE)
    p_lab, n_p = ndimage.label(pred, structure=_STRUCTURE)
    if n_t == 0 or n_p == 0:
        return 0, n_p, n_t
    t_size = np.bincount(t_lab.ravel(), minlength=n_t + 1)
    p_size = np.bincount(p_lab.ravel(), minlength=n_p + 1)
    both = (t_lab > 0) & (p_lab > 0)
    pair = t_lab[both].astype(np.int64) * (n_p + 1) + p_lab[both]
    keys, inter = np.unique(pair, return_counts=True)
    ti, pj = keys // (n_p + 1), keys % (n_p + 1)
    scores = 2.0 * inter / (t_size[ti] + p_size[pj])
    used_t, used_p, tp = set(), set(), 0
    for k in np.argsort(-scores, kind='stable'):
        if scores[k] < threshold:
            break
        if ti[k] in used_t or pj[k] in used_p:
            continue
        used_t.add(int(ti[k]))
        used_p.add(int(pj[k]))
        tp += 1
    return tp, n_p - tp, n_t - tp


def pointing_hit(truth: np.ndarray, score_map: np.ndarray) -> bool:
    """Whether the map's maximum lies inside `truth` (see the module docstring for ties)."""
    score_map = np.asarray(score_map, np.float32)
    if score_map.shape != truth.shape:
        raise ValueError(f'the map must have the mask shape {truth.shape}, not {score_map.shape}')
    finite = np.where(np.isfinite(score_map), score_map, -np.inf)
    top = finite.max()
    if not np.isfinite(top) or top == finite.min():
        return False
    idx = np.argwhere(finite == top)
    point = idx[np.argmin(((idx - idx.mean(axis=0)) ** 2).sum(axis=1))]
    return bool(np.asarray(truth, bool)[tuple(point)])


@dataclass
class PairScore:
    """One (case, finding) pair: everything the metrics aggregate."""

    patient: str
    case: str
    finding: str
    category: str = ''
    dice: float = float('nan')
    tp: int = 0
    fp: int = 0
    fn: int = 0
    pointing: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def hit(self) -> bool:
        return bool(self.dice >= HIT_DICE)


def score_pair(
    truth: np.ndarray,
    pred: np.ndarray,
    score_map: np.ndarray | None = None,
    patient: str = '',
    case: str = '',
    finding: str = '',
    category: str = '',
) -> PairScore:
    """Score one finding; `score_map` (a heat map) drives the pointing game, else `pred` does."""
    truth = np.asarray(truth, bool)
    pred = np.asarray(pred, bool)
    tp, fp, fn = instance_counts(truth, pred)
    return PairScore(
        patient=patient,
        case=case,
        finding=finding,
        category=category,
        dice=dice(truth, pred),
        tp=tp,
        fp=fp,
        fn=fn,
        pointing=pointing_hit(truth, pred if score_map is None else score_map),
    )


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float('nan')


def _f1(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    p, r = np.asarray(p, float), np.asarray(r, float)
    with np.errstate(invalid='ignore', divide='ignore'):
        f = 2 * p * r / (p + r)
    return np.where((p + r) == 0, 0.0, f)


def point_estimates(pairs: Sequence[PairScore]) -> dict[str, float]:
    """The six metrics over `pairs` (pairs with an undefined Dice must be removed first)."""
    d = np.array([p.dice for p in pairs], float)
    tp = sum(p.tp for p in pairs)
    fp = sum(p.fp for p in pairs)
    fn = sum(p.fn for p in pairs)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    if tp + fp == 0 and tp + fn > 0:
        precision = 0.0  # nothing predicted: no correct instance among the predictions
    return {
        'global_dice': float(d.mean()) if d.size else float('nan'),
        'global_hit_rate': float((d >= HIT_DICE).mean()) if d.size else float('nan'),
        'instance_precision': precision,
        'instance_recall': recall,
        'instance_f1': float(_f1(precision, recall)),
        'pointing_game': float(np.mean([p.pointing for p in pairs])) if pairs else float('nan'),
    }


def summarise_pairs(
    pairs: Sequence[PairScore], bootstrap: BootstrapConfig | None = None
) -> dict[str, dict]:
    """Each metric with its percentile bootstrap interval; patients are resampled together."""
    bootstrap = bootstrap or BootstrapConfig()
    pairs = [p for p in pairs if not np.isnan(p.dice)]
    point = point_estimates(pairs)
    if not pairs:
        return {m: summarise(point[m], np.zeros(0), bootstrap.level) for m in METRICS}
    index, units = unit_index([p.patient for p in pairs])
    counts = draw_counts(len(units), bootstrap.n_draws, bootstrap.seed)
    valid = np.ones(len(pairs), bool)
    d = np.array([p.dice for p in pairs], float)
    draws = {
        'global_dice': weighted_mean_draws(d, valid, index, counts),
        'global_hit_rate': weighted_mean_draws((d >= HIT_DICE).astype(float), valid, index, counts),
        'pointing_game': weighted_mean_draws(
            np.array([p.pointing for p in pairs], float), valid, index, counts
        ),
    }
    per_unit = {
        k: np.bincount(index, weights=[getattr(p, k) for p in pairs], minlength=len(units))
        for k in ('tp', 'fp', 'fn')
    }
    tp, fp, fn = (counts @ per_unit[k] for k in ('tp', 'fp', 'fn'))
    with np.errstate(invalid='ignore', divide='ignore'):
        precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1), np.nan)
        precision = np.where((tp + fp == 0) & (tp + fn > 0), 0.0, precision)
        recall = np.where(tp + fn > 0, tp / np.where(tp + fn > 0, tp + fn, 1), np.nan)
    draws['instance_precision'] = precision
    draws['instance_recall'] = recall
    draws['instance_f1'] = np.where(
        np.isnan(precision) | np.isnan(recall), np.nan, _f1(precision, recall)
    )
    return {m: summarise(point[m], draws[m], bootstrap.level) for m in METRICS}


def per_finding_table(pairs: Sequence[PairScore], key: str = 'finding') -> list[dict]:
    """Point estimates per finding name (or per `category`), for the report's tables."""
    groups: dict[str, list[PairScore]] = {}
    for p in pairs:
        if not np.isnan(p.dice):
            groups.setdefault(getattr(p, key) or '(none)', []).append(p)
    return [
        {key: name, 'n': len(items), **point_estimates(items)}
        for name, items in sorted(groups.items())
    ]
