"""Paired differences between two training arms, with a bootstrap over test patients and seeds.

An ablation claim ("A beats B") is a difference of means over seeds, and it varies with both the
test patients and the training seeds. Each draw resamples the patients (with replacement, every
item of a picked patient travelling with it) and, independently, the seeds; the same draw is
applied to both arms (paired), each arm's metric is averaged over the draw's seeds, and the
difference is taken per draw. The claim is "reproduced" only when the percentile interval of the
difference excludes 0 in the claimed direction, "contradicted" when it excludes 0 the other way,
and "unresolved" otherwise. Every draw is a weight row, so `ctcommon.metrics.auroc` evaluates all
of them at once.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.bootstrap import interval
from benchmarks.ctrate import load_labels
from benchmarks.tables import Table, align, normalise_id, read_table
from ctcommon.metrics import auroc
from preprocessing.ctrate import split_volume_name

_logger = logging.getLogger(__name__)

VERDICTS = ('reproduced', 'contradicted', 'unresolved')


def patient_of(volume_id: str) -> str:
    """The patient of a CT-RATE volume name (`test_12_a_1.nii.gz` -> `test_12`), else the id."""
    try:
        return split_volume_name(volume_id)['patient_id']
    except ValueError:
        return volume_id


def verdict(low: float | None, high: float | None, direction: int = 1) -> str:
    """'reproduced' when the interval excludes 0 on the claimed side (`direction` +1: A > B,
    -1: A < B), 'contradicted' when it excludes 0 on the other, else 'unresolved'."""
    if direction not in (1, -1):
        raise ValueError(f'direction must be 1 or -1, not {direction!r}')
    if low is None or high is None or np.isnan(low) or np.isnan(high):
        return 'unresolved'
    low, high = low * direction, high * direction
    low, high = min(low, high), max(low, high)
    if low > 0:
        return 'reproduced'
    if high < 0:
        return 'contradicted'
    return 'unresolved'


def _counts(rng: np.random.Generator, n: int, n_draws: int) -> np.ndarray:
    """(n_draws, n) multiplicities of n picks with replacement."""
    picks = rng.integers(0, n, size=(n_draws, n))
    rows = np.repeat(np.arange(n_draws), n)
    counts = np.zeros((n_draws, n))
    np.add.at(counts, (rows, picks.ravel()), 1.0)
    return counts


@dataclass
class PairedBootstrap:
    """One set of draws over `patients` and `n_seeds` seeds, shared by every comparison, so the
    AUROC and the grounding differences of one claim see the same resampled patients and seeds.

    Args:
        patients: the resampling units (test patients), each listed once.
        n_seeds: how many training seeds each arm ran (the leading axis of every array).
        n_draws: bootstrap draws; 0 gives point estimates without intervals.
    """

    patients: Sequence[str]
    n_seeds: int
    n_draws: int = 1000
    seed: int = 0
    level: float = 0.95

    def __post_init__(self) -> None:
        self.patients = list(self.patients)
        if len(set(self.patients)) != len(self.patients):
            raise ValueError('patients must be listed once each, not repeated')
        if not self.patients:
            raise ValueError('patients must not be empty')
        if self.n_seeds < 1:
            raise ValueError(f'n_seeds must be >= 1, not {self.n_seeds}')
        if self.n_draws < 0:
            raise ValueError(f'n_draws must be >= 0, not {self.n_draws}')
        if not 0 < self.level < 1:
            raise ValueError(f'level must be in (0, 1), not {self.level}')
        rng = np.random.default_rng(self.seed)
        self.patient_counts = _counts(rng, len(self.patients), self.n_draws)  # (B, U)
        self.seed_counts = _counts(rng, self.n_seeds, self.n_draws)  # (B, S)
        self._where = {p: i for i, p in enumerate(self.patients)}

    def item_weights(self, item_patients: Sequence[str]) -> np.ndarray:
        """(1 + B, N) weights of items whose patients are `item_patients`: row 0 is the data."""
        missing = sorted({p for p in item_patients if p not in self._where})
        if missing:
            raise ValueError(f'items of patients {missing[:5]} that are not in the draws')
        index = np.array([self._where[p] for p in item_patients], dtype=np.int64)
        return np.vstack([np.ones(len(index)), self.patient_counts[:, index]])

    def _combine(self, a: np.ndarray, b: np.ndarray, direction: int) -> dict:
        """(S, 1 + B) per-seed statistics of both arms -> the paired difference and its verdict."""
        diff = a - b
        point = float(np.nanmean(diff[:, 0]))
        seed_w = self.seed_counts / self.n_seeds  # (B, S); each row sums to 1
        with np.errstate(invalid='ignore'):
            draws = np.einsum('bs,sb->b', seed_w, diff[:, 1:])  # NaN where a class is undefined
            mean_a = np.einsum('bs,sb->b', seed_w, a[:, 1:])
            mean_b = np.einsum('bs,sb->b', seed_w, b[:, 1:])
        low = high = None
        if self.n_draws:
            lo, hi = interval(draws.reshape(-1, 1), self.level)
            low = None if np.isnan(lo[0]) else float(lo[0])
            high = None if np.isnan(hi[0]) else float(hi[0])

        def arm(x: np.ndarray, means: np.ndarray) -> dict:
            lo_, hi_ = interval(means.reshape(-1, 1), self.level) if self.n_draws else ([None],) * 2
            return {
                'mean': float(np.nanmean(x[:, 0])),
                'per_seed': [float(v) for v in x[:, 0]],
                'ci_low': None if lo_[0] is None or np.isnan(lo_[0]) else float(lo_[0]),
                'ci_high': None if hi_[0] is None or np.isnan(hi_[0]) else float(hi_[0]),
            }

        return {
            'difference': point,
            'ci_low': low,
            'ci_high': high,
            'level': self.level,
            'direction': 'a > b' if direction == 1 else 'a < b',
            'verdict': verdict(low, high, direction),
            'n_draws_defined': int(np.sum(~np.isnan(draws))),
            'a': arm(a, mean_a),
            'b': arm(b, mean_b),
        }

    def macro_auroc(
        self, scores: np.ndarray, labels: np.ndarray, weights: np.ndarray
    ) -> np.ndarray:
        """(S, 1 + B) macro AUROC over the classes defined in each draw (the benchmarks' mean)."""
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.float64)
        if scores.ndim != 3 or scores.shape[0] != self.n_seeds or scores.shape[1:] != labels.shape:
            raise ValueError(
                f'scores must have shape (seeds={self.n_seeds}, {labels.shape[0]}, '
                f'{labels.shape[1]}) like the labels, not {scores.shape}'
            )
        out = np.empty((self.n_seeds, weights.shape[0], labels.shape[1]))
        for s in range(self.n_seeds):
            for c in range(labels.shape[1]):
                out[s, :, c] = auroc(scores[s, :, c], labels[:, c], weights)
        with warnings.catch_warnings():  # a draw without a defined class stays NaN
            warnings.simplefilter('ignore', RuntimeWarning)
            return np.nanmean(out, axis=-1)

    def auroc_difference(
        self,
        scores_a: np.ndarray,
        scores_b: np.ndarray,
        labels: np.ndarray,
        item_patients: Sequence[str],
        direction: int = 1,
    ) -> dict:
        """Macro AUROC of arm A minus arm B; scores (seeds, items, classes), labels (items,
        classes) with 1 / 0 and NaN for unknown."""
        weights = self.item_weights(item_patients)
        a = self.macro_auroc(scores_a, labels, weights)
        b = self.macro_auroc(scores_b, labels, weights)
        return {'metric': 'macro AUROC', **self._combine(a, b, direction)}

    def mean_difference(
        self,
        values_a: np.ndarray,
        values_b: np.ndarray,
        item_patients: Sequence[str],
        direction: int = 1,
        metric: str = 'mean',
    ) -> dict:
        """Mean of a per-item value (a pointing-game hit) of arm A minus arm B; (seeds, items)."""
        weights = self.item_weights(item_patients)
        stats = []
        for values in (values_a, values_b):
            values = np.asarray(values, dtype=np.float64)
            if values.shape != (self.n_seeds, len(item_patients)):
                raise ValueError(
                    f'values must have shape (seeds={self.n_seeds}, items={len(item_patients)}), '
                    f'not {values.shape}'
                )
            valid = ~np.isnan(values)
            num = np.where(valid, values, 0.0) @ weights.T  # (S, 1 + B)
            den = valid.astype(np.float64) @ weights.T
            with np.errstate(invalid='ignore', divide='ignore'):
                stats.append(np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan))
        return {'metric': metric, **self._combine(stats[0], stats[1], direction)}


