"""The synthetic cohort of `ctclip synth` (small grids), in both file versions and both layouts."""

import numpy as np
import pytest

from preprocessing import run
from preprocessing.cache import open_cache

synth = pytest.importorskip('synth', reason='synth is not importable')


@pytest.fixture(scope='module')
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp('synth')
    ctrate = synth.generate_cohort(root / 'ctrate', n=2, seed=3, small=True, progress=False)
    rad = synth.generate_cohort(
        root / 'rad', n=2, seed=3, layout='rad-chestct', small=True, progress=False
    )
    return root, ctrate, rad


def test_ctrate_v1_and_v2_agree_and_carry_ids(cohorts):
    root, ctrate, _ = cohorts
    caches = {}
    for version in ('v1', 'v2'):
        out = root / f'{version}.h5'
        summary = run(
            {
                'input': str(ctrate),
                'out': str(out),
                'recipe': 'small',
                'prefer_version': version,
                'progress': False,
            }
        )
        assert summary.failed == 0 and summary.ok >= 2
        caches[version] = open_cache(out)
    v1, v2 = caches['v1'], caches['v2']
    assert v1.ids() == v2.ids()
    for vid in v2.ids():
        a, b = v1.read(vid).array.astype(int), v2.read(vid).array.astype(int)
        # v1 geometry comes from the CSV in float64, v2's from float32 NIfTI pixdims: <= 1 HU apart
        assert np.abs(a - b).max() <= 1 and np.mean(a == b) > 0.95
        attrs = v2.attrs(vid)
        assert attrs['file_version'] == 'v2' and v1.attrs(vid)['file_version'] == 'v1'
        assert attrs['scan_id'].startswith(attrs['patient_id']) and attrs['split'] in (
            'train',
            'valid',
        )
        assert vid.endswith('.nii.gz')
        assert 0.02 < v2.read(vid).array.__gt__(-500).mean() < 0.9


def test_radchestct_layout_honours_spacing_json(cohorts):
    root, _, rad = cohorts
    out = root / 'rad.h5'
    summary = run({'input': str(rad), 'out': str(out), 'recipe': 'small', 'progress': False})
    assert summary.failed == 0 and summary.ok == 2
    cache = open_cache(out)
    for vid in cache.ids():
        attrs = cache.attrs(vid)
        assert vid[:3] in ('trn', 'val', 'tst') and attrs['file_version'] == 'npz'
        assert attrs['original_spacing_zyx'] != (0.8, 0.8, 0.8)  # spacing.json, not the default
