"""Plausibility checks and padding-to-air, applied to every volume once it is in HU.

Each check raises `PreprocessError('check', ...)` with the measured value, so the failures report
tells a user what is wrong with a file without opening it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import SimpleITK as sitk

from preprocessing.errors import PreprocessError
from preprocessing.itk_buffer import writable_array
from preprocessing.readers import MAX_VOXELS
from preprocessing.recipes import AIR_HU

# Scanner padding (-2048, -3024, -8192, ...) lies below any real tissue or air value.
PADDING_BELOW_HU = -1024


@dataclass(frozen=True)
class CheckLimits:
    """What a plausible CT volume looks like; all limits can be set from the config."""

    min_slices: int = 16
    min_inplane: int = 32
    min_spacing_mm: float = 0.05
    max_spacing_mm: float = 20.0
    air_percentile_max_hu: float = -500.0
    high_percentile_max_hu: float = 4000.0
    min_range_hu: float = 200.0
    # 2**31 voxels: 4x a 1024 x 1024 x 512 scan; a forged header must not reach the allocator.
    max_voxels: int = MAX_VOXELS

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f'checks.{f.name} must be a number, not {value!r}')
        if self.max_voxels <= 0:
            raise ValueError(f'checks.max_voxels must be positive, not {self.max_voxels!r}')


def check_geometry(image: sitk.Image, limits: CheckLimits) -> None:
    size = image.GetSize()  # (x, y, z)
    voxels = math.prod(size)
    if voxels > limits.max_voxels:
        raise PreprocessError(
            'check', f'{voxels} voxels ({size}) exceed checks.max_voxels={limits.max_voxels}'
        )
    if size[2] < limits.min_slices:
        raise PreprocessError(
            'check', f'too few slices: {size[2]} (need at least {limits.min_slices})'
        )
    if min(size[:2]) < limits.min_inplane:
        raise PreprocessError(
            'check',
            f'slices of {size[0]}x{size[1]} pixels are too small (need {limits.min_inplane})',
        )
    spacing = image.GetSpacing()
    for axis, s in zip('xyz', spacing, strict=False):
        if not math.isfinite(s) or not limits.min_spacing_mm <= s <= limits.max_spacing_mm:
            raise PreprocessError(
                'check',
                f'spacing {axis}={s} mm is missing or implausible (must be within '
                f'[{limits.min_spacing_mm}, {limits.max_spacing_mm}] mm)',
            )


def check_intensity(image: sitk.Image, limits: CheckLimits) -> None:
    """NaNs, and an intensity distribution that is not CT (no air, or values far above bone)."""
    view = sitk.GetArrayViewFromImage(image)
    if view.dtype.kind == 'f':
        bad = int(np.count_nonzero(~np.isfinite(view)))
        if bad:
            raise PreprocessError('check', f'{bad} voxels are NaN or infinite')
    step_z = max(1, view.shape[0] // 32)
    sample = np.asarray(view[::step_z, ::4, ::4], dtype=np.float32).ravel()
    sample = sample[sample >= PADDING_BELOW_HU]  # scanner padding is not air
    if sample.size == 0:
        raise PreprocessError(
            'check', f'every voxel lies below {PADDING_BELOW_HU} HU (all padding)'
        )
    low, high = np.percentile(sample, [1.0, 99.0])
    if high - low < limits.min_range_hu:
        raise PreprocessError(
            'check', f'intensities span only [{low:.0f}, {high:.0f}]: a constant or non-CT image'
        )
    if low > limits.air_percentile_max_hu:
        raise PreprocessError(
            'check',
            f'not a CT intensity range: 1st percentile {low:.0f} shows no air (expected below '
            f'{limits.air_percentile_max_hu:.0f} HU); raw values or another modality?',
        )
    if high > limits.high_percentile_max_hu:
        raise PreprocessError(
            'check',
            f'not a CT intensity range: 99th percentile {high:.0f} lies above '
            f'{limits.high_percentile_max_hu:.0f} HU',
        )


def padding_to_air(image: sitk.Image, slab: int = 16) -> sitk.Image:
    """Scanner padding values (anything below -1024 HU) become air, -1000 HU; in place.

    Works slab by slab through the image's own buffer, so it needs no second copy of the volume.
    """
    array = writable_array(image)
    for start in range(0, array.shape[0], slab):
        part = array[start : start + slab]
        np.putmask(part, part < PADDING_BELOW_HU, AIR_HU)
    return image
