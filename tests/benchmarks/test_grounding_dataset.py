"""The ReXGroundingCT reader on a small fixture in the official layout, and `grounding-score`."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from benchmarks.grounding import dataset as D
from benchmarks.grounding.runner import GroundingSettings, score_predictions, settings_from

SHAPE = (24, 20, 12)  # X, Y, Z
AFFINE = np.diag([-0.8, -0.8, 2.5, 1.0])


def _ball(centre, radius):
    x, y, z = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2


def _fixture(tmp_path):
    """Two CT-RATE names in `train` and one in `val`; masks with the finding axis first."""
    items = {
        'train': [
            {
                'name': 'train_1_a_1.nii.gz',
                'findings': {'0': 'Nodule in the right upper lobe.', '1': 'Left effusion.'},
                'categories': {'0': '2d', '1': '2e'},
            },
            {
                'name': 'train_2_a_1.nii.gz',
                'findings': {'0': 'Ground-glass opacity.'},
                'categories': {'0': '2c'},
                'extra_field': 3,
            },
        ],
        'val': [
            {
                'name': 'valid_7_a_2.nii.gz',
                'findings': {'0': 'Two nodules.', '1': 'Emphysema.'},
                'categories': {'0': '2d', '1': '1c'},
            }
        ],
    }
    path = tmp_path / 'dataset.json'
    path.write_text(json.dumps(items))
    masks = tmp_path / 'segmentations'
    masks.mkdir()
    gold = {
        'train_1_a_1.nii.gz': np.stack([_ball((5, 5, 5), 3), _ball((18, 14, 7), 4)]),
        'train_2_a_1.nii.gz': np.stack([_ball((10, 10, 6), 5)]),
        'valid_7_a_2.nii.gz': np.stack(
            [_ball((5, 5, 3), 2) | _ball((18, 15, 8), 2), _ball((12, 6, 9), 3)]
        ),
    }
    for name, m in gold.items():
        nib.save(nib.Nifti1Image(m.astype(np.uint8), AFFINE), str(masks / name))  # (F, X, Y, Z)
    return path, masks, gold


def test_reader_official_layout(tmp_path):
    path, masks, gold = _fixture(tmp_path)
    cases = D.read_dataset(path)
    assert [c.name for c in cases] == list(gold)
    assert [c.split for c in cases] == ['train', 'train', 'val']
    assert cases[0].findings[1].text == 'Left effusion.' and cases[0].findings[1].category == '2e'
    assert cases[1].extra == {'extra_field': 3}
    assert cases[2].patient == 'valid_7'
    assert [c.name for c in D.read_dataset(path, ['val'])] == ['valid_7_a_2.nii.gz']
    for case in cases:
        vol = D.read_masks(masks / case.name, len(case.findings))
        assert np.array_equal(vol.masks, gold[case.name])
        assert vol.shape == SHAPE


def test_writer_round_trip_and_finding_axis_last(tmp_path):
    m = np.stack([_ball((5, 5, 5), 3), _ball((15, 12, 6), 2)])
    out = D.write_masks(tmp_path / 'p' / 'x.nii.gz', m, AFFINE)
    image = nib.load(str(out))
    assert image.shape == (*SHAPE, 2)
    assert np.allclose(image.affine, AFFINE)
    assert np.array_equal(D.read_masks(out, 2).masks, m)
    itk = sitk.ReadImage(str(out))  # SimpleITK reads the same masks as a 4D image
    arr = sitk.GetArrayFromImage(itk)  # (F, Z, Y, X)
    assert np.array_equal(arr.transpose(0, 3, 2, 1), m.astype(np.uint8))
    assert np.allclose(itk.GetSpacing()[:3], (0.8, 0.8, 2.5))
    assert not list(out.parent.glob('.*tmp'))


def test_reader_errors_name_the_file(tmp_path):
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'train': [{'name': 'a.nii.gz'}]}))
    with pytest.raises(D.GroundingDataError, match=r'bad\.json: item 0 of train must be an object'):
        D.read_dataset(bad)
    bad.write_text('{not json')
    with pytest.raises(D.GroundingDataError, match='bad.json: not a readable JSON'):
        D.read_dataset(bad)
    path, masks, _ = _fixture(tmp_path)
    with pytest.raises(D.GroundingDataError, match=r"split\(s\) \['test'\] not found"):
        D.read_dataset(path, ['test'])
    with pytest.raises(D.GroundingDataError, match='train_1_a_1.nii.gz: must hold 3 finding'):
        D.read_masks(masks / 'train_1_a_1.nii.gz', 3)


def test_grounding_score_gold_is_one_and_failures_are_listed(tmp_path):
    path, masks, gold = _fixture(tmp_path)
    settings = GroundingSettings()
    settings.bootstrap.n_draws = 50
    settings.overlays = 2
    out = tmp_path / 'gold'
    result = score_predictions(masks, path, masks, out, settings=settings)
    for name, entry in result['model']['metrics'].items():
        assert entry['value'] == 1.0, name
    assert result['failures'] == []
    saved = json.loads((out / 'metrics.json').read_text())
    assert saved['model']['metrics']['global_dice']['value'] == 1.0
    assert '| Global Dice | 1.000 [1.000, 1.000] |' in (out / 'report.md').read_text()
    assert (out / 'report.html').is_file() and len(list((out / 'overlays').glob('*.png'))) == 2
    assert len((out / 'pairs.csv').read_text().splitlines()) == 1 + 5
    # Predictions: one empty file, one missing, one on the right grid with the finding axis last.
    pred = tmp_path / 'pred'
    D.write_masks(pred / 'train_1_a_1.nii.gz', np.zeros_like(gold['train_1_a_1.nii.gz']), AFFINE)
    D.write_masks(pred / 'valid_7_a_2.nii.gz', gold['valid_7_a_2.nii.gz'], AFFINE)
    result = score_predictions(pred, path, masks, tmp_path / 'mixed', settings=settings)
    assert [f['name'] for f in result['failures']] == ['train_2_a_1.nii.gz']
    assert 'mask file not found' in result['failures'][0]['reason']
    assert result['model']['metrics']['global_dice']['value'] == pytest.approx(2 / 5)


def test_settings_reject_unknown_keys():
    with pytest.raises(ValueError, match="'grounding.bootstrap.n_drwas'.*n_draws"):
        settings_from({'bootstrap': {'n_drwas': 3}})


def test_cli_grounding_score(tmp_path, capsys):
    from ctclip.cli import main

    path, masks, gold = _fixture(tmp_path)
    common = ['--dataset', str(path), '--masks', str(masks), '--n-bootstrap', '20']
    out = tmp_path / 'cli'
    argv = ['bench', 'grounding-score', '--pred', str(masks), *common, '--out', str(out)]
    assert main(argv) == 0
    assert 'global_dice: 1.000 [1.000, 1.000]' in capsys.readouterr().out
    assert json.loads((out / 'metrics.json').read_text())['options']['bootstrap']['n_draws'] == 20
    pred = tmp_path / 'pred'
    D.write_masks(pred / 'valid_7_a_2.nii.gz', gold['valid_7_a_2.nii.gz'], AFFINE)
    argv = ['bench', 'grounding-score', '--pred', str(pred), *common, '--out', str(out)]
    assert main(argv) == 1  # two predictions missing: listed, exit status 1
    assert capsys.readouterr().err.count('failed: ') == 2
    assert main([*argv, 'overlays=0', 'bootstrap.sede=1']) == 2
    assert "Unknown setting 'grounding.bootstrap.sede'" in capsys.readouterr().err
