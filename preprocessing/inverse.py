"""The inverse of the preprocessing geometry: model input -> cache grid -> the source CT's own grid.

The forward transform (`preprocessing.grid`) is one resample of the source image, in LPS world,
onto the recipe grid (canonical direction, recipe spacing and size, centred on the body), and then
at model time a centre crop (or air padding) of `recipe.crop_zyx`. The cache records what it takes
to undo both: the recipe grid's `origin_xyz` and, for the source, `original_shape_zyx`,
`original_spacing_zyx`, `source_origin_xyz` and `source_direction` (LPS, ITK conventions). Maps
and masks are resampled in world coordinates, so a map written with the source affine lies over
the original CT in ITK-SNAP or 3D Slicer.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ctcommon.atomic import atomic_path
from preprocessing.grid import DIRECTIONS
from preprocessing.recipes import Recipe

_logger = logging.getLogger(__name__)

SOURCE_ATTRS = (
    'original_shape_zyx',
    'original_spacing_zyx',
    'source_origin_xyz',
    'source_direction',
)
_INTERP = {'linear': sitk.sitkLinear, 'nearest': sitk.sitkNearestNeighbor}


@dataclass(frozen=True)
class Geometry:
    """An ITK image grid: origin (x, y, z), spacing (x, y, z), size (x, y, z), direction (9)."""

    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    size: tuple[int, ...]
    direction: tuple[float, ...]

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.size[::-1])  # type: ignore[return-value]

    def image(self, array_zyx: np.ndarray) -> sitk.Image:
        """`array_zyx` as an ITK image on this grid."""
        array_zyx = np.asarray(array_zyx)
        if tuple(array_zyx.shape) != self.shape_zyx:
            raise ValueError(
                f'the array must have the grid shape {list(self.shape_zyx)} (z, y, x), '
                f'not {list(array_zyx.shape)}'
            )
        image = sitk.GetImageFromArray(array_zyx)
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image

    def affine_ras(self) -> np.ndarray:
        """The NIfTI (RAS) affine of this grid, for voxel order (x, y, z)."""
        direction = np.asarray(self.direction, float).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = direction * np.asarray(self.spacing, float)[None, :]
        affine[:3, 3] = self.origin
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS world -> RAS world
        return flip @ affine


def index_map(source: Geometry, target: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) with target continuous index = A @ source index + b, both (x, y, z) voxel indices:
    the world position of a source voxel, expressed in the target grid."""
    ds = np.asarray(source.direction, float).reshape(3, 3) * np.asarray(source.spacing, float)
    dt = np.asarray(target.direction, float).reshape(3, 3) * np.asarray(target.spacing, float)
    inv = np.linalg.inv(dt)
    a = inv @ ds
    b = inv @ (np.asarray(source.origin, float) - np.asarray(target.origin, float))
    return a, b


def _vector(attrs: Mapping[str, Any], key: str, n: int, volume: str) -> tuple[float, ...]:
    value = np.asarray(attrs[key], float).ravel()
    if value.size != n:
        raise ValueError(f'{volume}: cache attribute {key} must have {n} values, not {value.size}')
    return tuple(float(v) for v in value)


def cache_geometry(attrs: Mapping[str, Any], recipe: Recipe, volume: str = '') -> Geometry:
    """The recipe grid a volume was resampled onto."""
    if 'origin_xyz' not in attrs:
        raise ValueError(f'{volume}: the cache has no origin_xyz; re-run preprocess')
    return Geometry(
        origin=_vector(attrs, 'origin_xyz', 3, volume),
        spacing=tuple(float(s) for s in recipe.spacing_zyx[::-1]),
        size=tuple(int(s) for s in recipe.shape_zyx[::-1]),
        direction=tuple(DIRECTIONS[recipe.orientation]),
    )


def source_geometry(attrs: Mapping[str, Any], volume: str = '') -> Geometry:
    """The source CT's own grid, from the attributes the cache recorded."""
    missing = [k for k in SOURCE_ATTRS if k not in attrs]
    if missing:
        raise ValueError(
            f'{volume}: the cache lacks {missing} (written before maps could be mapped back); '
            'preprocess into a new cache file to record the source geometry'
        )
    return Geometry(
        origin=_vector(attrs, 'source_origin_xyz', 3, volume),
        spacing=_vector(attrs, 'original_spacing_zyx', 3, volume)[::-1],
        size=tuple(int(s) for s in _vector(attrs, 'original_shape_zyx', 3, volume)[::-1]),
        direction=_vector(attrs, 'source_direction', 9, volume),
    )


