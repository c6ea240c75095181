import numpy as np
import SimpleITK as sitk

from preprocessing.grid import body_centre, output_grid, resample_to_grid, to_int16_array
from preprocessing.recipes import get_recipe
from tests.preprocessing.phantoms import hu_image, phantom_hu


def test_grid_is_centred_on_the_body_not_the_array():
    vol = np.full((24, 96, 160), -1000, np.int16)
    vol[:, 30:70, 100:150] = 40  # body in the right part of a wide array
    image = hu_image(vol)
    centre = np.asarray(body_centre(image))
    expected = np.asarray(image.TransformContinuousIndexToPhysicalPoint((124.5, 49.5, 11.5)))
    assert np.abs(centre - expected).max() <= 3.0 * 2  # within the 4 mm search step
    out = to_int16_array(resample_to_grid(image, get_recipe('small')))
    body = np.argwhere(out > -500)
    assert abs(body[:, 2].mean() - 55.5) < 2 and abs(body[:, 1].mean() - 55.5) < 2


def test_outside_the_input_is_air_not_zero():
    out = to_int16_array(resample_to_grid(hu_image(phantom_hu()), get_recipe('li2025')))
    assert out.shape == (120, 240, 240)
    assert out[0, 0, 0] == -1000 and out[-1, -1, -1] == -1000
    assert not np.any(out == 0)


def test_detached_table_does_not_pull_the_centre():
    vol = phantom_hu()
    no_table = vol.copy()
    no_table[(vol == 300)] = -1000
    a, b = body_centre(hu_image(vol)), body_centre(hu_image(no_table))
    assert np.abs(np.asarray(a) - np.asarray(b)).max() < 1e-6


def test_output_grid_geometry():
    origin, spacing, size, direction = output_grid((0.0, 0.0, 0.0), get_recipe('small'))
    assert spacing == (3.0, 3.0, 6.0) and size == (112, 112, 56)
    assert np.allclose(origin, (-166.5, -166.5, -165.0))
    _, _, _, ras = output_grid((0.0, 0.0, 0.0), get_recipe('merlin'))
    assert ras[0] == -1 and ras[4] == -1


def test_gantry_tilt_is_resampled_onto_the_axial_grid():
    vol = phantom_hu()
    image = hu_image(vol)
    tilt = np.deg2rad(10)
    image.SetDirection((1, 0, 0, 0, np.cos(tilt), -np.sin(tilt), 0, np.sin(tilt), np.cos(tilt)))
    out = resample_to_grid(image, get_recipe('small'))
    assert out.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert sitk.GetArrayViewFromImage(out).max() > 1000
