import json

import numpy as np
import pytest
import SimpleITK as sitk

from preprocessing.errors import PreprocessError
from preprocessing.readers import read_dicom_series, read_nifti, read_npz, read_volume, sort_slices
from tests.preprocessing.phantoms import ORIGIN, hu_image, phantom_hu, write_dicom_series


def _z(n, step=5.0):
    return [ORIGIN[2] + step * k for k in range(n)]


def test_nifti_keeps_geometry_and_values(tmp_path):
    vol = phantom_hu()
    sitk.WriteImage(hu_image(vol), str(tmp_path / 'a.nii.gz'))
    image = read_nifti(tmp_path / 'a.nii.gz')
    assert image.GetSpacing() == (3.0, 3.0, 5.0) and image.GetOrigin() == ORIGIN
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), vol)


def test_dicom_series_sorted_by_position_and_spaced_by_positions(tmp_path):
    vol = phantom_hu()
    order = np.random.default_rng(0).permutation(24)  # file names no longer follow z
    write_dicom_series(tmp_path / 's', vol[order], [_z(24, 2.5)[i] for i in order])
    image = read_dicom_series(tmp_path / 's')
    assert image.GetSpacing()[2] == pytest.approx(2.5)  # SliceThickness (7 mm) is ignored
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), vol)


def test_dicom_duplicate_and_gap_are_rejected(tmp_path):
    vol = phantom_hu()
    dup = _z(24)
    dup[5] = dup[4]
    write_dicom_series(tmp_path / 'dup', vol, dup)
    with pytest.raises(PreprocessError, match='duplicate slice position'):
        read_dicom_series(tmp_path / 'dup')
    gap = _z(24)
    gap[12:] = [z + 15 for z in gap[12:]]
    write_dicom_series(tmp_path / 'gap', vol, gap)
    with pytest.raises(PreprocessError, match='a gap'):
        read_dicom_series(tmp_path / 'gap')


def test_dicom_mixed_orientations_are_rejected(tmp_path):
    vol = phantom_hu()
    write_dicom_series(tmp_path / 'm', vol[:12], _z(12))
    write_dicom_series(tmp_path / 'm2', vol[12:], _z(24)[12:], iop=(1, 0, 0, 0, 0, -1))
    for f in (tmp_path / 'm2').iterdir():
        f.rename(tmp_path / 'm' / f'b{f.name}')
    with pytest.raises(PreprocessError, match='different slice orientations'):
        sort_slices([str(p) for p in sorted((tmp_path / 'm').iterdir())])


def test_npz_uses_spacing_json(tmp_path):
    vol = phantom_hu()
    np.savez_compressed(tmp_path / 'tst00001.npz', ct=vol)
    assert read_npz(tmp_path / 'tst00001.npz').GetSpacing() == (0.8, 0.8, 0.8)
    (tmp_path / 'spacing.json').write_text(
        json.dumps({'spacing_zyx': [5.0, 3.0, 3.0]}), encoding='utf-8'
    )
    image = read_npz(tmp_path / 'tst00001.npz')
    assert image.GetSpacing() == (3.0, 3.0, 5.0)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), vol)
    np.savez(tmp_path / 'bad.npz', volume=vol)
    with pytest.raises(PreprocessError, match='no key "ct"'):
        read_npz(tmp_path / 'bad.npz')


@pytest.mark.parametrize(
    'name, content, message',
    [
        ('empty.nii.gz', b'', 'empty file'),
        ('text.nii.gz', b'this is a radiology report, not an image', 'not gzip data'),
        ('text.nii', b'x' * 400, 'not a readable NIfTI'),
        ('vol.npz', b'PK\x03\x04 broken', 'not a readable .npz'),
        ('notes.txt', b'hello', 'cannot tell the format'),
    ],
)
def test_unreadable_files_name_the_problem(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(PreprocessError, match=message):
        read_volume(tmp_path / name)


def test_truncated_gzip_is_rejected(tmp_path):
    sitk.WriteImage(hu_image(phantom_hu()), str(tmp_path / 'a.nii.gz'))
    data = (tmp_path / 'a.nii.gz').read_bytes()
    (tmp_path / 'cut.nii.gz').write_bytes(data[: len(data) // 2])
    with pytest.raises(PreprocessError, match='cut.nii.gz'):
        read_nifti(tmp_path / 'cut.nii.gz')


def test_2d_image_is_rejected(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(phantom_hu()[0]), str(tmp_path / 'slice.nii.gz'))
    with pytest.raises(PreprocessError, match='2D image'):
        read_nifti(tmp_path / 'slice.nii.gz')


def test_truncated_plain_nifti_is_rejected(tmp_path):
    sitk.WriteImage(hu_image(phantom_hu()), str(tmp_path / 'a.nii'))
    data = (tmp_path / 'a.nii').read_bytes()
    (tmp_path / 'cut.nii').write_bytes(data[:-1000])
    with pytest.raises(PreprocessError, match='is truncated'):
        read_nifti(tmp_path / 'cut.nii')


def test_dicom_without_pixel_spacing_is_rejected(tmp_path):
    write_dicom_series(tmp_path / 's', phantom_hu(), _z(24))
    for path in (tmp_path / 's').iterdir():  # retag PixelSpacing (0028,0030) as (0028,0031)
        data = path.read_bytes()
        assert data.count(b'\x28\x00\x30\x00') == 1
        path.write_bytes(data.replace(b'\x28\x00\x30\x00', b'\x28\x00\x31\x00'))
    with pytest.raises(PreprocessError, match='missing spacing'):
        read_dicom_series(tmp_path / 's')
