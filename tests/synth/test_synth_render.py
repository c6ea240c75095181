"""The synthetic voxels: tissue HU, and every finding visibly changes the voxels it was placed in."""

from __future__ import annotations

import numpy as np
import pytest

from llm_labeling.schema import FINDINGS
from synth.anatomy import HU
from synth.geometry import Grid
from synth.scan import ScanTask, plan_scan, render_recon

DEMO_VOXEL_MM3 = 3.0 * 3.0 * 6.0  # the demo's `small` recipe


@pytest.fixture(scope='module')
def plan():
    """A small scan with all 18 findings present (findings are placed independently of each other)."""
    task = ScanTask(seed=7, patient_no=0, scan_no=0, split='train', pid=1, n_recons=1, small=True)
    plan = plan_scan(task, present=set(FINDINGS))
    grid = plan.recons[0]['grid']  # resample the grid to the demo's 3 x 3 x 6 mm
    shape = tuple(
        int(n * s / t)
        for n, s, t in zip(grid.shape_zyx, grid.spacing_zyx, (6.0, 3.0, 3.0), strict=False)
    )
    plan.recons[0]['grid'] = Grid(shape, (6.0, 3.0, 3.0), grid.origin_zyx)
    return plan


@pytest.fixture(scope='module')
def rendered(plan):
    return render_recon(plan, 0)


def test_tissue_hu_ranges(plan):
    normal = plan_scan(plan.task, present=set())
    hu, _, outside, tissues = render_recon(normal, 0)
    body = tissues['body']
    air = ~body & ~outside
    air[:, -20:, :] = False  # the table lies behind the patient
    lung = tissues['lung_r'] | tissues['lung_l']
    checks = {
        'air outside the body': (hu[air], -1030, -970),
        'lung': (hu[lung], -900, -780),
        'bone': (hu[tissues['bone']], 400, 1000),
        'heart': (hu[tissues['heart']], 25, 60),
        'liver': (hu[tissues['liver']], 40, 80),
        'aorta': (hu[tissues['aorta']], 25, 60),
    }
    for name, (values, lo, hi) in checks.items():
        assert values.size > 50, name
        assert lo <= np.median(values) <= hi, (
            f'{name}: median {np.median(values):.0f} not in [{lo}, {hi}]'
        )
    wall = body & ~tissues['cavity'] & ~tissues['bone']
    fat_share = np.mean(hu[wall] < -30)
    assert -110 <= np.median(hu[wall]) <= 50 and 0.2 < fat_share < 0.9, (
        'body wall is fat and muscle'
    )
    assert abs(HU['fat'] + 100) < 1


# An enlarged heart is compared without the effusion around it, which would fill the same space.
ALSO_OMIT = {'Cardiomegaly': {'Pericardial effusion'}}


def test_every_finding_changes_its_voxels(plan, rendered):
    voxel_mm3 = float(np.prod(plan.recons[0]['grid'].spacing_zyx))
    for name in FINDINGS:
        extra = frozenset(ALSO_OMIT.get(name, ()))
        hu, masks, _, _ = render_recon(plan, 0, omit=extra) if extra else rendered
        mask = masks[name]
        assert mask.any(), f'{name} was not rendered'
        assert mask.sum() * voxel_mm3 >= 2 * DEMO_VOXEL_MM3, (
            f'{name} is too small to survive 3x3x6 mm'
        )
        without, masks_without, _, _ = render_recon(plan, 0, omit=extra | {name})
        assert name not in masks_without
        diff = np.abs(hu - without)
        assert diff[mask].mean() > 60, (
            f'{name}: mean change {diff[mask].mean():.0f} HU where it was placed'
        )
        assert diff[~mask].mean() < diff[mask].mean() / 5, f'{name} changed voxels outside its mask'


def test_metal_and_calcium_are_bright_and_thick(rendered):
    hu, masks, _, _ = rendered
    assert np.percentile(hu[masks['Medical material']], 90) > 2000
    for name in ('Arterial wall calcification', 'Coronary artery wall calcification'):
        assert np.median(hu[masks[name]]) > 300, name


def test_truth_boxes_contain_the_lesions(plan, rendered):
    from synth.cohort import truth_line

    _, masks, _, _ = rendered
    line = truth_line(plan, 0, 'train_1_a_1.nii.gz', masks)
    assert [f['finding'] for f in line['findings']] == list(FINDINGS)
    for item in line['findings']:
        (z0, y0, x0), (z1, y1, x1) = item['bbox_zyx']
        inside = masks[item['finding']][z0:z1, y0:y1, x0:x1].sum()
        assert inside == item['voxels'] > 0
        z, y, x = item['centre_zyx']
        assert z0 <= z < z1 and y0 <= y < y1 and x0 <= x < x1
