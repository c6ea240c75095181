"""The synthetic cohort's grounding truth: ReXGroundingCT-layout masks and dataset file."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from benchmarks.grounding.dataset import read_dataset, read_masks
from synth import generate_cohort
from synth.layouts import ctrate_paths


@pytest.fixture(scope='module')
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp('synth') / 'cohort'
    generate_cohort(root, n=4, seed=3, small=True, workers=1, progress=False)
    return root


def _reports(root):
    rows = {}
    for name in ('train', 'validation'):
        path = root / 'dataset' / 'radiology_text_reports' / f'{name}_reports.csv'
        with path.open(encoding='utf-8') as f:
            rows.update({r['VolumeName']: r for r in csv.DictReader(f)})
    return rows


def test_every_volume_with_a_finding_has_masks_and_sentences(cohort):
    cases = read_dataset(cohort / 'grounding' / 'dataset.json')
    truth = {}
    for line in (cohort / 'truth.jsonl').read_text().splitlines():
        entry = json.loads(line)
        truth[entry['volume']] = {f['finding']: f for f in entry['findings']}
    with_findings = {v for v, fs in truth.items() if any(f['voxels'] for f in fs.values())}
    assert {c.name for c in cases} == with_findings and cases
    assert {c.split for c in cases} <= {'train', 'val'}
    reports = _reports(cohort)
    for case in cases:
        masks = read_masks(cohort / 'grounding' / 'masks' / case.name, len(case.findings))
        volume = nib.load(str(ctrate_paths(cohort, case.name)[1]))
        assert masks.shape == volume.shape and np.allclose(masks.affine, volume.affine)
        for finding, mask in zip(case.findings, masks.masks, strict=True):
            assert finding.text in reports[case.name]['Findings_EN']
            assert mask.sum() == truth[case.name][finding.category]['voxels']
            box = truth[case.name][finding.category]['bbox_zyx']  # truth is (z, y, x)
            idx = np.argwhere(mask)[:, ::-1]
            assert idx.min(0).tolist() == box[0] and (idx.max(0) + 1).tolist() == box[1]
        itk = sitk.ReadImage(str(cohort / 'grounding' / 'masks' / case.name))
        assert np.array_equal(sitk.GetArrayFromImage(itk).transpose(0, 3, 2, 1) > 0, masks.masks)


def test_masks_lie_on_the_finding_voxels(cohort):
    """A nodule's mask covers dense voxels in the HU volume, so the grid is the volume's."""
    seen = set()
    for case in read_dataset(cohort / 'grounding' / 'dataset.json'):
        masks = read_masks(cohort / 'grounding' / 'masks' / case.name, len(case.findings)).masks
        hu = np.asarray(nib.load(str(ctrate_paths(cohort, case.name)[1])).dataobj)
        for finding, mask in zip(case.findings, masks, strict=True):
            if finding.category in ('Lung nodule', 'Consolidation', 'Atelectasis'):
                assert np.median(hu[mask]) > -300, (case.name, finding.category)
            if finding.category == 'Emphysema':
                assert np.median(hu[mask]) < -850
            if finding.category == 'Lymphadenopathy':  # the node (38 HU), not its fat rim
                seen.add(finding.category)
                assert np.mean(hu[mask] < -50) < 0.1, case.name  # fat is -100 HU
    assert 'Lymphadenopathy' in seen  # the fixture's seed draws one


def test_report_sentences_draw_nothing_from_the_stream():
    from synth.cohort import plan_cohort
    from synth.reports import write_report
    from synth.scan import plan_scan, stream

    plan = next(p for p in map(plan_scan, plan_cohort(6, seed=1, small=True)) if p.findings)
    first = write_report(plan.findings, plan.incidental, 5.0, stream(1, 4, 0, 0))
    sentences = {}
    second = write_report(plan.findings, plan.incidental, 5.0, stream(1, 4, 0, 0), sentences)
    assert first == second and set(sentences) == set(plan.findings)


def test_a_cohort_from_before_the_masks_is_completed_on_rerun(cohort, tmp_path):
    import shutil

    root = tmp_path / 'old'
    shutil.copytree(cohort, root)
    volume = ctrate_paths(root, 'train_1_a_1.nii.gz')[1]
    before = volume.read_bytes()
    shutil.rmtree(root / 'grounding')
    for part in (root / '.synth' / 'parts').glob('*.json'):
        record = json.loads(part.read_text())
        record.pop('grounding')
        part.write_text(json.dumps(record))
    generate_cohort(root, n=4, seed=3, small=True, workers=1, progress=False)
    assert (root / 'grounding' / 'dataset.json').read_bytes() == (
        cohort / 'grounding' / 'dataset.json'
    ).read_bytes()
    for mask in (cohort / 'grounding' / 'masks').iterdir():
        assert (root / 'grounding' / 'masks' / mask.name).read_bytes() == mask.read_bytes()
    assert volume.read_bytes() == before
