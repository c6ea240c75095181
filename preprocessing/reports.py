"""The files a run leaves next to its cache: failures (CSV + JSON), summary JSON and the QC report."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)

FAILURE_COLUMNS = ('volume_id', 'path', 'stage', 'reason')


def report_paths(out: Path) -> dict[str, str]:
    stem = out.with_suffix('')
    return {
        'failures_csv': f'{stem}.failures.csv',
        'failures_json': f'{stem}.failures.json',
        'summary': f'{stem}.summary.json',
        'qc_json': f'{stem}.qc.json',
        'qc_png': f'{stem}.qc.png',
    }


def _atomic_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    tmp.write_text(text, encoding='utf-8')
    os.replace(tmp, path)


def write_failures(paths: dict[str, str], failures: list[dict[str, Any]]) -> None:
    rows = [{k: str(f.get(k, '')) for k in FAILURE_COLUMNS} for f in failures]
    tmp = Path(paths['failures_csv'] + f'.tmp{os.getpid()}')
    with tmp.open('w', encoding='utf-8', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=FAILURE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, paths['failures_csv'])
    _atomic_text(paths['failures_json'], json.dumps(rows, indent=2) + '\n')


def write_reports(
    out: Path, summary: dict[str, Any], failures: list[dict], qc_cfg: dict
) -> dict[str, str]:
    """Failures, QC and summary files for the cache at `out`; returns their paths."""
    from preprocessing.qc import write_qc

    paths = report_paths(out)
    write_failures(paths, failures)
    qc_written = write_qc(
        out, paths['qc_json'], paths['qc_png'], samples=int(qc_cfg.get('samples', 8))
    )
    if not qc_written:
        paths.pop('qc_png')
    summary = {**summary, 'reports': paths}
    _atomic_text(paths['summary'], json.dumps(summary, indent=2) + '\n')
    return paths
