import numpy as np
import pytest
import SimpleITK as sitk

from preprocessing.ctrate import detect_version, geometry_from_metadata, split_volume_name
from preprocessing.errors import PreprocessError
from preprocessing.manifest import build_manifest
from preprocessing.pipeline import process_row
from preprocessing.recipes import get_recipe
from tests.preprocessing.phantoms import (
    MARKER_LPS,
    hu_image,
    marker_index,
    phantom_hu,
    write_ctrate_tree,
)

NAMES = ['train_1_a_1.nii.gz', 'train_1_a_2.nii.gz', 'valid_2_a_1.nii.gz']
SMALL = get_recipe('small')


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp('ctrate')
    return write_ctrate_tree(root, NAMES, siemens={'train_1_a_2.nii.gz'})


def test_metadata_row_gives_geometry_and_rescale():
    geo = geometry_from_metadata(
        {
            'XYSpacing': '[0.341796875, 0.341796875]',
            'ZSpacing': '1.5',
            'RescaleSlope': '1',
            'RescaleIntercept': '-8192',
            'ImagePositionPatient': '[-195.12, -373.12, -1250.8]',
            'ImageOrientationPatient': '[1, 0, 0, 0, 1, 0]',
        }
    )
    assert geo.spacing_xyz == (0.341796875, 0.341796875, 1.5)
    assert geo.origin == (-195.12, -373.12, -1250.8) and geo.intercept == -8192
    assert geo.direction == (1, 0, 0, 0, 1, 0, 0, 0, 1)


@pytest.mark.parametrize(
    'row, message',
    [
        ({'XYSpacing': '[0.7, 0.7]'}, 'lacks'),
        (
            {
                'XYSpacing': '[0.7]',
                'ZSpacing': '1',
                'RescaleSlope': '1',
                'RescaleIntercept': '-1024',
                'ImagePositionPatient': '[0, 0, 0]',
                'ImageOrientationPatient': '[1, 0, 0, 0, 1, 0]',
            },
            'XYSpacing must be 2',
        ),
        (
            {
                'XYSpacing': '[0.7, 0.7]',
                'ZSpacing': '1',
                'RescaleSlope': '1',
                'RescaleIntercept': '-1024',
                'ImagePositionPatient': '[0, 0, 0]',
                'ImageOrientationPatient': '[1, 0, 0, 1, 0, 0]',
            },
            'orthonormal',
        ),
    ],
)
def test_bad_metadata_names_the_column(row, message):
    with pytest.raises(PreprocessError, match=message):
        geometry_from_metadata(row)


def test_volume_name_parts():
    assert split_volume_name('valid_53_a_1.nii.gz') == {
        'patient_id': 'valid_53',
        'scan_id': 'valid_53_a',
        'split': 'valid',
    }
    with pytest.raises(ValueError, match='must look like'):
        split_volume_name('scan.nii.gz')


def test_manifest_prefers_v2_and_carries_ids(tree):
    rows = build_manifest(tree)
    assert [r['volume_id'] for r in rows] == sorted(NAMES)
    assert all('_fixed' in r['path'] for r in rows)
    assert all('_fixed' not in r['path'] for r in build_manifest(tree, prefer='v1'))
    row = rows[0]
    assert (row['patient_id'], row['scan_id'], row['split']) == ('train_1', 'train_1_a', 'train')
    assert row['RescaleIntercept'] == '-1024' and row['format'] == 'ct-rate'


@pytest.mark.parametrize('name', NAMES[:2])
def test_v1_and_v2_give_the_same_cache_entry(tree, name):
    """v1 (blank header, raw, geometry from metadata) and v2 (_fixed, HU) must agree voxel for voxel,
    including the Siemens volume whose intercept is -8192."""
    out = {}
    for prefer in ('v1', 'v2'):
        row = next(r for r in build_manifest(tree, prefer=prefer) if r['volume_id'] == name)
        array, attrs = process_row(row, SMALL)
        assert attrs['file_version'] == prefer
        out[prefer] = array
    np.testing.assert_array_equal(out['v1'], out['v2'])
    assert out['v2'].min() == -1000  # -2048 / -8192 padding became air
    lung = out['v2'][(out['v2'] > -900) & (out['v2'] < -800)]
    assert lung.size > 1000  # lungs stay at -850, so no double rescale


def test_marker_lands_where_lps_says(tree):
    row = build_manifest(tree)[0]
    array, attrs = process_row(row, SMALL)
    origin = np.asarray(attrs['origin_xyz'])
    expected_zyx = ((np.asarray(MARKER_LPS) - origin) / np.asarray(SMALL.spacing_zyx[::-1]))[::-1]
    np.testing.assert_allclose(marker_index(array), expected_zyx, atol=0.5)
    assert marker_index(array)[2] > SMALL.shape_zyx[2] / 2  # patient's left = larger x index


def test_version_detection_refuses_contradictions(tmp_path):
    hu = phantom_hu()
    blank_hu = sitk.GetImageFromArray(hu)  # blank header but HU values
    with pytest.raises(PreprocessError, match='refusing to guess'):
        detect_version(blank_hu, tmp_path / 'train_1_a_1.nii.gz')
    raw_with_header = hu_image((hu.astype(np.int32) + 1024).astype(np.int16))
    with pytest.raises(PreprocessError, match='raw-looking values'):
        detect_version(raw_with_header, tmp_path / 'train_fixed/x.nii.gz')
    raw_blank = sitk.GetImageFromArray((hu.astype(np.int32) + 1024).astype(np.int16))
    with pytest.raises(PreprocessError, match='_fixed'):
        detect_version(raw_blank, tmp_path / 'valid_fixed' / 'x.nii.gz')
    assert detect_version(raw_blank, tmp_path / 'valid' / 'x.nii.gz') == 'v1'
    assert detect_version(hu_image(hu), tmp_path / 'valid_fixed' / 'x.nii.gz') == 'v2'


def test_v1_without_metadata_fails_clearly(tree, tmp_path):
    row = next(r for r in build_manifest(tree, prefer='v1'))
    row = {k: v for k, v in row.items() if k not in ('XYSpacing', 'ZSpacing')}
    with pytest.raises(PreprocessError, match="lacks \\['XYSpacing', 'ZSpacing'\\]"):
        process_row(row, SMALL)
