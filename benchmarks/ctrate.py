"""CT-RATE tables: the labels CSV, the reports CSV, the non-chest list, and where they live.

Layout of a CT-RATE download (`dataset/` may be the root itself):
`multi_abnormality_labels/{train,valid}_predicted_labels.csv`,
`radiology_text_reports/{train,validation}_reports.csv`, `no_chest_{train,valid}.txt`.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from benchmarks.tables import Table, normalise_id, read_table
from ctclip.data.text import report_text as training_report_text
from llm_labeling.schema import FINDINGS

_logger = logging.getLogger(__name__)

SPLITS = ('valid', 'train')
_LONG = {'valid': 'validation', 'train': 'train'}
REPORT_SECTIONS = ('Findings_EN', 'Impressions_EN')


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f'CT-RATE split must be one of {SPLITS}, not {split!r}')
    return split


def _dataset_dir(root: str | Path) -> Path:
    root = Path(root)
    return root / 'dataset' if (root / 'dataset').is_dir() else root


def labels_path(root: str | Path, split: str = 'valid') -> Path:
    return (
        _dataset_dir(root)
        / 'multi_abnormality_labels'
        / f'{_check_split(split)}_predicted_labels.csv'
    )


def reports_path(root: str | Path, split: str = 'valid') -> Path:
    return (
        _dataset_dir(root) / 'radiology_text_reports' / f'{_LONG[_check_split(split)]}_reports.csv'
    )


def no_chest_path(root: str | Path, split: str = 'valid') -> Path:
    return _dataset_dir(root) / f'no_chest_{_check_split(split)}.txt'


def load_labels(path: str | Path) -> Table:
    """A CT-RATE-style labels CSV (`VolumeName` or `report_id`, then the 18 FINDINGS).

    Only the FINDINGS columns present are kept, in FINDINGS order; extra columns are ignored.
    """
    with open(path, encoding='utf-8', newline='') as f:
        header = next(csv.reader(f), [])
    present = [c for c in FINDINGS if c in header]
    if not present:
        raise ValueError(
            f'{path}: no CT-RATE finding columns in the header {header[:6]}...; expected {list(FINDINGS)}'
        )
    missing = [c for c in FINDINGS if c not in header]
    if missing:
        _logger.warning('%s lacks %d CT-RATE classes: %s', path, len(missing), missing)
    return read_table(path, id_column=header[0], columns=present)


def read_labels(path: str | Path) -> Table:
    """Any label table: CT-RATE-style ones keep only their finding columns (text columns skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'Labels file {str(path)!r} does not exist')
    with path.open(newline='', encoding='utf-8') as f:
        header = next(csv.reader(f), [])
    if set(FINDINGS) & set(header):
        return load_labels(path)
    return read_table(path)


def report_text(row: dict[str, str]) -> str:
    """The same report text the model was trained on (impression first, 'Not given.' dropped)."""
    return training_report_text(row.get('Findings_EN'), row.get('Impressions_EN'))


def load_reports(path: str | Path) -> dict[str, str]:
    """VolumeName -> report text from a CT-RATE reports CSV (or any `id, text` CSV)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'Reports file {str(path)!r} does not exist')
    with path.open(newline='', encoding='utf-8') as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if not fields:
            raise ValueError(
                f'{path}: empty file; expected a header with VolumeName and report columns'
            )
        id_col = fields[0]
        sections = all(k in fields for k in REPORT_SECTIONS)
        text_col = next((c for c in ('report_text', 'text', 'report') if c in fields), None)
        if not sections and text_col is None:
            raise ValueError(
                f'{path}: needs the columns {list(REPORT_SECTIONS)} or one of report_text/text/report; has {fields}'
            )
        out = {}
        for row in reader:
            out[normalise_id(row[id_col])] = (
                report_text(row) if sections else (row[text_col] or '').strip()
            )
    return out


def load_no_chest(path: str | Path) -> set[str]:
    """Volume names listed as non-chest (to drop); an absent file means none."""
    path = Path(path)
    if not path.is_file():
        return set()
    return {normalise_id(line) for line in path.read_text(encoding='utf-8').split() if line.strip()}
