"""The pure metric parts of `benchmarks.diagnostics`, on arrays and files with a known answer."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from benchmarks import diagnostics as D
from benchmarks.grounding.dataset import read_masks, write_masks
from ctclip.data.transforms import crop_start


def test_crop_probability_matches_crop_start():
    # 56 slices, a crop of 48: 9 starts, slice 0 only in the crop that starts at 0.
    p = D.crop_probability(56, 48)
    assert p[0] == pytest.approx(1 / 9)
    assert p[8:48].tolist() == [1.0] * 40
    assert p[55] == pytest.approx(1 / 9)
    centre = D.crop_probability(56, 48, centre=True)
    start = crop_start((56,), (48,), None)[0]
    assert start == 4
    assert centre.tolist() == [0.0] * 4 + [1.0] * 48 + [0.0] * 4
    # An axis shorter than the crop is read whole.
    assert D.crop_probability(30, 48).tolist() == [1.0] * 30


def test_crop_coverage_equals_the_trainers_random_crops():
    """The exact expectation against crops drawn with the trainer's own `crop_start`."""
    rng = np.random.default_rng(0)
    mask = np.zeros((20, 24, 24), np.float32)
    mask[0:3, 2:6, 18:24] = 1.0  # a corner finding that random crops often cut
    mask[10, 12, 12] = 0.5  # a soft (partial-volume) voxel, always inside
    size = (12, 16, 16)
    exact = D.crop_coverage(mask, size)
    shares = []
    for _ in range(4000):
        s = crop_start(mask.shape, size, rng)
        box = tuple(slice(a, a + n) for a, n in zip(s, size, strict=True))
        shares.append(mask[box].sum() / mask.sum())
    assert exact == pytest.approx(np.mean(shares), abs=0.01)
    # The centre crop (start 4, 4, 4) keeps only the soft voxel: 0.5 of 72.5.
    assert D.crop_coverage(mask, size, centre=True) == pytest.approx(0.5 / 72.5)
    assert math.isnan(D.crop_coverage(np.zeros((4, 4, 4)), (2, 2, 2)))


def test_shell_contrast_on_a_nifti_file(tmp_path):
    """A 100 HU cube in a background alternating 0/20 HU: delta 90, shell std 10, contrast 9."""
    hu = np.zeros((12, 20, 20), np.float32)
    hu[:, :, ::2] = 20.0
    mask = np.zeros(hu.shape, bool)
    mask[4:8, 8:12, 8:12] = True
    hu[mask] = 100.0
    affine = np.diag([-2.0, -2.0, 5.0, 1.0])
    ct_path = tmp_path / 'ct.nii.gz'
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0).astype(np.int16), affine), str(ct_path))
    write_masks(tmp_path / 'mask.nii.gz', mask.transpose(2, 1, 0)[None], affine)

    native = D._native_hu(ct_path)
    m = read_masks(tmp_path / 'mask.nii.gz', 1).masks[0].transpose(2, 1, 0)
    assert m.sum() == 64
    out = D.shell_contrast(native, m, (5.0, 2.0, 2.0), shell_mm=4.0)
    assert out['inside'] == pytest.approx(100.0)
    assert out['shell'] == pytest.approx(10.0, abs=0.6)  # x-parity of the ring is ~balanced
    assert out['contrast'] == pytest.approx(out['delta'] / out['shell_std'])
    assert out['contrast'] == pytest.approx(9.0, rel=0.08)
    # Excluding the whole shell leaves no background to compare with.
    none = D.shell_contrast(native, m, (5.0, 2.0, 2.0), shell_mm=4.0, exclude=~m)
    assert math.isnan(none['contrast']) and none['inside'] == pytest.approx(100.0)


def test_shell_is_in_millimetres():
    mask = np.zeros((9, 9, 9), bool)
    mask[4, 4, 4] = True
    shell = D.shell_mask(mask, (6.0, 3.0, 3.0), shell_mm=3.0)
    # 3 mm reaches the in-plane neighbours (3 mm) but not the next slice (6 mm).
    assert shell.sum() == 4
    assert not shell[3].any() and not shell[5].any()


def test_label_agreement_counts_and_kappa():
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0], bool)
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 1, -1, np.nan])
    out = D.label_agreement(pred, truth)
    assert (out['tp'], out['fp'], out['fn'], out['tn']) == (3, 1, 1, 3)
    assert out['uncertain'] == 1 and out['uncertain_true'] == 1 and out['missing'] == 1
    assert out['precision'] == pytest.approx(0.75) and out['recall'] == pytest.approx(0.75)
    assert out['kappa'] == pytest.approx(0.5)  # observed 0.75, expected 0.5


