"""ReXGroundingCT's file layout: one dataset JSON plus one multi-finding mask file per CT.

The JSON (`dataset.json`, or `MICCAI_challenge_dataset.json`) maps each split (`train`, `val`,
`test`) to a list of items, or is a bare list of items:

    {"name": "train_1741_b_2.nii.gz",                 # the CT-RATE VolumeName
     "findings": {"0": "Irregular nodular consolidation ...", "1": "..."},
     "categories": {"0": "2b", "1": "2d"}}            # ontology codes 1a-1f, 2a-2h (optional)

Other keys of an item are kept in `GroundingCase.extra`. The masks of item `name` live in
`MASKS/name`: a NIfTI whose finding axis holds one binary mask per finding key, in key order.
The finding axis is the first or the last array axis (both occur in practice); it is the one whose
length equals the number of findings, the last one when both do, and a 3D file is one finding.
Our own writer (`write_masks`) puts it last, so the file's affine places the masks over the CT in
ITK-SNAP and 3D Slicer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ctcommon.atomic import write_json
from preprocessing.inverse import write_nifti

_logger = logging.getLogger(__name__)

SPLITS = ('train', 'val', 'test')


class GroundingDataError(ValueError):
    """A dataset or mask file that does not follow the layout; the message names the file."""


@dataclass
class GroundingFinding:
    key: str
    text: str
    category: str = ''


@dataclass
class GroundingCase:
    name: str
    split: str
    findings: list[GroundingFinding]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def patient(self) -> str:
        """CT-RATE patient id (`train_12_a_1.nii.gz` -> `train_12`): the bootstrap's unit."""
        parts = self.name.split('_')
        return '_'.join(parts[:2]) if len(parts) >= 4 else self.name


def _item(path: Path, raw: Any, split: str, where: str) -> GroundingCase:
    if not isinstance(raw, dict) or 'name' not in raw or 'findings' not in raw:
        raise GroundingDataError(
            f"{path}: {where} must be an object with 'name' and 'findings', not {str(raw)[:80]}"
        )
    findings = raw['findings']
    if not isinstance(findings, dict) or not all(isinstance(v, str) for v in findings.values()):
        raise GroundingDataError(
            f"{path}: {where} 'findings' must map keys to texts, not {str(findings)[:80]}"
        )
    categories = raw.get('categories') or {}
    if not isinstance(categories, dict):
        raise GroundingDataError(
            f"{path}: {where} 'categories' must be an object, not {str(categories)[:80]}"
        )
    keys = sorted(findings, key=lambda k: (0, int(k)) if str(k).isdigit() else (1, str(k)))
    extra = {k: v for k, v in raw.items() if k not in ('name', 'findings', 'categories')}
    return GroundingCase(
        name=str(raw['name']),
        split=split,
        findings=[GroundingFinding(str(k), findings[k], str(categories.get(k, ''))) for k in keys],
        extra=extra,
    )


def read_dataset(path: str | Path, splits: Sequence[str] | None = None) -> list[GroundingCase]:
    """Every case of the JSON (or of the chosen splits), in file order."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise GroundingDataError(f'{path}: not a readable JSON file ({exc})') from exc
    if isinstance(data, list):
        groups = {'': data}
    elif isinstance(data, dict):
        groups = {k: v for k, v in data.items() if isinstance(v, list)}
        if not groups:
            raise GroundingDataError(
                f'{path}: must map splits ({", ".join(SPLITS)}) to lists of items, '
                f'not keys {sorted(data)[:8]}'
            )
    else:
        raise GroundingDataError(f'{path}: must be a list or an object, not {type(data).__name__}')
    if splits is not None:
        missing = [s for s in splits if s not in groups]
        if missing:
            raise GroundingDataError(
                f'{path}: split(s) {missing} not found; the file has {sorted(groups)}'
            )
        groups = {s: groups[s] for s in splits}
    cases, seen = [], set()
    for split, items in groups.items():
        for i, raw in enumerate(items):
            case = _item(path, raw, split, f'item {i} of {split or "the list"}')
            if case.name in seen:
                raise GroundingDataError(f'{path}: volume {case.name!r} is listed twice')
            seen.add(case.name)
            cases.append(case)
    return cases


@dataclass
class MaskVolume:
    """A case's masks, (F, X, Y, Z) bool in the file's voxel order, and the file's affine."""

    masks: np.ndarray
    affine: np.ndarray
    path: Path

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.masks.shape[1:])  # type: ignore[return-value]


def read_masks(path: str | Path, n_findings: int) -> MaskVolume:
    """Read one mask file (see the module docstring for the finding axis)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: mask file not found')
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises many types for a broken file
        raise GroundingDataError(f'{path}: not a readable NIfTI file ({exc})') from exc
    if data.ndim == 5 and data.shape[3] == 1:  # (X, Y, Z, 1, F): NIfTI's vector-valued layout
        data = data[:, :, :, 0, :]
    if data.ndim == 3 and n_findings == 1:
        masks = data[None]
    elif data.ndim == 4 and data.shape[-1] == n_findings:
        masks = np.moveaxis(data, -1, 0)
    elif data.ndim == 4 and data.shape[0] == n_findings:
        masks = data
    else:
        raise GroundingDataError(
            f'{path}: must hold {n_findings} finding mask(s) on its first or last axis, '
            f'not shape {list(data.shape)}'
        )
    return MaskVolume(np.asarray(masks) > 0, np.asarray(image.affine, float), path)


def write_masks(path: str | Path, masks: np.ndarray, affine: np.ndarray) -> Path:
    """Write (F, X, Y, Z) binary masks as one uint8 NIfTI, finding axis last, atomically."""
    masks = np.asarray(masks)
    if masks.ndim != 4:
        raise ValueError(f'masks must be (F, X, Y, Z), not shape {list(masks.shape)}')
    data = np.ascontiguousarray(np.moveaxis(masks > 0, 0, -1).astype(np.uint8))
    image = nib.Nifti1Image(data, np.asarray(affine, float))
    return write_nifti(path, image)


def write_dataset(path: str | Path, cases: Sequence[GroundingCase]) -> Path:
    """The JSON of `cases`, grouped by split (official layout), written atomically."""
    out: dict[str, list] = {}
    for case in cases:
        item = {
            'name': case.name,
            'findings': {f.key: f.text for f in case.findings},
            'categories': {f.key: f.category for f in case.findings},
            **case.extra,
        }
        out.setdefault(case.split or 'test', []).append(item)
    return write_json(path, out, newline=False, indent=1)  # re-read before the rename
