"""The bootstrap really resamples scans, is reproducible, and matches explicit resampling."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks import bootstrap as B
from benchmarks.scoring import classification_draws, score
from benchmarks.tables import Table


def test_draw_counts_are_multiplicities():
    counts = B.draw_counts(7, 50, seed=1)
    assert counts.shape == (50, 7)
    assert np.all(counts.sum(1) == 7)
    assert np.array_equal(counts, B.draw_counts(7, 50, seed=1))
    assert not np.array_equal(counts, B.draw_counts(7, 50, seed=2))
    assert len({tuple(r) for r in counts}) > 40  # draws differ: it really resamples


def test_interval_is_percentile_and_skips_undefined():
    draws = np.r_[np.arange(100.0), [np.nan] * 10]
    lo, hi = B.interval(draws[:, None], 0.9)
    assert lo[0] == pytest.approx(np.percentile(np.arange(100.0), 5))
    assert hi[0] == pytest.approx(np.percentile(np.arange(100.0), 95))
    entry = B.summarise(1.0, draws, 0.9)
    assert entry['n_draws_defined'] == 100


def test_config_validation():
    with pytest.raises(ValueError, match='level must be in'):
        B.BootstrapConfig(level=95)
    with pytest.raises(ValueError, match="unit must be 'scan' or 'volume'"):
        B.BootstrapConfig(unit='patient')


def _toy(n_scans=40, seed=0):
    rng = np.random.default_rng(seed)
    ids, scores, labels = [], [], []
    for k in range(n_scans):
        y = rng.random(2) < 0.4
        for recon in (1, 2):  # two reconstructions per scan, same labels, similar scores
            ids.append(f'valid_{k}_a_{recon}.nii.gz')
            labels.append(y.astype(float))
            scores.append(np.clip(y * 0.3 + rng.random(2) * 0.7, 0, 1))
    return ids, np.array(scores), np.array(labels)


def test_draws_equal_explicit_resampling_of_scans():
    ids, s, y = _toy()
    index, units = B.unit_index([i.rsplit('_', 1)[0] for i in ids])
    counts = B.draw_counts(len(units), 5, seed=0)
    draws = classification_draws(s, y, index, counts)
    for b in range(5):
        rows = np.concatenate(
            [
                np.flatnonzero(index == u)
                for u in range(len(units))
                for _ in range(int(counts[b, u]))
            ]
        )
        for c in range(2):
            assert draws['auroc'][b, c] == pytest.approx(roc_auc_score(y[rows, c], s[rows, c]))


def test_score_cis_bracket_estimate_and_reproduce():
    ids, s, y = _toy()
    cols = ['A', 'B']
    res1 = score(
        Table(ids, cols, s), Table(ids, cols, y), bootstrap=B.BootstrapConfig(n_draws=200, seed=5)
    )
    res2 = score(
        Table(ids, cols, s), Table(ids, cols, y), bootstrap=B.BootstrapConfig(n_draws=200, seed=5)
    )
    assert res1['macro'] == res2['macro']
    auc = res1['macro']['auroc']
    assert auc['ci_low'] < auc['value'] < auc['ci_high']  # not degenerate (CT-CLIP's were)
    assert res1['n_resampling_units'] == 40 and res1['n_items'] == 80
