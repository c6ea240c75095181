"""The paired bootstrap of the ablation: hand-checkable cases, pairing, joint seed resampling."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.paired import PairedBootstrap, patient_of, verdict
from ctcommon.metrics import auroc


def _cohort(n_patients: int = 40, n_classes: int = 3, seed: int = 0):
    """Two volumes per patient (they share labels, as a scan's reconstructions do)."""
    rng = np.random.default_rng(seed)
    patients = [f'test_{i}' for i in range(n_patients)]
    labels = rng.integers(0, 2, size=(n_patients, n_classes)).astype(float)
    labels = np.repeat(labels, 2, axis=0)
    items = [p for p in patients for _ in range(2)]
    return patients, items, labels


def test_identical_arms_give_a_zero_interval_and_no_verdict():
    patients, items, labels = _cohort()
    rng = np.random.default_rng(1)
    scores = rng.random((3, *labels.shape))
    boot = PairedBootstrap(patients, n_seeds=3, n_draws=200)
    result = boot.auroc_difference(scores, scores.copy(), labels, items)
    assert result['difference'] == 0.0
    assert (result['ci_low'], result['ci_high']) == (0.0, 0.0)
    assert result['verdict'] == 'unresolved'
    assert result['n_draws_defined'] == 200


def test_a_clearly_better_arm_is_reproduced_and_the_reverse_contradicted():
    patients, items, labels = _cohort()
    rng = np.random.default_rng(2)
    perfect = np.broadcast_to(labels + 0.01 * rng.random(labels.shape), (3, *labels.shape))
    noise = rng.random((3, *labels.shape))
    boot = PairedBootstrap(patients, n_seeds=3, n_draws=300)
    better = boot.auroc_difference(perfect, noise, labels, items)
    assert better['a']['mean'] == 1.0
    assert better['ci_low'] > 0.2 and better['verdict'] == 'reproduced'
    worse = boot.auroc_difference(noise, perfect, labels, items)
    assert worse['verdict'] == 'contradicted'
    assert boot.auroc_difference(noise, perfect, labels, items, direction=-1)['verdict'] == (
        'reproduced'
    )


def test_point_estimate_is_the_mean_over_seeds_of_each_seeds_macro_auroc():
    patients, items, labels = _cohort(n_patients=12)
    rng = np.random.default_rng(3)
    a, b = rng.random((2, 2, *labels.shape))
    result = PairedBootstrap(patients, n_seeds=2, n_draws=0).auroc_difference(a, b, labels, items)
    macro = [
        [np.mean([auroc(x[s, :, c], labels[:, c]) for c in range(labels.shape[1])]) for s in (0, 1)]
        for x in (a, b)
    ]
    assert result['a']['per_seed'] == pytest.approx(macro[0])
    assert result['difference'] == pytest.approx(np.mean(macro[0]) - np.mean(macro[1]))
    assert result['ci_low'] is None and result['verdict'] == 'unresolved'


def test_seeds_are_resampled_with_the_patients():
    """Arms that differ by a constant per seed (0.1, 0.2, 0.3): only the seed draw moves the
    difference, so every draw lies in [0.1, 0.3] and the interval is wider than a point."""
    patients = [f'p{i}' for i in range(10)]
    base = np.tile(np.linspace(0, 1, 10), (3, 1))
    shift = np.array([0.1, 0.2, 0.3])[:, None]
    boot = PairedBootstrap(patients, n_seeds=3, n_draws=500, seed=4)
    result = boot.mean_difference(base + shift, base, patients, metric='pointing game')
    assert result['difference'] == pytest.approx(0.2)
    assert 0.1 - 1e-12 <= result['ci_low'] < 0.2 < result['ci_high'] <= 0.3 + 1e-12
    assert result['verdict'] == 'reproduced' and result['metric'] == 'pointing game'


def test_the_same_patients_are_drawn_for_both_arms():
    """Pairing: arms whose per-patient values move together differ by exactly their gap in every
    draw, however much each arm alone varies between draws."""
    patients = [f'p{i}' for i in range(30)]
    rng = np.random.default_rng(5)
    values = rng.random((1, 30))
    boot = PairedBootstrap(patients, n_seeds=1, n_draws=400)
    result = boot.mean_difference(values + 0.05, values, patients)
    assert result['ci_low'] == pytest.approx(0.05) and result['ci_high'] == pytest.approx(0.05)
    assert result['a']['ci_high'] - result['a']['ci_low'] > 0.1  # each arm alone varies


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match='n_seeds must be >= 1'):
        PairedBootstrap(['a'], n_seeds=0)
    with pytest.raises(ValueError, match='listed once'):
        PairedBootstrap(['a', 'a'], n_seeds=1)
    boot = PairedBootstrap(['a', 'b'], n_seeds=2, n_draws=10)
    with pytest.raises(ValueError, match='not in the draws'):
        boot.mean_difference(np.zeros((2, 1)), np.zeros((2, 1)), ['c'])
    with pytest.raises(ValueError, match=r'scores must have shape \(seeds=2'):
        boot.auroc_difference(np.zeros((1, 2, 1)), np.zeros((1, 2, 1)), np.ones((2, 1)), ['a', 'b'])
    with pytest.raises(ValueError, match='direction must be 1 or -1'):
        verdict(0.1, 0.2, direction=0)


def test_patient_of_ct_rate_names():
    assert patient_of('test_12_a_1.nii.gz') == 'test_12'
    assert patient_of('valid_3_b_2.nii.gz') == 'valid_3'
    assert patient_of('tst12345') == 'tst12345'
