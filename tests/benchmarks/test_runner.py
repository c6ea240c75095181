"""End to end: a tiny real model over a real HDF5 cache, through `ctclip bench ct-rate / rad-chestct`."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from benchmarks import radchestct
from benchmarks.tables import Table, write_table
from ctclip.cli import main
from llm_labeling.schema import FINDINGS

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    from ctclip.factory import create_model
    from preprocessing.cache import CacheWriter
    from preprocessing.recipes import get_recipe

    root = tmp_path_factory.mktemp('bench')
    model_dir = root / 'model'
    create_model('resnet3d-tiny-tinybert').save_pretrained(model_dir)
    recipe = get_recipe('small').replace(
        shape_zyx=(16, 32, 32), train_crop_zyx=None, chunks_zyx=(16, 32, 32)
    )
    rng = np.random.default_rng(0)
    ct_ids = [f'valid_{s}_a_{r}.nii.gz' for s in range(5) for r in (1, 2)]
    rad_ids = [f'tst{10000 + k}' for k in range(6)]
    with CacheWriter(root / 'cache.h5', recipe) as writer:
        for vid in ct_ids + rad_ids:
            writer.write(vid, (rng.normal(size=(16, 32, 32)) * 300 - 500).astype(np.int16), {})
    labels = rng.integers(0, 2, size=(len(ct_ids), 18)).astype(float)
    labels[::2] = labels[1::2]  # reconstructions share their scan's labels
    write_table(Table(ct_ids, list(FINDINGS), labels), root / 'labels.csv')
    with open(root / 'reports.csv', 'w', encoding='utf-8', newline='') as f:
        w = csv.writer(f)
        w.writerow(
            [
                'VolumeName',
                'ClinicalInformation_EN',
                'Technique_EN',
                'Findings_EN',
                'Impressions_EN',
            ]
        )
        for vid in ct_ids:
            w.writerow([vid, '', '', f'Findings of {vid[:9]}.', 'Not given.'])
    rad_cols = sorted(
        {c for cls in radchestct.MAPPINGS['ctclip16'].classes for c in cls.rad_columns}
    )
    rad = rng.integers(0, 2, size=(len(rad_ids), len(rad_cols))).astype(float)
    write_table(Table(rad_ids, rad_cols, rad), root / 'imgtest.csv', id_column='NoteAcc_DEID')
    return root, model_dir


def test_ctrate_run_and_resume(setup):
    root, model_dir = setup
    out = root / 'ctrate'
    args = [
        'bench',
        'ct-rate',
        '--model',
        str(model_dir),
        '--data',
        str(root / 'cache.h5'),
        '--labels',
        str(root / 'labels.csv'),
        '--reports',
        str(root / 'reports.csv'),
        '--out',
        str(out),
        '--n-bootstrap',
        '20',
        '--templates',
        'ctclip',
        'there-is',
        'embed.chunk_size=4',
    ]
    assert main(args) == 0
    data = json.loads((out / 'metrics.json').read_text(encoding='utf-8'))
    assert (
        data['classification']['classes'] == list(FINDINGS)
        and data['classification']['n_items'] == 10
    )
    assert len(data['prompts']) == 2 and data['model']['fingerprint']
    assert set(data['retrieval']) >= {'report_to_volume', 'volume_to_volume'}
    for name in (
        'roc_curves.png',
        'auroc_bars.png',
        'retrieval.png',
        'report.html',
        'scores.csv',
        'image_emb.npy',
    ):
        assert (out / name).is_file()
    parts = sorted((out / 'embeddings').glob('part_*.npy'))
    assert len(parts) == 3
    before = [p.stat().st_mtime_ns for p in parts]
    assert main([*args, '--no-plots']) == 0  # a rerun reuses every saved chunk
    assert [p.stat().st_mtime_ns for p in parts] == before
    # the saved scores re-score under other options without the model
    assert (
        main(
            [
                'bench',
                'score',
                '--scores',
                str(out / 'scores.csv'),
                '--labels',
                str(root / 'labels.csv'),
                '--out',
                str(root / 'rescored'),
                '--unit',
                'scan',
                '--n-bootstrap',
                '10',
                '--no-plots',
            ]
        )
        == 0
    )


def test_radchestct_run(setup):
    root, model_dir = setup
    out = root / 'rad'
    assert (
        main(
            [
                'bench',
                'rad-chestct',
                '--model',
                str(model_dir),
                '--data',
                str(root / 'cache.h5'),
                '--labels',
                str(root / 'imgtest.csv'),
                '--mapping',
                'ctclip16',
                '--out',
                str(out),
                '--n-bootstrap',
                '20',
                '--no-plots',
            ]
        )
        == 0
    )
    data = json.loads((out / 'metrics.json').read_text(encoding='utf-8'))
    assert data['mapping']['name'] == 'ctclip16' and len(data['classification']['classes']) == 16
    assert 'RAD-ChestCT' in (out / 'report.md').read_text(encoding='utf-8')


def test_missing_volumes_are_an_error(setup, capsys):
    root, model_dir = setup
    labels = Table(['valid_99_a_1.nii.gz'], list(FINDINGS), np.ones((1, 18)))
    write_table(labels, root / 'other.csv')
    code = main(
        [
            'bench',
            'ct-rate',
            '--model',
            str(model_dir),
            '--data',
            str(root / 'cache.h5'),
            '--labels',
            str(root / 'other.csv'),
            '--out',
            str(root / 'x'),
        ]
    )
    assert code == 2 and 'not in the cache' in capsys.readouterr().err


def test_rerun_with_other_data_or_crop_recomputes(setup):
    """Item 3 of issue 16: a rerun into the same --out never reports the old embeddings."""
    from preprocessing.cache import CacheWriter, open_cache

    root, model_dir = setup
    out = root / 'rerun'
    other = root / 'other_cache.h5'
    source = open_cache(root / 'cache.h5')
    with CacheWriter(other, source.recipe) as writer:  # the same ids and recipe, other voxels
        for vid in source.ids():
            array = source.read_crop(vid, (0, 0, 0), source.shape(vid))
            writer.write(vid, (array[:, ::-1, :] + 7).astype(np.int16), {})

    def bench(*extra):
        args = ['bench', 'ct-rate', '--model', str(model_dir), '--labels', str(root / 'labels.csv')]
        args += ['--out', str(out), '--n-bootstrap', '5', '--no-plots', '--no-retrieval']
        assert main([*args, *extra, 'embed.chunk_size=4']) == 0

    def parts():
        return [p.stat().st_mtime_ns for p in sorted((out / 'embeddings').glob('part_*.npy'))]

    def emb():
        return np.concatenate([np.load(p) for p in sorted((out / 'embeddings').glob('part_*.npy'))])

    bench('--data', str(root / 'cache.h5'))
    first, first_emb = parts(), emb()
    bench('--data', str(root / 'cache.h5'))
    assert parts() == first  # unchanged inputs: reused
    bench('--data', str(other))
    assert all(a != b for a, b in zip(parts(), first, strict=True))
    assert not np.allclose(emb(), first_emb)
    second = parts()
    bench('--data', str(other), 'embed.crop_zyx=[8,16,16]')
    assert all(a != b for a, b in zip(parts(), second, strict=True))
