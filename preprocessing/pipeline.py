"""One volume, from its manifest row to an int16 array on the recipe grid plus its cache attributes."""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from preprocessing.checks import CheckLimits, check_geometry, check_intensity, padding_to_air
from preprocessing.ctrate import (
    GEOMETRY_COLUMNS,
    calibrate_v1,
    detect_version,
    geometry_from_metadata,
)
from preprocessing.errors import PreprocessError
from preprocessing.grid import resample_to_grid, to_int16_array
from preprocessing.qc import volume_stats
from preprocessing.readers import (
    MAX_VOXELS,
    guess_format,
    read_dicom_series,
    read_nifti,
    read_npz,
    read_volume,
)
from preprocessing.recipes import Recipe

_logger = logging.getLogger(__name__)

_ROW_ATTRS = ('patient_id', 'scan_id', 'split')


def source_sha256(path: str | Path) -> str:
    """SHA-256 of the input file, or of a DICOM folder's files in name order."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.name.encode() + b'\0')
        with file.open('rb') as f:
            while chunk := f.read(1 << 23):  # 8 MiB blocks keep memory flat
                digest.update(chunk)
    return digest.hexdigest()


def _has_ctrate_metadata(row: dict[str, Any]) -> bool:
    return any(str(row.get(c, '')).strip() for c in GEOMETRY_COLUMNS)


def load_hu(
    row: dict[str, Any], radchest_spacing: float | None = None, max_voxels: int = MAX_VOXELS
) -> tuple[sitk.Image, str]:
    """Read a row's file and calibrate it to HU in LPS world; returns (image, file_version)."""
    path = Path(row['path'])
    fmt = row.get('format') or guess_format(path)
    if fmt in ('ct-rate', 'nifti'):
        image = read_nifti(path, max_voxels)
        if fmt == 'ct-rate' or _has_ctrate_metadata(row):
            version = detect_version(image, path)
            if version == 'v1':
                image = calibrate_v1(image, geometry_from_metadata(row))
            return image, version
        return image, 'nifti'
    if fmt == 'npz':
        spacing = (float(radchest_spacing),) * 3 if radchest_spacing else None
        return read_npz(path, spacing), 'npz'
    if fmt == 'dicom':
        if path.is_dir():
            return read_dicom_series(path, row.get('series_uid') or None), 'dicom'
        return read_volume(path, 'dicom'), 'dicom'
    raise PreprocessError(
        'read', f'unknown format {fmt!r} for {str(path)!r}; valid: ct-rate, nifti, dicom, npz'
    )


def process_row(
    row: dict[str, Any],
    recipe: Recipe,
    limits: CheckLimits | None = None,
    radchest_spacing: float | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The cache entry of one manifest row: (int16 z-y-x array, per-volume attributes)."""
    limits = limits or CheckLimits()
    with ThreadPoolExecutor(1) as pool:  # hashing (GIL released) overlaps decoding and resampling
        checksum = pool.submit(source_sha256, row['path'])
        array, attrs = _grid_entry(row, recipe, limits, radchest_spacing)
        attrs['source_sha256'] = checksum.result()
    return array, attrs


def _grid_entry(
    row: dict[str, Any], recipe: Recipe, limits: CheckLimits, radchest_spacing: float | None
) -> tuple[np.ndarray, dict[str, Any]]:
    image, version = load_hu(row, radchest_spacing, limits.max_voxels)
    check_geometry(image, limits)
    check_intensity(image, limits)
    original_shape = tuple(int(s) for s in image.GetSize()[::-1])
    original_spacing = tuple(float(s) for s in image.GetSpacing()[::-1])
    # The source grid in LPS world, so maps can go back onto it (preprocessing.inverse).
    source_geometry = {
        'source_origin_xyz': tuple(float(v) for v in image.GetOrigin()),
        'source_direction': tuple(float(v) for v in image.GetDirection()),
    }
    image = padding_to_air(image)
    try:
        resampled = resample_to_grid(image, recipe)
    except RuntimeError as exc:
        raise PreprocessError('resample', f'SimpleITK resampling failed: {exc}') from exc
    del image
    array = to_int16_array(resampled)
    attrs = {
        'spacing_zyx': tuple(float(s) for s in recipe.spacing_zyx),
        'orientation': recipe.orientation,
        'original_shape_zyx': original_shape,
        'original_spacing_zyx': original_spacing,
        'source_path': str(row['path']),
        'recipe_hash': recipe.hash,
        'file_version': version,
        'origin_xyz': tuple(float(v) for v in resampled.GetOrigin()),
        **source_geometry,
        'qc_stats': json.dumps(volume_stats(array)),
    }
    attrs.update({k: str(row.get(k) or '') for k in _ROW_ATTRS})
    return array, attrs
