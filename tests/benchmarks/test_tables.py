"""Label and score tables: loaders for the real CT-RATE tables, ids, alignment and errors."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import ctrate
from benchmarks.tables import Table, align, read_table, scan_id, write_table
from llm_labeling.schema import FINDINGS
from tests.conftest import shared_path


def test_real_ctrate_valid_labels():
    labels = ctrate.load_labels(shared_path('ctrate', 'valid_predicted_labels.csv'))
    assert len(labels) == 3039 and labels.columns == list(FINDINGS)
    assert set(np.unique(labels.values)) <= {0.0, 1.0}
    assert len({scan_id(i) for i in labels.ids}) == 1564  # the dataset card's scan count


def test_real_reports_and_labels_in_one_csv():
    path = shared_path('ctrate', 'sample_reports_approx.csv')
    reports = ctrate.load_reports(path)
    assert len(reports) == 8 and all(reports.values())
    assert 'valid_1000_a_1' in reports  # ids are matched without the extension
    labels = ctrate.load_labels(path)  # text columns are skipped
    assert labels.columns == list(FINDINGS) and len(labels) == 8


def test_report_text_drops_placeholder():
    row = {'Findings_EN': 'Nodule.', 'Impressions_EN': 'Not given.'}
    assert ctrate.report_text(row) == 'Nodule.'


def test_scan_ids():
    assert scan_id('valid_53_a_1.nii.gz') == 'valid_53_a'
    assert scan_id('train_1_b_12') == 'train_1_b'
    assert scan_id('tst34780') == 'tst34780'


def test_round_trip_and_errors(tmp_path):
    table = Table(['v1.nii.gz', 'v2.nii.gz'], ['A', 'B'], np.array([[0.1, np.nan], [1 / 3, 1.0]]))
    write_table(table, tmp_path / 't.csv')
    back = read_table(tmp_path / 't.csv')
    assert back.ids == table.ids and np.array_equal(back.values, table.values, equal_nan=True)
    (tmp_path / 'bad.csv').write_text('VolumeName,A\nv1,yes\n', encoding='utf-8')
    with pytest.raises(ValueError, match="row 2, column 'A' must be a number or empty, not 'yes'"):
        read_table(tmp_path / 'bad.csv')
    with pytest.raises(ValueError, match='ids must be unique'):
        Table(['a', 'a'], ['A'], np.zeros((2, 1)))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        read_table(tmp_path / 'missing.csv')


def test_align_requires_every_labelled_volume(tmp_path):
    labels = Table(
        ['a.nii.gz', 'b.nii.gz', 'c.nii.gz'], ['A'], np.array([[1.0], [0.0], [1.0]]), 'labels.csv'
    )
    scores = Table(['c', 'a', 'z'], ['A'], np.array([[0.3], [0.9], [0.5]]), 'scores.csv')
    with pytest.raises(
        ValueError, match='1 of 3 labelled volumes in labels.csv have no row in scores.csv'
    ):
        align(scores, labels)
    s, lab = align(scores, labels, allow_missing=True)
    assert lab.ids == ['a.nii.gz', 'c.nii.gz'] and s.values[:, 0].tolist() == [0.9, 0.3]


def test_per_scan_prevalence_matches_the_dataset_card():
    from benchmarks.scoring import group_by_scan

    labels = ctrate.load_labels(shared_path('ctrate', 'valid_predicted_labels.csv'))
    scans = group_by_scan(labels, 'mean', 'labels')
    card = [
        10.1,
        27.8,
        10.5,
        7.0,
        24.8,
        13.9,
        25.4,
        19.5,
        23.3,
        45.0,
        38.7,
        27.3,
        12.1,
        8.1,
        11.2,
        19.1,
        10.8,
        7.9,
    ]
    assert len(scans) == 1564
    assert np.round(scans.values.mean(0) * 100, 1).tolist() == card
