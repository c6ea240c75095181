"""CT-RATE specifics: metadata parsing, file-version detection and HU calibration.

CT-RATE ships two versions of each volume. v1 files have blank headers (unit spacing, zero origin)
and raw stored values, so geometry and rescale come from the metadata CSV. v2 `_fixed` files carry
LPS geometry and are already HU; rescaling them again shifts every voxel by the intercept, a bug
users have hit. The version is read off each file; a file that looks like neither is an error.
"""

from __future__ import annotations

import ast
import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from preprocessing.errors import PreprocessError
from preprocessing.itk_buffer import writable_array

_logger = logging.getLogger(__name__)

GEOMETRY_COLUMNS = (
    'XYSpacing',
    'ZSpacing',
    'RescaleSlope',
    'RescaleIntercept',
    'ImagePositionPatient',
    'ImageOrientationPatient',
)
# A v2 file's air sits near -1000 HU; a v1 file's raw air sits near 0 (intercept -1024) or 7192 (-8192).
_HU_AIR_MAX = -500.0


@dataclass(frozen=True)
class CtRateGeometry:
    """What a v1 file lacks: spacing (x, y, z), origin, direction and the rescale line."""

    spacing_xyz: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    slope: float
    intercept: float


def _parse_list(value: Any, name: str, n: int) -> list[float]:
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        text = str(value).strip()
        if not text or text.lower() == 'nan':
            raise PreprocessError('calibrate', f'metadata {name} is missing')
        try:
            items = (
                ast.literal_eval(text)
                if text.startswith(('[', '('))
                else text.replace('\\', ' ').split()
            )
        except (ValueError, SyntaxError) as exc:
            raise PreprocessError(
                'calibrate', f'metadata {name} must be a list of {n} numbers, not {text!r}'
            ) from exc
        items = list(items) if isinstance(items, (list, tuple)) else [items]
    try:
        values = [float(v) for v in items]
    except (TypeError, ValueError) as exc:
        raise PreprocessError(
            'calibrate', f'metadata {name} must hold numbers, not {value!r}'
        ) from exc
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise PreprocessError(
            'calibrate', f'metadata {name} must be {n} finite numbers, not {value!r}'
        )
    return values


def _parse_float(value: Any, name: str) -> float:
    try:
        out = float(str(value).strip())
    except ValueError as exc:
        raise PreprocessError(
            'calibrate', f'metadata {name} must be a number, not {value!r}'
        ) from exc
    if not math.isfinite(out):
        raise PreprocessError('calibrate', f'metadata {name} is missing')
    return out


def geometry_from_metadata(row: dict[str, Any]) -> CtRateGeometry:
    """Spacing, origin, direction and rescale from one CT-RATE metadata row.

    XYSpacing is DICOM PixelSpacing (row step, column step) = (y, x); the slice normal is the cross
    product of the row and column directions, as for a DICOM series sorted by position.
    """
    missing = [c for c in GEOMETRY_COLUMNS if c not in row or str(row[c]).strip() in ('', 'nan')]
    if missing:
        raise PreprocessError(
            'calibrate', f'metadata row lacks {missing}; a v1 file needs them all'
        )
    dy, dx = _parse_list(row['XYSpacing'], 'XYSpacing', 2)
    dz = _parse_float(row['ZSpacing'], 'ZSpacing')
    if min(dx, dy, dz) <= 0:
        raise PreprocessError('calibrate', f'metadata spacing must be positive, not {(dx, dy, dz)}')
    iop = np.asarray(_parse_list(row['ImageOrientationPatient'], 'ImageOrientationPatient', 6))
    u, v = iop[:3], iop[3:]
    if abs(np.linalg.norm(u) - 1) > 1e-2 or abs(np.linalg.norm(v) - 1) > 1e-2 or abs(u @ v) > 1e-2:
        raise PreprocessError(
            'calibrate',
            f'metadata ImageOrientationPatient {iop.tolist()} is not two orthonormal vectors',
        )
    w = np.cross(u, v)
    direction = np.stack([u, v, w], axis=1)  # columns are the index axes' directions
    origin = _parse_list(row['ImagePositionPatient'], 'ImagePositionPatient', 3)
    slope = _parse_float(row['RescaleSlope'], 'RescaleSlope')
    intercept = _parse_float(row['RescaleIntercept'], 'RescaleIntercept')
    if slope == 0:
        raise PreprocessError('calibrate', 'metadata RescaleSlope must not be 0')
    return CtRateGeometry(
        (dx, dy, dz), tuple(origin), tuple(direction.flatten().tolist()), slope, intercept
    )


