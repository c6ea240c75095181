"""Grounding truth of the synthetic cohort, in ReXGroundingCT's layout.

For every CT-RATE-layout volume with a present finding, `grounding/masks/<VolumeName>` holds one
binary mask per finding in the volume's native grid (the voxels the renderer set, with the `_fixed`
volume's affine; finding axis last), and `grounding/dataset.json` lists it as
`{"name", "findings": {"0": <the report sentence describing it>}, "categories": {"0": <finding>}}`
under `train`, `val` or `test` (ReXGroundingCT's split names; our `valid` patients are `val`). The masks are
extra outputs: the voxels, reports and random streams of the cohort do not change.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from ctcommon.atomic import write_json

_logger = logging.getLogger(__name__)

FOLDER = 'grounding'
SPLIT_NAMES = {'train': 'train', 'valid': 'val', 'test': 'test'}


def mask_path(root: Path, name: str) -> Path:
    return Path(root) / FOLDER / 'masks' / name


def grounding_item(
    name: str, split: str, masks: dict[str, np.ndarray], sentences: dict[str, str], order
) -> tuple[dict, list[np.ndarray]] | None:
    """The dataset item and its masks (in key order) of one volume; None when nothing is shown."""
    keys = [f for f in order if f in sentences and masks.get(f) is not None and masks[f].any()]
    if not keys:
        return None
    item = {
        'name': name,
        'split': SPLIT_NAMES.get(split, split),
        'findings': {str(i): sentences[f] for i, f in enumerate(keys)},
        'categories': {str(i): f for i, f in enumerate(keys)},
    }
    return item, [masks[f] for f in keys]


def write_masks(root: Path, name: str, masks: list[np.ndarray], spacing_zyx, ipp_xyz) -> Path:
    """(z, y, x) masks as one uint8 NIfTI (X, Y, Z, F) with the `_fixed` volume's LPS affine."""
    from synth.layouts import save_nifti_gz

    data = np.stack([np.asarray(m, bool).transpose(2, 1, 0) for m in masks], axis=-1)
    sz, sy, sx = (float(s) for s in spacing_zyx)
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [-ipp_xyz[0], -ipp_xyz[1], ipp_xyz[2]]
    image = nib.Nifti1Image(np.ascontiguousarray(data.astype(np.uint8)), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path = mask_path(root, name)
    save_nifti_gz(image, path)
    return path


def write_dataset(root: Path, records: list[dict]) -> Path | None:
    """`grounding/dataset.json` from the scans' part records (file order: scan, then volume)."""
    out: dict[str, list] = {'train': [], 'val': []}
    for record in records:
        for item in record.get('grounding', []):
            item = dict(item)
            out.setdefault(item.pop('split'), []).append(item)
    if not any(out.values()):
        return None
    return write_json(Path(root) / FOLDER / 'dataset.json', out, indent=1)