def resample(
    image: sitk.Image, target: Geometry, interpolation: str = 'linear', fill: float = 0.0
) -> np.ndarray:
    """`image` resampled onto `target` in world coordinates; (z, y, x) float32 array."""
    if interpolation not in _INTERP:
        raise ValueError(f'interpolation must be one of {sorted(_INTERP)}, not {interpolation!r}')
    f = sitk.ResampleImageFilter()
    f.SetOutputOrigin(target.origin)
    f.SetOutputSpacing(target.spacing)
    f.SetSize([int(s) for s in target.size])
    f.SetOutputDirection(target.direction)
    f.SetInterpolator(_INTERP[interpolation])
    f.SetDefaultPixelValue(float(fill))
    f.SetOutputPixelType(sitk.sitkFloat32)
    return sitk.GetArrayFromImage(f.Execute(sitk.Cast(image, sitk.sitkFloat32)))


def crop_box(
    cache_shape_zyx: Sequence[int], crop_zyx: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(start, size read, padding before) of the model's centre crop (`ctclip.data.transforms`:
    `crop_start` without rng, then `pad_to`), per (z, y, x) axis."""
    start, read, before = [], [], []
    for dim, want in zip(cache_shape_zyx, crop_zyx, strict=True):
        dim, want = int(dim), int(want)
        start.append(max(dim - want, 0) // 2)
        read.append(min(dim, want))
        before.append(max(want - dim, 0) // 2)
    return tuple(start), tuple(read), tuple(before)


def input_to_cache(
    array: np.ndarray, cache_shape_zyx: Sequence[int], fill: float = np.nan
) -> np.ndarray:
    """Place a map on the model input grid (the centre crop) back onto the full cache grid;
    voxels the crop left out get `fill`."""
    array = np.asarray(array)
    start, read, before = crop_box(cache_shape_zyx, array.shape)
    out = np.full(tuple(int(s) for s in cache_shape_zyx), fill, dtype=np.float32)
    src = tuple(slice(b, b + r) for b, r in zip(before, read, strict=True))
    dst = tuple(slice(s, s + r) for s, r in zip(start, read, strict=True))
    out[dst] = array[src]
    return out


def cache_to_input(array: np.ndarray, crop_zyx: Sequence[int], fill: float = 0.0) -> np.ndarray:
    """The forward crop of a cache-grid array (for masks mapped forward, e.g. in tests)."""
    array = np.asarray(array)
    start, read, before = crop_box(array.shape, crop_zyx)
    out = np.full(tuple(int(s) for s in crop_zyx), fill, dtype=array.dtype)
    src = tuple(slice(s, s + r) for s, r in zip(start, read, strict=True))
    dst = tuple(slice(b, b + r) for b, r in zip(before, read, strict=True))
    out[dst] = array[src]
    return out


def cache_to_source(
    array_zyx: np.ndarray,
    attrs: Mapping[str, Any],
    recipe: Recipe,
    interpolation: str = 'linear',
    fill: float = 0.0,
    volume: str = '',
) -> tuple[np.ndarray, Geometry]:
    """A cache-grid array on the source grid: (z, y, x) float32 array and the source geometry.

    NaN voxels (outside the model crop) count as `fill`; voxels outside the cache grid get `fill`.
    """
    grid = cache_geometry(attrs, recipe, volume)
    source = source_geometry(attrs, volume)
    data = np.nan_to_num(np.asarray(array_zyx, np.float32), nan=fill)
    return resample(grid.image(data), source, interpolation, fill), source


def source_to_cache(
    array_zyx: np.ndarray,
    attrs: Mapping[str, Any],
    recipe: Recipe,
    interpolation: str = 'linear',
    fill: float = 0.0,
    volume: str = '',
) -> np.ndarray:
    """A source-grid array (z, y, x) on the cache grid: the forward geometry of preprocessing."""
    grid = cache_geometry(attrs, recipe, volume)
    source = source_geometry(attrs, volume)
    return resample(source.image(np.asarray(array_zyx, np.float32)), grid, interpolation, fill)


def write_nifti(path: str | Path, image: Any) -> Path:
    """Write a `.nii` / `.nii.gz` atomically; the file is read back before it is renamed."""
    import nibabel as nib

    path = Path(path)
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    payload = image.to_bytes()
    gz = path.name.endswith('.gz')
    if gz:
        payload = gzip.compress(payload, compresslevel=1, mtime=0)
    shape = tuple(image.shape)

    def verify(tmp: Path) -> None:
        raw = tmp.read_bytes()
        back = nib.Nifti1Image.from_bytes(gzip.decompress(raw) if gz else raw)
        if tuple(back.shape) != shape:
            raise OSError(f'{path}: wrote shape {back.shape}, expected {shape}')

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, verify=verify) as tmp:
        tmp.write_bytes(payload)
    return path