def is_blank_header(image: sitk.Image) -> bool:
    """Unit spacing and zero origin: what CT-RATE's v1 NIfTIs carry instead of geometry."""
    return all(abs(s - 1.0) < 1e-6 for s in image.GetSpacing()) and all(
        abs(o) < 1e-6 for o in image.GetOrigin()
    )


def _air_level(image: sitk.Image) -> float:
    """2nd percentile of the stored values, ignoring the scanner padding value."""
    view = sitk.GetArrayViewFromImage(image)
    sample = np.asarray(view[:: max(1, view.shape[0] // 16), ::8, ::8], dtype=np.float32).ravel()
    lowest = sample.min()
    if np.count_nonzero(sample == lowest) > 0.01 * sample.size:  # padding sits at one value
        sample = sample[sample != lowest]
    return float(np.percentile(sample, 2)) if sample.size else float(lowest)


def detect_version(image: sitk.Image, path: str | Path) -> str:
    """'v1' or 'v2', from the header and the stored values; contradictory evidence is an error."""
    blank = is_blank_header(image)
    air = _air_level(image)
    looks_hu = air < _HU_AIR_MAX
    named_fixed = '_fixed' in str(path)
    if blank and not looks_hu:
        if named_fixed:
            raise PreprocessError(
                'calibrate',
                f'{str(path)!r} sits in a _fixed (v2) folder but has a blank header and raw values',
            )
        return 'v1'
    if not blank and looks_hu:
        return 'v2'
    if blank:
        raise PreprocessError(
            'calibrate',
            f'{str(path)!r} has a blank (v1) header but values already in HU (2nd percentile {air:.0f}); '
            'refusing to guess whether to rescale',
        )
    raise PreprocessError(
        'calibrate',
        f'{str(path)!r} has a v2 header but raw-looking values (2nd percentile {air:.0f}, no air '
        'below -500 HU); refusing to guess whether to rescale',
    )


def calibrate_v1(image: sitk.Image, geometry: CtRateGeometry) -> sitk.Image:
    """Raw stored values to HU plus the metadata's geometry (int16; in place when it fits)."""
    raw = writable_array(image)
    shift = geometry.intercept
    if geometry.slope == 1 and shift == round(shift) and raw.dtype == np.int16:
        lo, hi = int(raw.min()) + int(shift), int(raw.max()) + int(shift)
        if -32768 <= lo and hi <= 32767:
            raw += np.int16(shift)
            return _set_geometry(image, geometry)
    hu = raw.astype(np.float32) * np.float32(geometry.slope) + np.float32(shift)
    np.rint(hu, out=hu)
    np.clip(hu, -32768, 32767, out=hu)
    return _set_geometry(sitk.GetImageFromArray(hu.astype(np.int16)), geometry)


def _set_geometry(image: sitk.Image, geometry: CtRateGeometry) -> sitk.Image:
    image.SetSpacing(geometry.spacing_xyz)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def read_metadata(paths: list[str | Path]) -> dict[str, dict[str, str]]:
    """VolumeName -> metadata row, over one or more CT-RATE metadata CSVs."""
    rows: dict[str, dict[str, str]] = {}
    for path in paths:
        with open(path, encoding='utf-8', newline='') as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or 'VolumeName' not in reader.fieldnames:
                raise ValueError(
                    f'Metadata CSV {str(path)!r} must have a VolumeName column, not {reader.fieldnames}'
                )
            for row in reader:
                rows[row['VolumeName']] = row
    return rows


def split_volume_name(name: str) -> dict[str, str]:
    """`valid_53_a_1.nii.gz` -> patient `valid_53`, scan `valid_53_a`, split `valid`."""
    stem = name[: -len('.nii.gz')] if name.endswith('.nii.gz') else name.rsplit('.', 1)[0]
    parts = stem.split('_')
    if len(parts) < 4 or parts[0] not in ('train', 'valid', 'test'):
        raise ValueError(f"CT-RATE volume name must look like 'valid_53_a_1.nii.gz', not {name!r}")
    return {
        'patient_id': '_'.join(parts[:2]),
        'scan_id': '_'.join(parts[:3]),
        'split': parts[0],
    }
