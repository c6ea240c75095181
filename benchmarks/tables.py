"""Small id-indexed tables (labels, scores) read from CSV without pandas.

A benchmark joins a model's scores with a label table by volume id; both are "one id column, then
one numeric column per class". Keeping that in one tiny class lets every loader give the same
clear errors (file, row, column) and keeps the scoring layer free of a pandas dependency.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ctcommon.atomic import atomic_open

_logger = logging.getLogger(__name__)

# First-column names that mean "this is the id column" in the tables we read.
ID_COLUMNS = ('VolumeName', 'volume_id', 'report_id', 'NoteAcc_DEID', 'AccessionNo', 'id')
_CTRATE_VOLUME = re.compile(r'^(?P<scan>(train|valid|test)_\d+_[A-Za-z]+)_\d+$')
_EXTENSIONS = ('.nii.gz', '.nii', '.npz', '.mha', '.nrrd')


@dataclass
class Table:
    """`values[i, j]` is the number for `ids[i]` and `columns[j]`; NaN marks an empty cell."""

    ids: list[str]
    columns: list[str]
    values: np.ndarray
    source: str = '<memory>'

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.shape != (len(self.ids), len(self.columns)):
            raise ValueError(
                f'{self.source}: values must have shape ({len(self.ids)}, {len(self.columns)}), '
                f'not {self.values.shape}'
            )
        seen: set[str] = set()
        dupes = [i for i in self.ids if i in seen or seen.add(i)]
        if dupes:
            raise ValueError(f'{self.source}: ids must be unique, not repeated: {dupes[:5]}')

    def __len__(self) -> int:
        return len(self.ids)

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise KeyError(f'{self.source}: no column {name!r}. Columns: {self.columns}')
        return self.values[:, self.columns.index(name)]

    def select(
        self, ids: Sequence[str] | None = None, columns: Sequence[str] | None = None
    ) -> Table:
        """Rows and columns in the order given; a missing id or column is an error naming it."""
        row_idx = np.arange(len(self.ids))
        if ids is not None:
            where = {v: k for k, v in enumerate(self.ids)}
            missing = [i for i in ids if i not in where]
            if missing:
                raise KeyError(f'{self.source}: {len(missing)} ids not found, e.g. {missing[:5]}')
            row_idx = np.array([where[i] for i in ids], dtype=int)
        col_idx = np.arange(len(self.columns))
        if columns is not None:
            missing = [c for c in columns if c not in self.columns]
            if missing:
                raise KeyError(
                    f'{self.source}: columns {missing} not found. Columns: {self.columns}'
                )
            col_idx = np.array([self.columns.index(c) for c in columns], dtype=int)
        return Table(
            ids=[self.ids[i] for i in row_idx],
            columns=[self.columns[j] for j in col_idx],
            values=self.values[np.ix_(row_idx, col_idx)],
            source=self.source,
        )


def _parse_cell(text: str, path: str, row: int, column: str) -> float:
    text = text.strip()
    if text == '' or text.lower() in ('nan', 'na'):
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f'{path}: row {row}, column {column!r} must be a number or empty, not {text!r}'
        ) from None


def read_table(
    path: str | os.PathLike,
    id_column: str | None = None,
    columns: Iterable[str] | None = None,
) -> Table:
    """Read a CSV whose id column (named, or the first column) is followed by numeric columns.

    Args:
        path: the CSV file.
        id_column: the id column's name; by default the first column.
        columns: read only these numeric columns (others may hold text and are ignored).
    """
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f'Table {path!r} does not exist')
    with open(path, encoding='utf-8', newline='') as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f'{path}: the file is empty; it must have a header row') from None
        rows = [r for r in reader if r]
    if header and header[0] == '':
        header[0] = 'id'  # pandas' unnamed index column
    id_column = id_column or header[0]
    if id_column not in header:
        raise ValueError(f'{path}: id column {id_column!r} not in the header {header}')
    id_pos = header.index(id_column)
    wanted = list(columns) if columns is not None else [h for h in header if h != id_column]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ValueError(f'{path}: columns {missing} not found. Columns: {header}')
    pos = [header.index(c) for c in wanted]
    ids, values = [], np.empty((len(rows), len(wanted)))
    for r, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(
                f'{path}: row {r + 2} has {len(row)} cells, the header has {len(header)}'
            )
        ids.append(row[id_pos].strip())
        values[r] = [_parse_cell(row[p], path, r + 2, header[p]) for p in pos]
    return Table(ids=ids, columns=wanted, values=values, source=path)


def write_table(table: Table, path: str | os.PathLike, id_column: str = 'VolumeName') -> None:
    """Written atomically (`ctcommon.atomic`): a reader never sees half a table."""
    with atomic_open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow([id_column, *table.columns])
        for i, row in zip(table.ids, table.values, strict=True):
            writer.writerow([i, *('' if math.isnan(v) else repr(float(v)) for v in row)])


def strip_extension(volume_id: str) -> str:
    for ext in _EXTENSIONS:
        if volume_id.endswith(ext):
            return volume_id[: -len(ext)]
    return volume_id


def scan_id(volume_id: str) -> str:
    """CT-RATE `valid_53_a_1.nii.gz` -> `valid_53_a`; any other id is its own scan."""
    stem = strip_extension(volume_id)
    match = _CTRATE_VOLUME.match(stem)
    return match.group('scan') if match else stem


def normalise_id(volume_id: str) -> str:
    """Ids match with or without a file extension (`valid_1_a_1` == `valid_1_a_1.nii.gz`)."""
    return strip_extension(volume_id.strip())


def align(scores: Table, labels: Table, allow_missing: bool = False) -> tuple[Table, Table]:
    """Rows of both tables for the ids they share, in the label table's order.

    A labelled volume without a score is an error unless `allow_missing` (a benchmark that
    silently drops volumes is not comparable); scored volumes without labels are ignored.
    """
    score_where = {normalise_id(i): k for k, i in enumerate(scores.ids)}
    keep, missing = [], []
    for k, i in enumerate(labels.ids):
        (keep if normalise_id(i) in score_where else missing).append(k)
    if missing and not allow_missing:
        names = [labels.ids[k] for k in missing[:5]]
        raise ValueError(
            f'{len(missing)} of {len(labels)} labelled volumes in {labels.source} have no row in '
            f'{scores.source}, e.g. {names}; pass allow_missing to score only the shared ones'
        )
    if missing:
        _logger.warning('%d labelled volumes have no scores; scoring %d', len(missing), len(keep))
    if not keep:
        raise ValueError(f'{scores.source} and {labels.source} share no volume ids')
    extra = len(scores) - len(keep)
    if extra > 0:
        _logger.info('%d scored volumes have no labels and are ignored', extra)
    ids = [labels.ids[k] for k in keep]
    s_rows = [score_where[normalise_id(i)] for i in ids]
    s = Table(ids, scores.columns, scores.values[s_rows], scores.source)
    lab = Table(ids, labels.columns, labels.values[keep], labels.source)
    return s, lab
