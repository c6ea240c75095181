"""On-disk formats: CT-RATE (v1 raw + metadata, v2 `_fixed` LPS/HU) and RAD-ChestCT (`.npz` in HU).

Files are written atomically (`ctcommon.atomic`: a temporary file in the same folder, renamed),
so an interrupted run never leaves a truncated volume that a later run would mistake for a
finished one.
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from ctcommon.atomic import atomic_open, atomic_path
from ctcommon.findings import FINDINGS

METADATA_COLUMNS = (
    'VolumeName',
    'Manufacturer',
    'SeriesDescription',
    'ManufacturerModelName',
    'PatientSex',
    'PatientAge',
    'ReconstructionDiameter',
    'DistanceSourceToDetector',
    'DistanceSourceToPatient',
    'GantryDetectorTilt',
    'TableHeight',
    'RotationDirection',
    'ExposureTime',
    'XRayTubeCurrent',
    'Exposure',
    'FilterType',
    'GeneratorPower',
    'FocalSpots',
    'ConvolutionKernel',
    'PatientPosition',
    'RevolutionTime',
    'SingleCollimationWidth',
    'TotalCollimationWidth',
    'TableSpeed',
    'TableFeedPerRotation',
    'SpiralPitchFactor',
    'DataCollectionCenterPatient',
    'ReconstructionTargetCenterPatient',
    'ExposureModulationType',
    'CTDIvol',
    'ImagePositionPatient',
    'ImageOrientationPatient',
    'SliceLocation',
    'SamplesPerPixel',
    'PhotometricInterpretation',
    'Rows',
    'Columns',
    'XYSpacing',
    'RescaleIntercept',
    'RescaleSlope',
    'RescaleType',
    'NumberofSlices',
    'ZSpacing',
    'StudyDate',
)
REPORT_COLUMNS = (
    'VolumeName',
    'ClinicalInformation_EN',
    'Technique_EN',
    'Findings_EN',
    'Impressions_EN',
)

# Scanner profiles: (manufacturer, model, rescale intercept, share of CT-RATE's volumes, kernels, z offset).
SCANNERS = (
    ('Philips', 'iCT 256', -1024, 0.63, ('YA', 'B'), 40.0),
    ('Siemens Healthineers', 'SOMATOM go.All', -8192, 0.28, ('Br40f', 'Br60f'), -1180.0),
    ('PNMS', 'Brilliance 16', -1024, 0.05, ('C', 'L'), -120.0),
    ('SIEMENS', 'SOMATOM Force', -1024, 0.04, ('Bl57d', 'Br36d'), -1250.0),
)


def write_csv(path: Path, columns: tuple[str, ...] | list[str], rows: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open('w', newline='', encoding='utf-8') as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def _vec(values) -> str:
    return '[' + ', '.join(f'{float(v):.10g}' for v in values) + ']'


def _gzip(data: bytes) -> bytes:
    """gzip at level 1 with a zero timestamp (same seed, same bytes); isal (`fast` extra) is quicker."""
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - depends on the optional extra
        return gzip.compress(data, compresslevel=1, mtime=0)
    return igzip.compress(data, compresslevel=1, mtime=0)


def save_nifti_gz(image: nib.Nifti1Image, path: Path) -> None:
    """Write a `.nii.gz` atomically."""
    payload = _gzip(image.to_bytes())
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def ctrate_paths(root: Path, name: str) -> tuple[Path, Path]:
    """(v1 path, v2 path) of a CT-RATE volume name such as `train_12_a_2.nii.gz`."""
    split, pid, scan, _ = name[: -len('.nii.gz')].split('_')
    rel = Path(f'{split}_{pid}') / f'{split}_{pid}_{scan}' / name
    return root / 'dataset' / split / rel, root / 'dataset' / f'{split}_fixed' / rel


def write_ctrate_volume(
    root: Path, name: str, hu: np.ndarray, spacing_zyx, ipp_xyz, intercept: int
) -> None:
    """Write the v1 (blank header, stored values) and v2 (LPS geometry, HU) NIfTI of one volume.

    Both arrays are indexed [x, y, z] (nibabel order) over the same voxels; x runs to the patient's
    left, y to posterior and z to superior, so the v2 header is LPS with identity direction.
    """
    v1_path, v2_path = ctrate_paths(root, name)
    xyz = np.ascontiguousarray(hu.transpose(2, 1, 0))
    raw = np.clip(np.rint(xyz.astype(np.float32) - intercept), -32768, 32767).astype(np.int16)
    save_nifti_gz(nib.Nifti1Image(raw, None), v1_path)
    sz, sy, sx = (float(s) for s in spacing_zyx)
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [-ipp_xyz[0], -ipp_xyz[1], ipp_xyz[2]]
    image = nib.Nifti1Image(xyz.astype(np.int16), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    save_nifti_gz(image, v2_path)


def metadata_row(name: str, scan: dict, recon: dict) -> dict:
    """One row of CT-RATE's 44-column metadata table."""
    maker, model, intercept = scan['manufacturer'], scan['model'], scan['intercept']
    siemens = maker.lower().startswith('siemens')
    ipp = recon['ipp_xyz']
    return {
        'VolumeName': name,
        'Manufacturer': maker,
        'SeriesDescription': recon['series'],
        'ManufacturerModelName': model,
        'PatientSex': scan['sex'],
        'PatientAge': f'{scan["age"]:03d}Y',
        'ReconstructionDiameter': f'{recon["fov"]:.0f}',
        'DistanceSourceToDetector': '1085.6' if siemens else '',
        'DistanceSourceToPatient': '595' if siemens else '',
        'GantryDetectorTilt': '0',
        'TableHeight': f'{scan["table_height"]:.0f}',
        'RotationDirection': 'CW',
        'ExposureTime': '622' if not siemens else '500',
        'XRayTubeCurrent': str(scan['current']),
        'Exposure': str(scan['current'] * 5 // 8),
        'FilterType': recon['kernel'],
        'GeneratorPower': '39' if siemens else '',
        'FocalSpots': '[1.2, 1.2]' if siemens else '',
        'ConvolutionKernel': f"['{recon['kernel']}', '3']" if siemens else recon['kernel'],
        'PatientPosition': 'HFS',
        'RevolutionTime': '0.33' if siemens else '',
        'SingleCollimationWidth': '0.6' if siemens else '',
        'TotalCollimationWidth': '57.6' if siemens else '',
        'TableSpeed': '92' if siemens else '',
        'TableFeedPerRotation': '46' if siemens else '',
        'SpiralPitchFactor': '0.8' if siemens else '',
        'DataCollectionCenterPatient': _vec([0.0, -scan['table_height'], ipp[2]])
        if siemens
        else '',
        'ReconstructionTargetCenterPatient': _vec([0.0, -scan['table_height'], ipp[2]])
        if siemens
        else '',
        'ExposureModulationType': 'XYZ_EC' if siemens else 'Z DOM',
        'CTDIvol': f'{scan["ctdi"]:.6f}',
        'ImagePositionPatient': _vec(ipp),
        'ImageOrientationPatient': '[1, 0, 0, 0, 1, 0]',
        'SliceLocation': f'{ipp[2]:.6g}',
        'SamplesPerPixel': '1',
        'PhotometricInterpretation': 'MONOCHROME2',
        'Rows': str(recon['rows']),
        'Columns': str(recon['rows']),
        'XYSpacing': _vec([recon['xy']] * 2),
        'RescaleIntercept': str(intercept),
        'RescaleSlope': '1',
        'RescaleType': 'HU' if siemens else '',
        'NumberofSlices': str(recon['slices']),
        'ZSpacing': f'{recon["z"]:g}',
        'StudyDate': scan['date'],
    }


def label_row(name: str, present: set[str]) -> dict:
    return {'VolumeName': name, **{f: int(f in present) for f in FINDINGS}}


def write_npz(path: Path, hu: np.ndarray) -> None:
    """A RAD-ChestCT volume: key `ct`, int16 HU, axes (z, y, x) in LPS index order."""
    with atomic_open(path, 'wb') as f:
        np.savez_compressed(f, ct=hu.astype(np.int16))
