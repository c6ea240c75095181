"""`ctclip bench score|retrieval` through the real console entry point."""

from __future__ import annotations

import json

import numpy as np

from benchmarks.tables import Table, write_table
from ctclip.cli import main
from llm_labeling.schema import FINDINGS


def _files(tmp_path, n=60):
    rng = np.random.default_rng(0)
    ids = [f'valid_{i // 2}_a_{i % 2 + 1}.nii.gz' for i in range(n)]
    y = (rng.random((n, 18)) < 0.3).astype(float)
    write_table(Table(ids, list(FINDINGS), y), tmp_path / 'labels.csv')
    write_table(
        Table(ids, list(FINDINGS), np.clip(0.5 * y + 0.5 * rng.random((n, 18)), 0, 1)),
        tmp_path / 'scores.csv',
    )
    img = rng.normal(size=(n, 8)) + y @ rng.normal(size=(18, 8))
    np.save(tmp_path / 'img.npy', img)
    np.save(tmp_path / 'txt.npy', img + rng.normal(size=img.shape))
    return ids


def test_bench_score_cli(tmp_path, capsys):
    _files(tmp_path)
    out = tmp_path / 'out'
    code = main(
        [
            'bench',
            'score',
            '--scores',
            str(tmp_path / 'scores.csv'),
            '--labels',
            str(tmp_path / 'labels.csv'),
            '--out',
            str(out),
            '--unit',
            'scan',
            '--n-bootstrap',
            '40',
            'bootstrap.seed=3',
            '--no-plots',
            '--benchmark',
            'ct-rate',
        ]
    )
    assert code == 0
    assert '| this run (our protocol, above) |' in (out / 'report.md').read_text(encoding='utf-8')
    data = json.loads((out / 'metrics.json').read_text(encoding='utf-8'))
    assert data['classification']['n_items'] == 30  # scans
    assert data['classification']['bootstrap'] == {
        'n_draws': 40,
        'seed': 3,
        'level': 0.95,
        'unit': 'scan',
        'interval': 'percentile',
    }
    assert 'mean AUROC' in capsys.readouterr().out


def test_bench_retrieval_cli_reference_flag(tmp_path):
    _files(tmp_path)
    args = [
        'bench',
        'retrieval',
        '--image-emb',
        str(tmp_path / 'img.npy'),
        '--text-emb',
        str(tmp_path / 'txt.npy'),
        '--labels',
        str(tmp_path / 'labels.csv'),
        '--n-bootstrap',
        '20',
        '--no-plots',
    ]
    assert main([*args, '--out', str(tmp_path / 'ours')]) == 0
    assert main([*args, '--out', str(tmp_path / 'ref'), '--reference']) == 0
    ours = json.loads((tmp_path / 'ours' / 'metrics.json').read_text(encoding='utf-8'))['retrieval']
    ref = json.loads((tmp_path / 'ref' / 'metrics.json').read_text(encoding='utf-8'))['retrieval']
    assert (
        ours['options']['protocol'] == 'corrected'
        and ref['options']['protocol'] == 'ctclip-reference'
    )
    assert ref['volume_to_volume']['map@1']['value'] > ours['volume_to_volume']['map@1']['value']


def test_bench_config_file_and_errors(tmp_path, capsys):
    _files(tmp_path)
    cfg = tmp_path / 'b.yaml'
    cfg.write_text('bootstrap:\n  n_draws: 10\nplots: false\n', encoding='utf-8')
    code = main(
        [
            'bench',
            'score',
            '--config',
            str(cfg),
            '--scores',
            str(tmp_path / 'scores.csv'),
            '--labels',
            str(tmp_path / 'labels.csv'),
            '--out',
            str(tmp_path / 'o'),
        ]
    )
    assert code == 0 and not (tmp_path / 'o' / 'roc_curves.png').exists()
    code = main(
        [
            'bench',
            'score',
            '--scores',
            str(tmp_path / 'nope.csv'),
            '--labels',
            str(tmp_path / 'labels.csv'),
            '--out',
            str(tmp_path / 'o2'),
        ]
    )
    assert code == 2 and 'nope.csv' in capsys.readouterr().err


