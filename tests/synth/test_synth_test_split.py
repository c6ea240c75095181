"""The test split: disjoint from train and validation, stratified, and leaving them unchanged."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from ctcommon.findings import FINDINGS
from synth import generate_cohort, plan_cohort, plan_test
from synth.cohort import TEST_PATIENT_BASE, class_groups
from synth.radchestct import HLIP_MAPPED

MIN_COUNT = 4  # the demo's 25, scaled down so the cohort renders in seconds


def _csv(path: Path) -> list[dict]:
    with path.open(encoding='utf-8', newline='') as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def cohorts(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp('test_split')
    plain = generate_cohort(root / 'plain', n=3, seed=7, small=True, progress=False)
    split = generate_cohort(
        root / 'split', n=3, seed=7, small=True, progress=False, test_min_count=MIN_COUNT
    )
    return plain, split


def _volumes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / 'dataset').rglob('*.nii.gz'))
    }


def test_train_and_validation_stay_byte_identical(cohorts):
    plain, split = cohorts
    before, after = _volumes(plain), _volumes(split)
    assert before and all(after[k] == v for k, v in before.items())
    assert {k.split('/')[1] for k in set(after) - set(before)} == {'test', 'test_fixed'}
    for name in ('train_predicted_labels.csv', 'valid_predicted_labels.csv'):
        table = Path('dataset/multi_abnormality_labels') / name
        assert (plain / table).read_bytes() == (split / table).read_bytes()


def test_test_patients_are_disjoint_and_never_in_the_training_tables(cohorts):
    _, root = cohorts
    ds = root / 'dataset'
    test = {
        r['VolumeName'] for r in _csv(ds / 'multi_abnormality_labels/test_predicted_labels.csv')
    }
    assert test and all(v.startswith('test_') for v in test)
    seen = set()
    for name in ('train_reports.csv', 'validation_reports.csv'):
        seen |= {r['VolumeName'] for r in _csv(ds / 'radiology_text_reports' / name)}
    assert not seen & test and not any(v.startswith('test_') for v in seen)
    assert {r['VolumeName'] for r in _csv(ds / 'radiology_text_reports/test_reports.csv')} == test
    truth = [json.loads(line) for line in (root / 'truth.jsonl').read_text().splitlines()]
    patients = {}
    for t in truth:
        patients.setdefault(t['patient'], set()).add(t['split'])
    assert all(len(s) == 1 for s in patients.values())
    grounding = json.loads((root / 'grounding' / 'dataset.json').read_text())
    assert all(item['name'].startswith('test_') for item in grounding['test'])
    assert not any(item['name'].startswith('test_') for item in grounding['train'])


def test_every_class_has_the_minimum_positive_and_negative_volumes(cohorts):
    _, root = cohorts
    rows = _csv(root / 'dataset/multi_abnormality_labels/test_predicted_labels.csv')
    for finding in FINDINGS:
        positives = sum(r[finding] == '1' for r in rows)
        assert positives >= MIN_COUNT and len(rows) - positives >= MIN_COUNT, finding


@pytest.mark.parametrize('layout', ['ct-rate', 'rad-chestct'])
def test_plan_is_disjoint_stratified_and_small(layout):
    from synth.scan import scan_presence

    train = plan_cohort(200, seed=0, layout=layout)
    used = {int(t.rad_id[3:]) for t in train if t.rad_id}
    test = plan_test(0, 25, layout, used_rad_ids=used)
    assert {t.patient_no for t in train}.isdisjoint({t.patient_no for t in test})
    assert all(t.patient_no >= TEST_PATIENT_BASE and t.split == 'test' for t in test)
    names = [v for t in train + test for v in t.volume_names()]
    assert len(set(names)) == len(names)
    if layout == 'rad-chestct':
        assert all(t.rad_id.startswith('tst') for t in test)
    groups = class_groups(layout)
    assert len(groups) == 18 + (len(HLIP_MAPPED) if layout == 'rad-chestct' else 0)
    positive = np.zeros(len(groups))
    volumes = 0
    for t in test:
        found = scan_presence(0, t.patient_no, t.scan_no)
        positive += t.n_recons * np.array([bool(found & g) for g in groups])
        volumes += t.n_recons
    assert positive.min() >= 25 and (volumes - positive).min() >= 25
    # minimal: far fewer volumes than a random sample needs for the rarest class (7% -> ~360)
    assert volumes < 130


def test_plan_is_a_function_of_the_seed():
    a, b = plan_test(3, 5), plan_test(3, 5)
    assert [(t.patient_no, t.scan_no, t.n_recons) for t in a] == [
        (t.patient_no, t.scan_no, t.n_recons) for t in b
    ]
    assert [t.patient_no for t in plan_test(4, 5)] != [t.patient_no for t in a]


def test_bad_test_settings_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match='test_min_count must be a number of volumes >= 0'):
        generate_cohort(tmp_path / 'a', n=1, test_min_count=-1)
    with pytest.raises(ValueError, match='n must be a positive number of scans'):
        generate_cohort(tmp_path / 'b', n=0)
    with pytest.raises(ValueError, match='min_count must be a positive number'):
        plan_test(0, 0)


def test_cli_takes_the_test_split_and_rejects_a_misspelt_key(tmp_path, capsys):
    from ctclip.cli import main

    assert main(['synth', '--out', str(tmp_path / 'x'), '--n', '1', 'synth.test_min_cout=3']) == 2
    assert "did you mean 'synth.test_min_count'" in capsys.readouterr().err
    assert not (tmp_path / 'x').exists()
    rad = tmp_path / 'rad'
    argv = ['synth', '--out', str(rad), '--n', '0', '--layout', 'rad-chestct', '--small']
    assert main([*argv, '--test-min-count', '2', '--no-progress']) == 0
    tables = rad / 'radchestct'
    assert not _csv(tables / 'imgtrain.csv') and not _csv(tables / 'imgvalid.csv')
    rows = _csv(tables / 'imgtest.csv')
    assert rows and all(r['NoteAcc_DEID'].startswith('tst') for r in rows)


def test_a_cohort_of_only_a_test_split_is_read_as_a_ct_rate_tree(tmp_path):
    from preprocessing.manifest import build_manifest

    root = generate_cohort(
        tmp_path / 'c', n=0, seed=2, small=True, progress=False, test_min_count=1
    )
    rows = build_manifest(root)
    assert rows and all(r['split'] == 'test' and r['format'] == 'ct-rate' for r in rows)
    assert all(r['volume_id'].startswith('test_') for r in rows)
