"""The files a run leaves next to its cache: failures (CSV + JSON), summary JSON and the QC report."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from ctcommon.atomic import write_text

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


def write_failures(paths: dict[str, str], failures: list[dict[str, Any]]) -> None:
    rows = [{k: str(f.get(k, '')) for k in FAILURE_COLUMNS} for f in failures]
    text = io.StringIO(newline='')
    writer = csv.DictWriter(text, fieldnames=FAILURE_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(paths['failures_csv'], text.getvalue())
    write_text(paths['failures_json'], json.dumps(rows, indent=2) + '\n')


def write_reports(
    out: Path,
    summary: dict[str, Any],
    failures: list[dict],
    qc_cfg: dict,
    cache_written: bool = True,
) -> dict[str, str]:
    """Failures, QC and summary files for the cache at `out`; returns their paths.

    The failures report comes first: on a full disk it is the one a user needs. Without a new
    cache (`cache_written=False`) there is nothing to QC.
    """
    from preprocessing.qc import write_qc

    paths = report_paths(out)
    write_failures(paths, failures)
    qc_written = cache_written and write_qc(
        out, paths['qc_json'], paths['qc_png'], samples=int(qc_cfg.get('samples', 8))
    )
    if not cache_written:
        paths.pop('qc_json')
    if not qc_written:
        paths.pop('qc_png')
    summary = {**summary, 'reports': paths}
    write_text(paths['summary'], json.dumps(summary, indent=2) + '\n')
    return paths