def test_shipped_configs_build_valid_options():
    from benchmarks import runner
    from ctclip.config import configs_dir, resolve

    files = sorted((configs_dir() / 'bench').glob('*.yaml'))
    assert len(files) >= 5
    for path in files:
        cfg = resolve(runner.DEFAULTS, path)
        runner.retrieval_options(cfg)
        runner.scoring_options(cfg)
        runner.bootstrap_config(cfg)
    ref = resolve(runner.DEFAULTS, configs_dir() / 'bench' / 'ctrate-reference.yaml')
    assert runner.retrieval_options(ref).is_reference


def test_ctrate_root_layout_is_found(tmp_path):
    from benchmarks import runner

    ds = tmp_path / 'dataset'
    (ds / 'multi_abnormality_labels').mkdir(parents=True)
    (ds / 'radiology_text_reports').mkdir()
    (ds / 'multi_abnormality_labels' / 'valid_predicted_labels.csv').write_text(
        'VolumeName\n', encoding='utf-8'
    )
    (ds / 'radiology_text_reports' / 'validation_reports.csv').write_text(
        'VolumeName\n', encoding='utf-8'
    )
    (ds / 'no_chest_valid.txt').write_text('valid_9_a_1.nii.gz\n', encoding='utf-8')
    (tmp_path / 'cache.h5').write_bytes(b'')
    cache, labels, reports, drop = runner._resolve_ctrate({'data': str(tmp_path), 'split': 'valid'})
    assert cache == tmp_path / 'cache.h5' and labels.name == 'valid_predicted_labels.csv'
    assert reports.name == 'validation_reports.csv' and drop == {'valid_9_a_1'}
    (tmp_path / 'cache.h5').unlink()
    import pytest

    with pytest.raises(FileNotFoundError, match='No cache'):
        runner._resolve_ctrate({'data': str(tmp_path), 'split': 'valid'})


def test_unknown_settings_are_errors(tmp_path, capsys):
    _files(tmp_path)
    base = [
        'bench',
        'score',
        '--scores',
        str(tmp_path / 'scores.csv'),
        '--labels',
        str(tmp_path / 'labels.csv'),
    ]
    assert main([*base, '--out', str(tmp_path / 'a'), 'bench.bootstrap=10']) == 2
    assert "Unknown setting 'bench' in the top level" in capsys.readouterr().err
    assert main([*base, '--out', str(tmp_path / 'b'), 'bootstrap.draws=10']) == 2
    assert "did you mean 'bootstrap.n_draws'?" in capsys.readouterr().err


def test_bench_score_with_rad_mapping(tmp_path):
    from benchmarks import radchestct

    rng = np.random.default_rng(2)
    ids = [f'tst{10000 + k}' for k in range(40)]
    rad_cols = sorted(
        {c for cls in radchestct.MAPPINGS['ctclip16'].classes for c in cls.rad_columns}
    )
    write_table(
        Table(ids, rad_cols, rng.integers(0, 2, (40, len(rad_cols)))),
        tmp_path / 'raw.csv',
        id_column='NoteAcc_DEID',
    )
    write_table(
        Table(ids, list(FINDINGS), rng.random((40, 18))),
        tmp_path / 'scores.csv',
        id_column='NoteAcc_DEID',
    )
    out = tmp_path / 'out'
    args = [
        'bench',
        'score',
        '--scores',
        str(tmp_path / 'scores.csv'),
        '--labels',
        str(tmp_path / 'raw.csv'),
    ]
    assert (
        main([*args, '--mapping', 'hlip14', '--out', str(out), '--n-bootstrap', '10', '--no-plots'])
        == 0
    )
    data = json.loads((out / 'metrics.json').read_text(encoding='utf-8'))
    assert (
        data['mapping']['name'] == 'hlip14'
        and data['classification']['classes'][-1] == 'Calcification'
    )
    assert len(data['classification']['classes']) == 14
