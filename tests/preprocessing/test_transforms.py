import doctest

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchio as tio

import preprocessing.transforms.calibrate_hu as calibrate_module
import preprocessing.transforms.resample_to_grid as resample_module
import preprocessing.transforms.window_hu as window_module
import preprocessing.window as lut_module
from preprocessing.pipeline import process_row
from preprocessing.recipes import get_recipe
from preprocessing.transforms import CalibrateHU, ResampleToGrid, WindowHU, recipe_transform
from preprocessing.window import HUWindow
from tests.preprocessing.phantoms import hu_image, phantom_hu


@pytest.mark.parametrize('module', [calibrate_module, resample_module, window_module, lut_module])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


def test_torchio_pipeline_matches_the_cache_voxel_for_voxel(tmp_path):
    sitk.WriteImage(hu_image(phantom_hu()), str(tmp_path / 'ct.nii.gz'))
    array, _ = process_row(
        {'volume_id': 'ct', 'path': str(tmp_path / 'ct.nii.gz')}, get_recipe('small')
    )
    subject = tio.Subject(ct=tio.ScalarImage(tmp_path / 'ct.nii.gz'))
    out = recipe_transform('small', window=False)(subject)
    via_torchio = sitk.GetArrayFromImage(out.ct.as_sitk())
    np.testing.assert_array_equal(np.rint(via_torchio).astype(np.int16), array)
    assert out.ct.orientation == ('L', 'P', 'S')


def test_label_maps_follow_the_same_grid(tmp_path):
    vol = phantom_hu()
    sitk.WriteImage(hu_image(vol), str(tmp_path / 'ct.nii.gz'))
    sitk.WriteImage(hu_image((vol == -850).astype(np.uint8)), str(tmp_path / 'lungs.nii.gz'))
    subject = tio.Subject(
        ct=tio.ScalarImage(tmp_path / 'ct.nii.gz'), lungs=tio.LabelMap(tmp_path / 'lungs.nii.gz')
    )
    out = ResampleToGrid('small')(subject)
    assert out.lungs.shape == out.ct.shape
    assert set(out.lungs.data.unique().tolist()) == {0, 1}
    assert out.ct.data[out.lungs.data.bool()].median() == pytest.approx(-850, abs=5)


def test_window_and_calibration_agree_with_the_lut():
    hu = torch.arange(-3000, 3000, 7, dtype=torch.float32).view(1, -1, 1, 1)
    windowed = WindowHU((-1000, 200), (-1, 1))(tio.ScalarImage(tensor=hu)).data.flatten().numpy()
    lut = HUWindow((-1000, 200), (-1, 1))(hu.flatten().numpy().astype(np.int16))
    np.testing.assert_allclose(windowed, lut, atol=1e-6)
    raw = tio.ScalarImage(tensor=torch.tensor([0.0, 24.0, 1064.0, -1024.0]).view(1, 4, 1, 1))
    assert CalibrateHU(intercept=-1024)(raw).data.flatten().tolist() == [
        -1024.0,
        -1000.0,
        40.0,
        -1000.0,
    ]


@pytest.mark.parametrize(
    'cls, kwargs, message',
    [
        (WindowHU, {'window': (200, -1000)}, 'low < high'),
        (CalibrateHU, {'slope': 0}, 'non-zero'),
    ],
)
def test_bad_arguments(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)