def test_cooccurrence_conditional():
    present = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 1]], bool)
    counts, cond = D.cooccurrence(present)
    assert counts.tolist() == [[3, 2, 1], [2, 2, 1], [1, 1, 2]]
    assert cond[0, 1] == pytest.approx(2 / 3) and cond[1, 0] == pytest.approx(1.0)


def test_proxies_find_the_class_a_score_tracks():
    rng = np.random.default_rng(1)
    truth = rng.random((40, len(D.FINDINGS))) < 0.3
    truth[:4, 1], truth[4:, 1] = True, False  # both classes 0 and 1 get positives
    truth[:20, 0], truth[20:, 0] = True, False
    scores = rng.random((40, len(D.FINDINGS)))
    scores[:, 0] = truth[:, 1] + 0.01 * rng.random(40)  # class 0's score is a class-1 detector
    found = D.proxies(scores, truth.astype(float))
    assert found[0]['proxy'] == D.FINDINGS[1]
    assert found[0]['proxy_auroc'] == pytest.approx(1.0)


def test_lung_zone_keeps_vessels_inside_the_lung_and_not_the_mediastinum():
    hu = np.full((3, 40, 60), -1000.0, np.float32)  # air around the body
    hu[:, 5:35, 5:55] = -100.0  # body (fat / soft tissue)
    hu[:, 10:30, 10:27] = -850.0  # right lung
    hu[:, 10:30, 33:50] = -850.0  # left lung; the mediastinum between them stays soft tissue
    hu[:, 18:21, 15:18] = 40.0  # a vessel inside the right lung
    zone = D.lung_zone(hu)
    assert zone[:, 18:21, 15:18].all()  # the vessel counts as lung zone
    assert not zone[:, 10:30, 28:32].any()  # the mediastinum does not
    assert not zone[:, :5].any() and zone.sum() == 3 * 20 * (17 + 17)


def test_diagnostics_end_to_end_on_a_small_demo_layout(tmp_path):
    """A synthetic cohort -> cache -> rules labels -> two tiny untrained models, laid out as a
    demo output: every class gets a row, every mask a record, every output file is written."""
    import csv
    import json

    import torch

    from ctclip.cli import main as ctclip
    from ctclip.factory import create_model
    from synth import generate_cohort

    demo = tmp_path / 'demo_out'
    generate_cohort(demo / 'cohort', n=6, seed=3, small=True, workers=1, progress=False)
    argv = ['preprocess', '--input', str(demo / 'cohort'), '--out', str(demo / 'cache/ctrate.h5')]
    assert ctclip([*argv, '--recipe', 'small', '--no-progress']) == 0
    rows = []
    for name in ('train', 'validation'):
        path = demo / 'cohort/dataset/radiology_text_reports' / f'{name}_reports.csv'
        with open(path, newline='', encoding='utf-8') as f:
            rows += list(csv.DictReader(f))
    (demo / 'labels').mkdir()
    with open(demo / 'labels/reports.csv', 'w', newline='', encoding='utf-8') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    argv = ['label', '--reports', str(demo / 'labels/reports.csv'), '--out-dir']
    assert ctclip([*argv, str(demo / 'labels'), '--no-progress']) == 0
    torch.manual_seed(0)
    for stage in ('stage1', 'stage2'):
        model = create_model('resnet3d-tiny-tinybert', vision_cfg={'block_inplanes': [4, 8, 8, 8]})
        model.save_pretrained(demo / 'train' / stage / 'final')

    out = tmp_path / 'diag'
    assert D.main(['--demo-out', str(demo), '--out', str(out)]) == 0
    result = json.loads((out / 'diagnostics.json').read_text())
    assert [r['finding'] for r in result['table']] == list(D.FINDINGS)
    truth = D.read_truth(demo / 'cohort/truth.jsonl')
    dataset = json.loads((demo / 'cohort/grounding/dataset.json').read_text())
    masks = sum(len(item['categories']) for split in dataset.values() for item in split)
    assert len(result['records']) == masks > 0
    for rec in result['records']:
        assert 0.0 <= rec['random_crop'] <= 1.0 and 0.0 <= rec['centre_crop'] <= 1.0
        assert rec['native_voxels'] > 0
    # The rules labels of the synthetic reports agree with the truth.
    assert all(a['kappa'] > 0.8 for a in result['labels'].values() if a['kappa'] is not None)
    assert len(truth) == sum(
        a['tp'] + a['fp'] + a['fn'] + a['tn'] + a['uncertain']
        for a in [result['labels']['Lung nodule']]
    )
    assert result['failures'] == []
    for name in ('diagnostics.md', 'cooccurrence.png', 'auroc_by_part.png'):
        assert (out / name).stat().st_size > 0
    md = (out / 'diagnostics.md').read_text()
    starts = [line for line in md.splitlines() if line.startswith('| Lung opacity |')]
    assert len(starts) == 2  # the model table and the data table