def _read_scores(runs: Sequence[Path], labels: Table) -> np.ndarray:
    """(seeds, items, classes) zero-shot scores of `ctclip bench ct-rate` runs (`scores.csv`),
    rows in the label table's order; every run must score every labelled volume."""
    out = []
    for run in runs:
        scores, lab = align(read_table(Path(run) / 'scores.csv'), labels)
        if lab.ids != labels.ids:
            raise ValueError(f'{run}/scores.csv does not score every labelled volume')
        where = {c: k for k, c in enumerate(scores.columns)}
        missing = [c for c in labels.columns if c not in where]
        if missing:
            raise ValueError(f'{run}/scores.csv has no column for {missing}')
        out.append(scores.values[:, [where[c] for c in labels.columns]])
    return np.stack(out)


def _read_pairs(runs: Sequence[Path]) -> tuple[list[str], np.ndarray] | None:
    """(patients, (seeds, pairs) pointing-game hits) of `ctclip bench grounding` runs
    (`pairs.csv`), or None when a run was not scored for grounding."""
    rows_per_run = []
    for run in runs:
        path = Path(run) / 'pairs.csv'
        if not path.is_file():
            return None
        with path.open(encoding='utf-8', newline='') as f:
            rows = sorted(csv.DictReader(f), key=lambda r: (r['case'], r['category']))
        rows_per_run.append(rows)
    keys = [(r['case'], r['category']) for r in rows_per_run[0]]
    for run, rows in zip(runs, rows_per_run, strict=True):
        if [(r['case'], r['category']) for r in rows] != keys:
            raise ValueError(f'{run}/pairs.csv scores other findings than {runs[0]}/pairs.csv')
    patients = [r['patient'] for r in rows_per_run[0]]
    hits = np.array([[float(r['pointing']) for r in rows] for rows in rows_per_run])
    return patients, hits


