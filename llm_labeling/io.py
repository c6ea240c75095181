"""Report readers and atomic writers for the labeling outputs (docs/architecture.md, section 3).

Readers turn CT-RATE's reports CSV, any CSV with chosen columns, or JSONL into `Report` rows in
input order; `unique_texts` groups identical texts so each is labelled once and fanned out.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ctcommon import atomic
from ctcommon.atomic import atomic_open as atomic_open  # re-exported: the labeler's writers

_logger = logging.getLogger(__name__)

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

# CT-RATE writes this where a section is empty; it is not report text.
PLACEHOLDERS = frozenset({'not given.', 'not given', ''})
# Column guesses when the user names none, tried in order.
CTRATE_ID, CTRATE_TEXT = 'VolumeName', ('Findings_EN', 'Impressions_EN')
ID_GUESSES = ('report_id', 'VolumeName', 'AccessionNo', 'id', 'study_id', 'NoteAcc_DEID')
TEXT_GUESSES = (('Findings_EN', 'Impressions_EN'), ('report_text',), ('text',), ('report',))
FORMATS = ('auto', 'csv', 'jsonl')


@dataclass(frozen=True)
class Report:
    """One input row: its id and the text a labeler sees (sections joined by a newline)."""

    report_id: str
    text: str


def _join_sections(values: Sequence[object]) -> str:
    parts = []
    for value in values:
        text = '' if value is None else str(value).strip()
        if text.lower() not in PLACEHOLDERS:
            parts.append(text)
    return '\n'.join(parts)


def _pick_columns(
    path: Path, fields: Sequence[str], id_column: str | None, text_columns: Sequence[str] | None
) -> tuple[str, tuple[str, ...]]:
    """The id and text columns: the user's choice (checked), else the first known layout."""
    if id_column is None:
        id_column = next((c for c in ID_GUESSES if c in fields), None)
        if id_column is None:
            raise ValueError(
                f'{path}: cannot tell which column holds the report id; pass --id-column '
                f'(columns: {", ".join(fields)})'
            )
    if not text_columns:
        text_columns = next((g for g in TEXT_GUESSES if all(c in fields for c in g)), None)
        if text_columns is None:
            raise ValueError(
                f'{path}: cannot tell which columns hold the report text; pass --text-columns '
                f'(columns: {", ".join(fields)})'
            )
    missing = [c for c in (id_column, *text_columns) if c not in fields]
    if missing:
        raise ValueError(
            f'{path}: column(s) {", ".join(missing)} not found; columns are: {", ".join(fields)}'
        )
    return id_column, tuple(text_columns)


def _read_csv(
    path: Path, id_column: str | None, text_columns: Sequence[str] | None
) -> Iterator[tuple[int, dict]]:
    with path.open(newline='', encoding='utf-8-sig') as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ValueError(f'{path}: empty CSV, expected a header row')
        yield 0, {'__columns__': _pick_columns(path, reader.fieldnames, id_column, text_columns)}
        for line, row in enumerate(reader, start=2):
            yield line, row


def _read_jsonl(
    path: Path, id_column: str | None, text_columns: Sequence[str] | None
) -> Iterator[tuple[int, dict]]:
    columns = None
    with path.open(encoding='utf-8') as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{path}, line {line_no}: not valid JSON ({e.msg})') from None
            if not isinstance(row, dict):
                raise ValueError(f'{path}, line {line_no}: must be a JSON object, not {row!r:.60}')
            if columns is None:
                columns = _pick_columns(path, list(row), id_column, text_columns)
                yield 0, {'__columns__': columns}
            yield line_no, row


def read_reports(
    path: str | Path,
    id_column: str | None = None,
    text_columns: Sequence[str] | None = None,
    fmt: str = 'auto',
) -> list[Report]:
    """Read reports in file order.

    Args:
        path: CT-RATE reports CSV, any CSV, or JSONL (one object per line).
        id_column: column (or JSON key) of the report id; guessed from known layouts when None.
        text_columns: columns joined into the text; "Not given." placeholders are dropped.
        fmt: 'auto' (by suffix), 'csv' or 'jsonl'.

    Example:
        >>> reports = read_reports('validation_reports.csv')  # VolumeName, Findings_EN + Impressions_EN
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f'Report format must be one of {", ".join(FORMATS)}, not {fmt!r}')
    if not path.is_file():
        raise FileNotFoundError(f'Reports file {str(path)!r} does not exist')
    if fmt == 'auto':
        fmt = 'jsonl' if path.suffix.lower() in ('.jsonl', '.ndjson', '.json') else 'csv'
    rows = (_read_jsonl if fmt == 'jsonl' else _read_csv)(path, id_column, text_columns)
    reports: list[Report] = []
    seen: dict[str, int] = {}
    id_col, text_cols = None, ()
    for line, row in rows:
        if '__columns__' in row:
            id_col, text_cols = row['__columns__']
            continue
        report_id = str(row.get(id_col) or '').strip()
        if not report_id:
            raise ValueError(f'{path}, line {line}: empty report id in column {id_col!r}')
        if report_id in seen:
            raise ValueError(
                f'{path}, line {line}: report id {report_id!r} already appeared on line '
                f'{seen[report_id]}; ids must be unique'
            )
        seen[report_id] = line
        reports.append(Report(report_id, _join_sections([row.get(c) for c in text_cols])))
    _logger.info('Read %d reports from %s (id %s, text %s)', len(reports), path, id_col, text_cols)
    return reports


def unique_texts(reports: Sequence[Report]) -> dict[str, list[str]]:
    """Text -> report ids sharing it, in first-seen order (reconstructions of one scan share one)."""
    groups: dict[str, list[str]] = {}
    for report in reports:
        groups.setdefault(report.text, []).append(report.report_id)
    return groups


def write_json(path: str | Path, obj: object) -> None:
    atomic.write_json(path, obj, indent=2, sort_keys=False)
