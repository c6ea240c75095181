"""ReXGroundingCT metrics: gold scores 1, empty scores 0, a hand-worked instance case, the CIs."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bootstrap import BootstrapConfig
from benchmarks.grounding import metrics as M


def _ball(shape, centre, radius):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def _cohort(n_patients=6, seed=0):
    """Masks of several findings per case; some findings have two separate lesions."""
    rng = np.random.default_rng(seed)
    cases = []
    for p in range(n_patients):
        for f in range(2):
            mask = _ball((24, 32, 32), rng.integers(6, 18, 3), 3 + f)
            if rng.random() < 0.5:
                mask |= _ball((24, 32, 32), (5, 26, 26), 2)
            cases.append((f'p{p}', f'case{p}', f'finding {f}', mask))
    return cases


def test_gold_masks_score_exactly_one_on_every_metric():
    pairs = [M.score_pair(m, m, None, p, c, f) for p, c, f, m in _cohort()]
    out = M.summarise_pairs(pairs, BootstrapConfig(n_draws=50))
    assert set(out) == set(M.METRICS)
    for name in M.METRICS:
        assert out[name]['value'] == 1.0, name
        assert out[name]['ci_low'] == 1.0 and out[name]['ci_high'] == 1.0, name


def test_empty_predictions_score_zero_dice_hit_rate_recall():
    pairs = [M.score_pair(m, np.zeros_like(m), None, p, c, f) for p, c, f, m in _cohort()]
    out = M.summarise_pairs(pairs, BootstrapConfig(n_draws=50))
    for name in ('global_dice', 'global_hit_rate', 'instance_recall', 'pointing_game'):
        assert out[name]['value'] == 0.0, name
    assert out['instance_f1']['value'] == 0.0


def test_hand_worked_two_instances_one_miss():
    """Truth: lesions A and B. Prediction: A shifted by one voxel (Dice well above 0.2), B missed,
    and a spurious blob C. TP=1, FP=1, FN=1: precision = recall = F1 = 1/2."""
    shape = (20, 40, 40)
    a, b = _ball(shape, (10, 10, 10), 4), _ball(shape, (10, 30, 30), 3)
    truth = a | b
    shifted = np.roll(a, 1, axis=2)
    spurious = _ball(shape, (10, 10, 30), 2)
    pred = shifted | spurious
    assert M.instance_counts(truth, pred) == (1, 1, 1)
    out = M.point_estimates([M.score_pair(truth, pred)])
    assert out['instance_precision'] == pytest.approx(0.5)
    assert out['instance_recall'] == pytest.approx(0.5)
    assert out['instance_f1'] == pytest.approx(0.5)
    expected = 2 * np.count_nonzero(truth & pred) / (truth.sum() + pred.sum())
    assert out['global_dice'] == pytest.approx(expected)
    # Without the spurious blob: precision 1, recall 1/2, F1 = 2/3.
    out = M.point_estimates([M.score_pair(truth, shifted)])
    assert (out['instance_precision'], out['instance_recall']) == (1.0, 0.5)
    assert out['instance_f1'] == pytest.approx(2 / 3)


def test_instance_match_needs_dice_0_2_and_is_one_to_one():
    shape = (10, 30, 30)
    truth = _ball(shape, (5, 15, 15), 4)
    tiny = np.zeros(shape, bool)
    tiny[5, 15, 15] = True  # Dice ~ 2/(~250): below 0.2
    assert M.instance_counts(truth, tiny) == (0, 1, 1)
    # One prediction covering two true lesions matches at most one of them.
    t2 = _ball(shape, (5, 8, 15), 3) | _ball(shape, (5, 22, 15), 3)
    big = np.zeros(shape, bool)
    big[2:9, 4:27, 11:20] = True
    tp, fp, fn = M.instance_counts(t2, big)
    assert tp <= 1 and tp + fn == 2 and tp + fp == 1


def test_hit_rate_threshold_and_dice_of_empty_truth():
    truth = np.zeros((4, 10, 10), bool)
    truth[1:3, 0:10, 0:10] = True  # 200 voxels
    pred = np.zeros_like(truth)
    pred[1, 0:2, 0:6] = True  # 12 voxels inside: Dice = 24/212 = 0.113 >= 0.1
    assert M.score_pair(truth, pred).hit
    pred[1, 0:2, 5] = False  # 10 voxels: Dice = 20/210 = 0.095 < 0.1
    assert not M.score_pair(truth, pred).hit
    empty = np.zeros_like(truth)
    assert np.isnan(M.dice(empty, empty))
    pairs = [M.score_pair(empty, empty, patient='x'), M.score_pair(truth, truth, patient='y')]
    assert M.summarise_pairs(pairs, BootstrapConfig(n_draws=10))['global_dice']['value'] == 1.0


def test_pointing_game_uses_the_map_maximum():
    truth = _ball((10, 20, 20), (5, 5, 5), 2)
    heat = np.zeros(truth.shape, np.float32)
    heat[5, 5, 5] = 1.0
    assert M.pointing_hit(truth, heat)
    heat[5, 15, 15] = 2.0
    assert not M.pointing_hit(truth, heat)
    assert not M.pointing_hit(truth, np.zeros_like(heat))  # a flat map points nowhere


def test_bootstrap_resamples_patients():
    rng = np.random.default_rng(1)
    pairs = []
    for p, c, f, m in _cohort(10):
        pred = m if rng.random() < 0.5 else np.zeros_like(m)
        pairs.append(M.score_pair(m, pred, None, p, c, f))
    out = M.summarise_pairs(pairs, BootstrapConfig(n_draws=200, seed=3))
    d = out['global_dice']
    assert d['ci_low'] < d['value'] < d['ci_high']
    assert d['n_draws_defined'] == 200
    again = M.summarise_pairs(pairs, BootstrapConfig(n_draws=200, seed=3))
    assert again == out