def compare_runs(
    runs_a: Sequence[Path],
    runs_b: Sequence[Path],
    labels_csv: str | Path,
    direction: int = 1,
    n_draws: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    grounding: str = 'grounding',
) -> dict:
    """Paired differences of two arms from their benchmark folders, one per seed (same seed
    order in both): macro AUROC always, the pointing game where `<run>/<grounding>/pairs.csv`
    exists for every run. One draw of patients and seeds serves both metrics."""
    if len(runs_a) != len(runs_b) or not runs_a:
        raise ValueError(f'both arms need one run per seed, not {len(runs_a)} and {len(runs_b)}')
    labels = load_labels(labels_csv)
    a, b = _read_scores(runs_a, labels), _read_scores(runs_b, labels)
    items = [patient_of(normalise_id(i)) for i in labels.ids]
    pairs_a = _read_pairs([Path(r) / grounding for r in runs_a])
    pairs_b = _read_pairs([Path(r) / grounding for r in runs_b])
    pairs = pairs_a is not None and pairs_b is not None
    if pairs and pairs_a[0] != pairs_b[0]:
        raise ValueError('the two arms were scored on different grounding findings')
    patients = sorted(set(items) | set(pairs_a[0] if pairs else ()))
    boot = PairedBootstrap(patients, len(runs_a), n_draws, seed, level)
    out = {
        'n_patients': len(patients),
        'n_volumes': len(items),
        'n_seeds': len(runs_a),
        'bootstrap': {'n_draws': n_draws, 'seed': seed, 'level': level, 'unit': 'patient+seed'},
        'auroc': boot.auroc_difference(a, b, labels.values, items, direction),
    }
    if pairs:
        out['pointing_game'] = boot.mean_difference(
            pairs_a[1], pairs_b[1], pairs_a[0], direction, metric='pointing game'
        )
        out['n_grounding_pairs'] = len(pairs_a[0])
    return out


__all__ = ['VERDICTS', 'PairedBootstrap', 'compare_runs', 'patient_of', 'verdict']
