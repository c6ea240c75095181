"""`ctclip label` end to end with the rules backend, and `ctclip label eval`."""

from __future__ import annotations

import json

import pytest

from ctclip.cli import main
from llm_labeling.schema import FINDINGS
from tests.llm_labeling.helpers import read_jsonl, read_labels


def test_rules_backend_writes_the_contract(tmp_path, ctrate_csv):
    out = tmp_path / 'out'
    assert (
        main(['label', '--reports', str(ctrate_csv), '--out-dir', str(out), '--no-progress']) == 0
    )
    labels = read_labels(out / 'labels.csv')
    assert list(labels) == [
        'valid_1_a_1.nii.gz',
        'valid_1_a_2.nii.gz',
        'valid_2_a_1.nii.gz',
        'valid_3_a_1.nii.gz',
        'valid_4_a_1.nii.gz',
    ]
    assert all(set(v) <= {'1', '0', '-1'} and len(v) == 18 for v in labels.values())
    assert labels['valid_2_a_1.nii.gz'][FINDINGS.index('Lung nodule')] == '1'
    evidence = read_jsonl(out / 'evidence.jsonl')
    assert [e['report_id'] for e in evidence] == list(labels)
    for record in evidence:
        for item in record['findings']:
            assert item['finding'] in FINDINGS
            if item['quote'] is not None:
                assert item['quote'] in ctrate_csv.read_text(encoding='utf-8')
    meta = json.loads((out / 'labels.meta.json').read_text(encoding='utf-8'))
    assert meta['backend'] == 'rules' and meta['counts']['reports'] == 5
    assert meta['counts']['unique_texts'] == 4


def test_settings_errors_are_clear(tmp_path, ctrate_csv, capsys):
    with pytest.raises(SystemExit, match='concurrency must be an integer >= 1, not 0'):
        main(['label', '--reports', str(ctrate_csv), '--out-dir', str(tmp_path), 'concurrency=0'])
    with pytest.raises(SystemExit, match='needs a model name'):
        main(
            [
                'label',
                '--reports',
                str(ctrate_csv),
                '--out-dir',
                str(tmp_path),
                '--backend',
                'openai',
            ]
        )
    with pytest.raises(SystemExit, match="Unknown setting 'concurency'"):
        main(['label', '--reports', str(ctrate_csv), '--out-dir', str(tmp_path), 'concurency=2'])
    with pytest.raises(SystemExit, match='needs --pred, --gold and --out'):
        main(['label', 'eval', '--pred', 'x.csv'])


def test_eval_verb(tmp_path, ctrate_csv):
    out = tmp_path / 'out'
    main(['label', '--reports', str(ctrate_csv), '--out-dir', str(out), '--no-progress'])
    gold = out / 'labels.csv'
    assert (
        main(
            [
                'label',
                'eval',
                '--pred',
                str(gold),
                '--gold',
                str(gold),
                '--out',
                str(tmp_path / 'ev'),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / 'ev' / 'metrics.json').read_text(encoding='utf-8'))
    result = metrics['results']['labels']
    assert result['weighted']['f1'] == 1.0  # a file scored against itself
    # classes without a positive score 0 (the protocol: 0 when a denominator is 0)
    assert {c['f1'] for c in result['per_class'].values()} == {0.0, 1.0}


@pytest.mark.slow
def test_rules_on_real_reports(tmp_path):
    from tests.conftest import shared_path

    manual = shared_path('ctrate', 'manual_labels_train.csv')
    out = tmp_path / 'out'
    main(['label', '--reports', str(manual), '--out-dir', str(out), '--no-progress'])
    assert len(read_labels(out / 'labels.csv')) == 800
    main(
        [
            'label',
            'eval',
            '--pred',
            str(out / 'labels.csv'),
            '--gold',
            str(manual),
            '--out',
            str(tmp_path / 'ev'),
        ]
    )
    macro = json.loads((tmp_path / 'ev' / 'metrics.json').read_text(encoding='utf-8'))['results'][
        'labels'
    ]['macro']
    assert macro['f1'] > 0.9  # the rules helper owns the real target (0.97 cross-validated)


@pytest.mark.parametrize('name', ['rules', 'openai', 'li2025', 'llamacpp'])
def test_shipped_configs_resolve(name):
    from pathlib import Path

    from ctclip.config import load_config
    from llm_labeling.settings import resolve_settings

    path = Path(__file__).resolve().parents[2] / 'ctclip' / 'configs' / 'label' / f'{name}.yaml'
    settings = resolve_settings({**load_config(path), 'reports': 'r.csv', 'out_dir': 'o'})
    assert settings['backend'] in ('rules', 'openai', 'llamacpp')


def test_a_labeler_crash_is_a_listed_failure(tmp_path, ctrate_csv, monkeypatch):
    from llm_labeling.rules import RulesLabeler

    original = RulesLabeler.annotate

    def flaky(self, report_id, text):
        if 'nodule' in text:
            raise RuntimeError('unexpected token')
        return original(self, report_id, text)

    monkeypatch.setattr(RulesLabeler, 'annotate', flaky)
    out = tmp_path / 'out'
    main(['label', '--reports', str(ctrate_csv), '--out-dir', str(out), '--no-progress'])
    assert read_labels(out / 'labels.csv')['valid_2_a_1.nii.gz'] == [''] * 18
    assert 'rules labeler error: RuntimeError: unexpected token' in (
        out / 'failures.csv'
    ).read_text(encoding='utf-8')
