"""Cohort manifests: one row per volume (volume_id, path, patient_id, scan_id, split, format, ...).

Builders turn a CT-RATE tree, a RAD-ChestCT folder, or any folder of NIfTI files and DICOM series
into rows; `read_manifest` accepts a user's CSV. Paths in a CSV may be relative to the CSV's folder.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from ctcommon.atomic import atomic_open
from preprocessing.ctrate import GEOMETRY_COLUMNS, read_metadata, split_volume_name
from preprocessing.readers import is_nifti

_logger = logging.getLogger(__name__)

COLUMNS = ('volume_id', 'path', 'patient_id', 'scan_id', 'split', 'format', 'series_uid')
FORMATS = ('ct-rate', 'nifti', 'dicom', 'npz')
VERSIONS = ('v2', 'v1')
CTRATE_NAME = re.compile(r'^(train|valid|test)_\d+_[A-Za-z]+_\d+\.nii(\.gz)?$')
RADCHEST_SPLITS = {'trn': 'train', 'val': 'valid', 'tst': 'test'}
_NOT_DICOM = re.compile(
    r'\.(csv|txt|json|jsonl|md|png|jpg|h5|hdf5|npz|npy|nii|gz|yaml|yml|py)$', re.I
)


def _row(volume_id: str, path: Path, fmt: str, **extra: Any) -> dict[str, Any]:
    row = {
        'volume_id': volume_id,
        'path': str(path),
        'patient_id': volume_id,
        'scan_id': volume_id,
        'split': '',
        'format': fmt,
        'series_uid': '',
    }
    row.update({k: v for k, v in extra.items() if v is not None})
    return row


def _ctrate_root(folder: Path) -> Path | None:
    for root in (folder / 'dataset', folder):
        if any(
            (root / d).is_dir()
            for d in ('train', 'valid', 'test', 'train_fixed', 'valid_fixed', 'test_fixed')
        ):
            return root
    return None


def _no_chest(root: Path) -> set[str]:
    names: set[str] = set()
    for path in list(root.glob('no_chest_*.txt')) + list(root.parent.glob('no_chest_*.txt')):
        names.update(
            line.strip() for line in path.read_text(encoding='utf-8').splitlines() if line.strip()
        )
    return names


def from_ctrate_tree(
    folder: str | Path,
    prefer: str = 'v2',
    metadata: list[str | Path] | None = None,
    drop_no_chest: bool = True,
) -> list[dict[str, Any]]:
    """Rows for a CT-RATE tree, one per VolumeName, from the preferred file version when both exist."""
    if prefer not in VERSIONS:
        raise ValueError(f'prefer must be one of {VERSIONS}, not {prefer!r}')
    folder = Path(folder)
    root = _ctrate_root(folder)
    if root is None:
        raise ValueError(
            f'{str(folder)!r} is not a CT-RATE tree (no train/ valid/ test/ or *_fixed/ folders)'
        )
    found: dict[str, dict[str, Path]] = {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        name = split_dir.name
        base, fixed = name.removesuffix('_fixed'), name.endswith('_fixed')
        if base not in ('train', 'valid', 'test'):
            continue
        for path in sorted(split_dir.rglob('*.nii*')):
            if CTRATE_NAME.match(path.name):
                found.setdefault(path.name, {})['v2' if fixed else 'v1'] = path
    meta_paths = metadata or sorted((root / 'metadata').glob('*.csv'))
    meta = read_metadata(list(meta_paths)) if meta_paths else {}
    skip = _no_chest(root) if drop_no_chest else set()
    rows = []
    for name in sorted(found):
        if name in skip:
            continue
        versions = found[name]
        version = prefer if prefer in versions else next(iter(versions))
        extra = {c: meta[name][c] for c in GEOMETRY_COLUMNS if name in meta and c in meta[name]}
        rows.append(_row(name, versions[version], 'ct-rate', **split_volume_name(name), **extra))
    if skip:
        _logger.info(
            'dropped %d non-chest volumes listed in no_chest_*.txt', len(set(found) & skip)
        )
    return rows


def _nifti_id(path: Path) -> tuple[str, dict[str, str]]:
    if CTRATE_NAME.match(path.name):
        return path.name, split_volume_name(path.name)
    name = path.name
    for suffix in ('.nii.gz', '.nii'):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name, {}


def _dicom_rows(folder: Path, root: Path) -> list[dict[str, Any]]:
    from preprocessing.readers import dicom_series, unplaced_dicom_files

    series = dicom_series(folder)
    rel = os.path.relpath(folder, root)
    base = root.name if rel == '.' else rel.replace(os.sep, '__')
    if not series and unplaced_dicom_files(folder, series):  # only broken slices: fail, not vanish
        return [_row(base, folder, 'dicom')]
    rows = []
    for uid in sorted(series):  # an empty SeriesInstanceUID is keyed EMPTY_SERIES_UID
        vid = base if len(series) == 1 else f'{base}__{uid}'
        rows.append(_row(vid, folder, 'dicom', series_uid=uid))
    return rows


def _path_id(path: Path, root: Path, keep_suffix: bool) -> str:
    """The path relative to the input folder, `/` -> `__`, with or without its extension."""
    rel = Path(os.path.relpath(path, root)) if path != root else Path(path.name)
    name = rel.name
    if not keep_suffix:
        for suffix in ('.nii.gz', '.nii', '.npz'):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
    return '__'.join((*rel.parent.parts, name))


def _rename(row: dict[str, Any], vid: str) -> None:
    for key in ('patient_id', 'scan_id'):
        if row.get(key) == row['volume_id']:
            row[key] = vid
    row['volume_id'] = vid


def disambiguate_ids(rows: list[dict[str, Any]], root: Path) -> list[dict[str, Any]]:
    """Give files whose ids collide (`s0001/ct.nii.gz`, `s0002/ct.nii.gz`) distinct, stable ids.

    Rule (docs/architecture.md, "Volume ids"): every row of a colliding id takes its path relative
    to the input folder with `/` -> `__` and the extension dropped (`s0001__ct`); rows still
    colliding keep the extension (`s0001__ct.nii.gz`); any left after that get `~2`, `~3`, ... in
    path order. Rows that did not collide keep their id, and the same folder always gives the
    same ids, so resuming works.
    """
    steps = (
        lambda r: _path_id(Path(r['path']), root, keep_suffix=False),
        lambda r: _path_id(Path(r['path']), root, keep_suffix=True),
    )
    for step in steps:
        counts = Counter(r['volume_id'] for r in rows)
        clashing = [r for r in rows if counts[r['volume_id']] > 1]
        if not clashing:
            return rows
        for row in clashing:
            if row['format'] == 'dicom':
                continue  # a series id is already its folder's relative path
            _rename(row, step(row))
    seen: Counter = Counter()
    for row in sorted(rows, key=lambda r: (r['path'], r.get('series_uid', ''))):
        seen[row['volume_id']] += 1
        if seen[row['volume_id']] > 1:
            _rename(row, f'{row["volume_id"]}~{seen[row["volume_id"]]}')
    return rows


def from_folder(folder: str | Path) -> list[dict[str, Any]]:
    """Every NIfTI file, RAD-ChestCT `.npz` and DICOM series under `folder` (recursively)."""
    folder = Path(folder)
    rows: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        here = Path(dirpath)
        maybe_dicom = False
        for name in sorted(filenames):
            path = here / name
            if is_nifti(name):
                vid, extra = _nifti_id(path)
                rows.append(_row(vid, path, 'nifti', **extra))
            elif name.lower().endswith('.npz'):
                prefix = name[:3].lower()
                rows.append(_row(path.stem, path, 'npz', split=RADCHEST_SPLITS.get(prefix, '')))
            elif not name.startswith('.') and not _NOT_DICOM.search(name):
                maybe_dicom = True
        if maybe_dicom:
            rows.extend(_dicom_rows(here, folder))
    clashes = len(rows) - len({r['volume_id'] for r in rows})
    if clashes:
        _logger.info('%d file names repeat: their ids come from their relative paths', clashes)
    return disambiguate_ids(rows, folder)


def build_manifest(
    source: str | Path,
    metadata: list[str | Path] | None = None,
    prefer: str = 'v2',
    drop_no_chest: bool = True,
) -> list[dict[str, Any]]:
    """Rows from a manifest CSV, a CT-RATE tree, or any folder of volumes.

    Folder layouts never repeat an id (`disambiguate_ids`); a manifest CSV may, and
    `split_duplicates` turns the repeats into listed failures.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f'Input {str(source)!r} does not exist')
    if source.is_file() and source.suffix.lower() == '.csv':
        rows = read_manifest(source)
    elif source.is_dir() and _ctrate_root(source) is not None:
        rows = from_ctrate_tree(source, prefer, metadata, drop_no_chest)
    elif source.is_dir():
        rows = from_folder(source)
    else:
        rows = [_row(_nifti_id(source)[0], source, 'nifti' if is_nifti(source) else 'npz')]
    if metadata and not (source.is_dir() and _ctrate_root(source) is not None):
        rows = attach_metadata(rows, read_metadata(list(metadata)))
    for row in rows:  # absolute paths: resume checks and source_path must not depend on the cwd
        row['path'] = str(Path(row['path']).absolute())
    return rows


