"""Label evaluation: per-class P/R/F1, macro and weighted means, AUROC on scores, comparisons."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from llm_labeling.evaluate import auroc, evaluate_labels, read_label_table
from llm_labeling.schema import FINDINGS


def write_table(path, ids, values, id_name='report_id'):
    with path.open('w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow([id_name, *FINDINGS])
        for rid, row in zip(ids, values, strict=True):
            writer.writerow([rid, *row])
    return path


@pytest.fixture
def tables(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f'r{i}' for i in range(60)]
    gold = (rng.random((60, 18)) < 0.3).astype(int)
    pred = np.where(rng.random((60, 18)) < 0.85, gold, 1 - gold)
    pred[0, 0] = -1  # uncertain
    g = write_table(tmp_path / 'gold.csv', ids, gold, 'AccessionNo')
    p = write_table(tmp_path / 'pred.csv', ids, pred)
    return tmp_path, ids, gold, pred, g, p


def test_matches_sklearn(tables):
    tmp, ids, gold, pred, g, p = tables
    metrics = evaluate_labels(p, g, tmp / 'ev')
    res = metrics['results']['pred']
    binary = np.where(pred == -1, 1, pred)
    for j, name in enumerate(FINDINGS):
        c = res['per_class'][name]
        assert c['precision'] == pytest.approx(
            precision_score(gold[:, j], binary[:, j], zero_division=0)
        )
        assert c['recall'] == pytest.approx(recall_score(gold[:, j], binary[:, j], zero_division=0))
        assert c['support'] == gold[:, j].sum()
        assert c['auroc'] is None  # hard labels carry no scores
    assert res['macro']['f1'] == pytest.approx(
        f1_score(gold, binary, average='macro', zero_division=0)
    )
    assert res['weighted']['f1'] == pytest.approx(
        f1_score(gold, binary, average='weighted', zero_division=0)
    )
    assert json.loads((tmp / 'ev' / 'metrics.json').read_text(encoding='utf-8'))['n_scored'] == 60
    assert (tmp / 'ev' / 'f1_per_class.png').read_bytes()[:4] == b'\x89PNG'
    assert '| Lung nodule |' in (tmp / 'ev' / 'report.md').read_text(encoding='utf-8')


def test_uncertain_negative(tables):
    tmp, ids, gold, pred, g, p = tables
    res = evaluate_labels(p, g, tmp / 'ev', uncertain='negative')['results']['pred']
    binary = np.where(pred == -1, 0, pred)
    assert res['per_class'][FINDINGS[0]]['recall'] == pytest.approx(
        recall_score(gold[:, 0], binary[:, 0], zero_division=0)
    )


def test_auroc_on_scores(tables):
    tmp, ids, gold, _, g, _ = tables
    scores = np.clip(gold * 0.6 + np.random.default_rng(1).random(gold.shape) * 0.5, 0, 1).round(2)
    p = write_table(tmp / 'scores.csv', ids, scores)
    res = evaluate_labels(p, g, tmp / 'ev')['results']['scores']
    for j, name in enumerate(FINDINGS):
        assert res['per_class'][name]['auroc'] == pytest.approx(
            roc_auc_score(gold[:, j], scores[:, j])
        )
    assert res['macro']['auroc'] is not None
    assert auroc(np.array([0, 0]), np.array([0.1, 0.2])) is None


def test_compare_two_files_on_common_reports(tables):
    tmp, ids, gold, pred, g, p = tables
    other = pred.astype(object)
    other[5] = ''  # a failed report: excluded for both files, and counted
    q = write_table(tmp / 'llm.csv', ids[:-3], other[:-3])
    metrics = evaluate_labels([p, q], g, tmp / 'cmp', names=['rules', 'llm'])
    assert metrics['n_scored'] == 56
    assert metrics['coverage']['llm'] == {
        'rows': 57,
        'failed': 1,
        'not_in_gold': 0,
        'gold_missing': 3,
    }
    report = (tmp / 'cmp' / 'report.md').read_text(encoding='utf-8')
    assert 'F1 delta' in report and 'rules P / R / F1' in report


def test_errors(tmp_path, tables):
    tmp, ids, gold, pred, g, p = tables
    bad = tmp / 'bad.csv'
    bad.write_text('report_id,Cardiomegaly\nr1,1\n', encoding='utf-8')
    with pytest.raises(ValueError, match='missing label column'):
        read_label_table(bad)
    text = tmp / 'text.csv'
    write_table(text, ['r1'], [['yes'] * 18])
    with pytest.raises(ValueError, match="line 2, 'Medical material': must be a number, not 'yes'"):
        read_label_table(text)
    elsewhere = write_table(tmp / 'elsewhere.csv', ['x1'], [[0] * 18])
    with pytest.raises(ValueError, match='No report id is both in the gold file'):
        evaluate_labels(elsewhere, g, tmp / 'ev')
