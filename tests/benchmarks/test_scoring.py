"""score() and score_retrieval(): point estimates, per-scan scoring, label conventions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks.bootstrap import BootstrapConfig
from benchmarks.scoring import ScoringOptions, group_by_scan, score, score_retrieval
from benchmarks.tables import Table
from llm_labeling.schema import FINDINGS
from tests.conftest import shared_path

FEW = BootstrapConfig(n_draws=50, seed=0)


def _real_labels_and_scores():
    from benchmarks.ctrate import load_labels

    labels = load_labels(shared_path('ctrate', 'valid_predicted_labels.csv'))
    rng = np.random.default_rng(0)
    scores = np.clip(0.3 * labels.values + 0.8 * rng.random(labels.values.shape), 0, 1)
    return labels, Table(labels.ids, labels.columns, scores)


def test_real_table_point_estimates_match_sklearn():
    labels, scores = _real_labels_and_scores()
    res = score(scores, labels, bootstrap=FEW)
    assert res['classes'] == list(FINDINGS) and res['n_items'] == 3039
    assert res['n_resampling_units'] == 1564
    aucs = [roc_auc_score(labels.values[:, c], scores.values[:, c]) for c in range(18)]
    for c, name in enumerate(FINDINGS):
        assert res['per_class'][name]['auroc']['value'] == pytest.approx(aucs[c])
    assert res['macro']['auroc']['value'] == pytest.approx(np.mean(aucs))


def test_no_bootstrap_gives_point_estimates_without_intervals():
    ids = [f'valid_{i}_a_1.nii.gz' for i in range(6)]
    labels = Table(ids, ['A'], np.array([[1.0], [0.0], [1.0], [0.0], [1.0], [0.0]]))
    scores = Table(ids, ['A'], np.array([[0.9], [0.2], [0.4], [0.5], [0.8], [0.1]]))
    auroc = score(scores, labels, bootstrap=BootstrapConfig(n_draws=0))['macro']['auroc']
    assert auroc == {
        'value': pytest.approx(8 / 9),
        'ci_low': None,
        'ci_high': None,
        'n_draws_defined': 0,
    }


def test_per_scan_scoring_aggregates_reconstructions():
    ids = ['valid_1_a_1.nii.gz', 'valid_1_a_2.nii.gz', 'valid_2_a_1.nii.gz', 'valid_3_b_1.nii.gz']
    labels = Table(ids, ['A'], np.array([[1.0], [1.0], [0.0], [0.0]]))
    scores = Table(ids, ['A'], np.array([[0.9], [0.1], [0.4], [0.45]]))
    by_volume = score(scores, labels, options=ScoringOptions(unit='volume'), bootstrap=FEW)
    by_scan = score(scores, labels, options=ScoringOptions(unit='scan'), bootstrap=FEW)
    by_max = score(
        scores, labels, options=ScoringOptions(unit='scan', scan_aggregate='max'), bootstrap=FEW
    )
    assert by_volume['per_class']['A']['auroc']['value'] == 0.5
    assert (
        by_scan['n_items'] == 3 and by_scan['per_class']['A']['auroc']['value'] == 1.0
    )  # mean 0.5 > 0.45
    assert by_max['per_class']['A']['auroc']['value'] == 1.0


def test_uncertain_labels_options():
    ids = [f'v{i}' for i in range(4)]
    labels = Table(ids, ['A'], np.array([[1.0], [-1.0], [0.0], [0.0]]))
    scores = Table(ids, ['A'], np.array([[0.9], [0.2], [0.5], [0.1]]))
    excl = score(scores, labels, bootstrap=FEW)['per_class']['A']
    neg = score(scores, labels, options=ScoringOptions(uncertain='negative'), bootstrap=FEW)[
        'per_class'
    ]['A']
    pos = score(scores, labels, options=ScoringOptions(uncertain='positive'), bootstrap=FEW)[
        'per_class'
    ]['A']
    assert (excl['n_positive'], excl['n_negative']) == (1, 2)
    assert (neg['n_positive'], neg['n_negative']) == (1, 3)
    assert pos['auroc']['value'] == pytest.approx(roc_auc_score([1, 1, 0, 0], [0.9, 0.2, 0.5, 0.1]))


def test_class_without_positives_is_left_out_of_means():
    ids = [f'v{i}' for i in range(4)]
    labels = Table(ids, ['A', 'B'], np.array([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=float))
    scores = Table(ids, ['A', 'B'], np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.2], [0.1, 0.9]]))
    res = score(scores, labels, bootstrap=FEW)
    assert res['undefined_classes'] == ['B']
    assert res['per_class']['B']['auroc']['value'] is None
    assert res['macro']['auroc']['value'] == 1.0
    assert res['n_classes_in_means'] == 1  # every mean, not only AUROC, skips class B
    assert res['macro']['specificity']['value'] == res['per_class']['A']['specificity']['value']


def test_scoring_errors():
    labels = Table(['a'], ['A'], np.array([[1.0]]))
    with pytest.raises(ValueError, match='share no class columns'):
        score(Table(['a'], ['B'], np.array([[0.5]])), labels)
    with pytest.raises(ValueError, match='must be finite'):
        score(Table(['a'], ['A'], np.array([[np.nan]])), labels)
    with pytest.raises(ValueError, match="unit must be one of \\('volume', 'scan'\\)"):
        ScoringOptions(unit='patient')


def test_group_by_scan_labels_take_max():
    table = Table(['valid_1_a_1', 'valid_1_a_2'], ['A'], np.array([[0.0], [1.0]]))
    assert group_by_scan(table, 'mean', 'labels').values.tolist() == [[1.0]]


def test_score_retrieval_blocks_and_cis():
    rng = np.random.default_rng(1)
    labels = (rng.random((120, 4)) < 0.3).astype(float)
    img = rng.normal(size=(120, 16)) + 2 * labels @ rng.normal(size=(4, 16))
    txt = img + rng.normal(size=img.shape)
    ids = [f'valid_{i // 2}_a_{i % 2 + 1}.nii.gz' for i in range(120)]
    res = score_retrieval(img, txt, labels, ids, bootstrap=FEW)
    r100 = res['report_to_volume']['recall@100']
    assert 0 < r100['value'] <= 1 and r100['ci_low'] <= r100['value'] <= r100['ci_high']
    assert res['report_to_volume']['curve']['k'][:3] == [1, 2, 3]
    assert set(res['volume_to_volume']) >= {'map@1', 'map@5', 'map@10', 'map@50', 'n_queries'}
    per_scan = score_retrieval(img, txt, labels, ids, bootstrap=FEW, unit='scan')
    assert per_scan['n_volumes'] == 60
