"""Training never sees the test split: not in its volumes, its labels, its reports or its evidence."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ctclip.app.demo import DEFAULTS, Demo
from ctclip.cli import main


@pytest.fixture(scope='module')
def demo(tmp_path_factory) -> Demo:
    """The demo's synth, preprocess and label stages on a tiny cohort with a test split."""
    out = tmp_path_factory.mktemp('isolation')
    cfg = {**DEFAULTS, 'out': str(out), 'layout': 'ct-rate', 'n': 4, 'test_min_count': 3}
    demo = Demo(cfg)
    settings = {**cfg, 'workers': 1}
    demo.synth(settings)
    demo.preprocess(settings)
    demo.label(settings)
    return demo


def _ids(path: Path, column: str) -> set[str]:
    with path.open(encoding='utf-8', newline='') as f:
        return {row[column] for row in csv.DictReader(f)}


def test_the_cache_holds_the_test_split_but_training_reads_none_of_it(demo):
    from ctclip.data.builder import DATA_DEFAULTS, index_cache, split_masks

    index = index_cache(str(demo.paths['ctrate_cache']))
    test = {i for i, s in zip(index.ids, index.splits, strict=True) if s == 'test'}
    assert test and all(i.startswith('test_') for i in test)
    cfg = {**DATA_DEFAULTS, 'cache': str(demo.paths['ctrate_cache'])}
    train, val = split_masks(index, cfg, seed=0)
    seen = {i for i, t, v in zip(index.ids, train, val, strict=True) if t or v}
    assert seen and not seen & test
    assert not {p for p, s in zip(index.patients, index.splits, strict=True) if s == 'test'} & {
        p for p, t, v in zip(index.patients, train, val, strict=True) if t or v
    }


def test_labels_reports_and_evidence_hold_no_test_report(demo):
    labels = demo.paths['labels']
    test = _ids(demo.held_out_tables()[0], 'VolumeName')
    assert test and demo.held_out == 'test'
    assert not _ids(labels / 'labels.csv', 'report_id') & test
    assert not _ids(labels / 'reports.csv', 'VolumeName') & test
    evidence = (labels / 'evidence.jsonl').read_text(encoding='utf-8').splitlines()
    assert not {json.loads(line)['report_id'] for line in evidence} & test


def test_grounding_scores_the_test_patients(demo):
    dataset, masks = demo.held_out_grounding()
    held = json.loads(dataset.read_text(encoding='utf-8'))
    assert list(held) == ['test']
    assert all(item['name'].startswith('test_') for item in held['test'])
    assert sorted(p.name for p in masks.iterdir()) == sorted(i['name'] for i in held['test'])


def test_demo_settings_for_the_test_split_are_checked(tmp_path, capsys):
    with pytest.raises(ValueError, match='test_min_count must be an integer >= 0, not -1'):
        Demo({**DEFAULTS, 'out': str(tmp_path), 'test_min_count': -1})
    with pytest.raises(ValueError, match='n_rad must be > 0 when test_min_count is 0'):
        Demo({**DEFAULTS, 'out': str(tmp_path), 'test_min_count': 0, 'n_rad': 0})
    assert Demo({**DEFAULTS, 'out': str(tmp_path), 'test_min_count': 0, 'n_rad': 5}).held_out == (
        'valid'
    )
    assert main(['demo', '--out', str(tmp_path / 'd'), 'test_min_cont=3']) == 2
    assert "did you mean 'test_min_count'" in capsys.readouterr().err
