"""Small synthetic chest phantoms and CT-RATE trees for the preprocessing tests (no shared data needed)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SPACING_XYZ = (3.0, 3.0, 5.0)
SHAPE_ZYX = (24, 96, 96)
ORIGIN = (-142.5, -160.0, -300.0)
# A bright marker in the patient's LEFT, ANTERIOR, SUPERIOR lung, in LPS millimetres.
MARKER_LPS = (60.0, -110.0, -220.0)


def phantom_hu(
    shape_zyx=SHAPE_ZYX, spacing_xyz=SPACING_XYZ, origin=ORIGIN, pad=-2048
) -> np.ndarray:
    """int16 HU (z, y, x) of an LPS-indexed chest: body, two lungs, spine, table, one marker."""
    z, y, x = np.meshgrid(
        *[
            origin[a] + spacing_xyz[a] * np.arange(n)
            for a, n in zip((2, 1, 0), shape_zyx, strict=False)
        ],
        indexing='ij',
    )
    cx, cy = origin[0] + spacing_xyz[0] * (shape_zyx[2] - 1) / 2 + 10, -40.0
    vol = np.full(shape_zyx, -1000, np.int16)
    body = ((x - cx) / 125) ** 2 + ((y - cy) / 90) ** 2 <= 1
    vol[body] = 40
    for side in (-1, 1):
        lung = ((x - cx - side * 55) / 45) ** 2 + ((y - cy + 5) / 60) ** 2 <= 1
        vol[lung & body] = -850
    spine = (x - cx) ** 2 + (y - cy - 60) ** 2 <= 15**2
    vol[spine] = 700
    vol[(y > cy + 100) & (y < cy + 108) & (np.abs(x - cx) < 140)] = 300  # table, detached
    marker = (
        (x - MARKER_LPS[0]) ** 2 + (y - MARKER_LPS[1]) ** 2 + (z - MARKER_LPS[2]) ** 2
    ) <= 12**2
    vol[marker] = 1500
    fov = (x - cx) ** 2 + (y - cy) ** 2 > 170**2
    vol[fov] = pad
    return vol


def hu_image(vol: np.ndarray, spacing_xyz=SPACING_XYZ, origin=ORIGIN) -> sitk.Image:
    image = sitk.GetImageFromArray(vol)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin)
    return image


def write_ctrate_tree(
    root: Path,
    names: list[str],
    versions=('v1', 'v2'),
    siemens: set[str] = frozenset(),
    shapes: dict[str, tuple] | None = None,
) -> Path:
    """A CT-RATE tree: v1 (blank header, raw values) and/or v2 (_fixed, LPS, HU) + metadata CSVs."""
    dataset = root / 'dataset'
    meta_rows = {'train': [], 'valid': []}
    for name in names:
        split, pid, scan, _ = name[: -len('.nii.gz')].split('_')
        shape = (shapes or {}).get(name, SHAPE_ZYX)
        intercept = -8192 if name in siemens else -1024
        hu = phantom_hu(shape, pad=-8192 if name in siemens else -2048)
        rel = Path(f'{split}_{pid}') / f'{split}_{pid}_{scan}' / name
        if 'v2' in versions:
            path = dataset / f'{split}_fixed' / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(hu_image(hu), str(path))
        if 'v1' in versions:
            raw = (hu.astype(np.int32) - intercept).astype(np.int16)
            path = dataset / split / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.GetImageFromArray(raw), str(path))
        meta_rows[split].append(
            {
                'VolumeName': name,
                'Manufacturer': 'Siemens Healthineers' if name in siemens else 'Philips',
                'XYSpacing': f'[{SPACING_XYZ[1]}, {SPACING_XYZ[0]}]',
                'ZSpacing': SPACING_XYZ[2],
                'RescaleSlope': 1,
                'RescaleIntercept': intercept,
                'ImagePositionPatient': str(list(ORIGIN)),
                'ImageOrientationPatient': '[1, 0, 0, 0, 1, 0]',
                'Rows': shape[1],
                'Columns': shape[2],
                'NumberofSlices': shape[0],
            }
        )
    (dataset / 'metadata').mkdir(parents=True, exist_ok=True)
    for split, file in (('train', 'train_metadata.csv'), ('valid', 'validation_metadata.csv')):
        rows = meta_rows[split]
        if not rows:
            continue
        with open(dataset / 'metadata' / file, 'w', encoding='utf-8', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return root


def marker_index(array: np.ndarray) -> np.ndarray:
    """(z, y, x) centroid of the marker (voxels above 1000 HU) in a cached array."""
    return np.argwhere(array > 1000).mean(axis=0)


def write_dicom_series(
    folder: Path,
    vol: np.ndarray,
    z_positions: list[float],
    spacing_xy=(3.0, 3.0),
    uid: str = '1.2.826.0.1.3680043.2.1125.1',
    iop=(1, 0, 0, 0, 1, 0),
) -> Path:
    """One CT DICOM file per slice at the given z positions (ITK's writer stores HU + 1024)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, z in enumerate(z_positions):
        image = sitk.GetImageFromArray(vol[k][None])
        image.SetSpacing((*spacing_xy, 1.0))
        tags = {
            '0008|0060': 'CT',
            '0008|0016': '1.2.840.10008.5.1.4.1.1.2',
            '0020|000d': uid + '.0',
            '0020|000e': uid,
            '0020|0013': str(k + 1),
            '0008|0018': f'{uid}.{k + 1}',
            '0020|0032': f'{ORIGIN[0]}\\{ORIGIN[1]}\\{z}',
            '0020|0037': '\\'.join(str(v) for v in iop),
            '0028|0030': f'{spacing_xy[1]}\\{spacing_xy[0]}',
            '0028|1052': '-1024',
            '0028|1053': '1',
            '0018|0050': '7.0',
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f'slice{k:03d}.dcm'))
        writer.Execute(image)
    return folder
