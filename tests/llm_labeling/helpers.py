"""Helpers for the labeling tests: small report files and run configs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

REPORTS = [
    ('valid_1_a_1.nii.gz', 'Heart size is normal. No pleural effusion.', 'Not given.'),
    ('valid_1_a_2.nii.gz', 'Heart size is normal. No pleural effusion.', 'Not given.'),
    ('valid_2_a_1.nii.gz', 'A 6 mm nodule in the right upper lobe.', 'Pulmonary nodule.'),
    ('valid_3_a_1.nii.gz', 'Bilateral pleural effusion.', 'Cardiomegaly.'),
    ('valid_4_a_1.nii.gz', 'Ground-glass opacity in the left lower lobe.', 'Not given.'),
]


def write_ctrate_csv(path: Path, rows=REPORTS) -> Path:
    with path.open('w', encoding='utf-8', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['VolumeName', 'ClinicalInformation_EN', 'Findings_EN', 'Impressions_EN'])
        for vid, findings, impression in rows:
            writer.writerow([vid, 'Not given.', findings, impression])
    return path


def openai_cfg(reports: Path, out: Path, url: str, **extra) -> dict:
    cfg = {
        'reports': str(reports),
        'out_dir': str(out),
        'backend': 'openai',
        'model': 'test-model',
        'base_url': url,
        'progress': False,
        'timeout': 5.0,
        'retry': {'max_retries': 3, 'initial_delay': 0.01, 'max_delay': 2.0},
    }
    cfg.update(extra)
    return cfg


def read_labels(path: Path) -> dict[str, list[str]]:
    with path.open(encoding='utf-8', newline='') as f:
        rows = list(csv.reader(f))
    return {row[0]: row[1:] for row in rows[1:]}


def read_jsonl(path: Path) -> list[dict]:
    return [
        json.loads(line) for line in path.read_text(encoding='utf-8').splitlines() if line.strip()
    ]