def attach_metadata(
    rows: list[dict[str, Any]], meta: dict[str, dict[str, str]]
) -> list[dict[str, Any]]:
    """Copy CT-RATE geometry columns onto rows whose volume_id is a metadata VolumeName."""
    out = []
    for row in rows:
        row = dict(row)
        if row['volume_id'] in meta:
            m = meta[row['volume_id']]
            row.update({c: m[c] for c in GEOMETRY_COLUMNS if c in m})
            if row.get('format') == 'nifti':
                row['format'] = 'ct-rate'
        out.append(row)
    return out


def split_duplicates(
    rows: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The first row of each volume id, and a failure record for every later repeat.

    A repeated id in a user's manifest is that row's problem, not the run's: the first row is
    processed, the others are listed in the failures report (and fail the exit status).
    """
    seen: dict[str, str] = {}
    unique, failures = [], []
    for row in rows:
        vid = row['volume_id']
        if vid in seen:
            reason = f'volume id {vid!r} appears twice in the manifest (first row: {seen[vid]})'
            failures.append(
                {
                    'volume_id': vid,
                    'path': str(row['path']),
                    'stage': 'manifest',
                    'reason': reason,
                    'status': 'failed',
                }
            )
        else:
            seen[vid] = str(row['path'])
            unique.append(row)
    return unique, failures


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    with path.open(newline='', encoding='utf-8') as f:
        reader = csv.DictReader(f)
        missing = {'volume_id', 'path'} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f'Manifest {str(path)!r} must have columns volume_id and path; missing {sorted(missing)}'
            )
        rows = []
        for number, raw in enumerate(reader, start=2):
            if not raw['volume_id'] or not raw['path']:
                raise ValueError(
                    f'Manifest {str(path)!r} line {number}: volume_id and path must not be empty'
                )
            full = Path(raw['path'])
            if not full.is_absolute():
                full = path.parent / full
            row = _row(raw['volume_id'], full, raw.get('format') or '')
            row.update({k: v for k, v in raw.items() if k not in ('path',) and v not in (None, '')})
            fmt = row.get('format') or ''
            if fmt and fmt not in FORMATS:
                raise ValueError(
                    f'Manifest {str(path)!r} line {number}: format must be one of {FORMATS}, not {fmt!r}'
                )
            rows.append(row)
    return rows


def write_manifest(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    columns = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
    with atomic_open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, '') for c in columns})
    return path
