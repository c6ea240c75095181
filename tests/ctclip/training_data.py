"""A tiny cohort for the data and training tests: a real HDF5 cache plus labels, reports, evidence.

Each of the first `n_visible` findings is rendered as a bright sphere at its own position, so a
tiny model can learn them in a few steps; the reports mention every finding's status.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from llm_labeling.schema import FINDINGS
from preprocessing.cache import CacheWriter
from preprocessing.recipes import RECIPES

SHAPE_ZYX = (20, 40, 40)
CROP_ZYX = (16, 32, 32)


def _render(labels: np.ndarray, rng: np.random.Generator, n_visible: int) -> np.ndarray:
    z, y, x = np.mgrid[: SHAPE_ZYX[0], : SHAPE_ZYX[1], : SHAPE_ZYX[2]]
    volume = rng.normal(-800, 30, SHAPE_ZYX)
    for k in range(n_visible):
        if labels[k] == 1:
            cz, cy, cx = 10, 10 + 20 * (k // 2), 10 + 20 * (k % 2)
            volume[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= 30] = 200
    return volume.astype(np.int16)


def make_cohort(
    root: Path, n_train: int = 24, n_valid: int = 8, seed: int = 0, n_visible: int = 4
) -> dict[str, Path]:
    """Write cache.h5, labels.csv, reports.csv and evidence.jsonl under `root`; return their paths."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    recipe = RECIPES['small'].replace(
        shape_zyx=SHAPE_ZYX, train_crop_zyx=CROP_ZYX, chunks_zyx=(10, 20, 20)
    )
    rows = []
    with CacheWriter(root / 'cache.h5', recipe) as writer:
        for split, count in (('train', n_train), ('valid', n_valid)):
            for p in range(count):
                volume_id = f'{split}_{p}_a_1'
                labels = np.zeros(len(FINDINGS), np.int64)
                labels[:n_visible] = rng.random(n_visible) < 0.5
                labels[n_visible] = -1 if p % 5 == 0 else 0  # some uncertain cells
                attrs = {
                    'patient_id': f'{split}_{p}',
                    'scan_id': f'{split}_{p}_a',
                    'split': split,
                    'spacing_zyx': [6.0, 3.0, 3.0],
                    'orientation': 'LPS',
                }
                writer.write(volume_id, _render(labels, rng, n_visible), attrs)
                rows.append((volume_id, labels))
    paths = {
        k: root / v
        for k, v in (
            ('cache', 'cache.h5'),
            ('labels', 'labels.csv'),
            ('reports', 'reports.csv'),
            ('evidence', 'evidence.jsonl'),
        )
    }
    with paths['labels'].open('w', newline='', encoding='utf-8') as f:
        w = csv.writer(f)
        w.writerow(['report_id', *FINDINGS])
        w.writerows([f'{v}.nii.gz', *lab.tolist()] for v, lab in rows)
    with (
        paths['reports'].open('w', newline='', encoding='utf-8') as f,
        paths['evidence'].open('w', encoding='utf-8') as ev,
    ):
        w = csv.writer(f)
        w.writerow(
            [
                'VolumeName',
                'ClinicalInformation_EN',
                'Technique_EN',
                'Findings_EN',
                'Impressions_EN',
            ]
        )
        for v, lab in rows:
            sentences, findings = [], []
            for k in range(n_visible):
                quote = f'{FINDINGS[k]} is seen.' if lab[k] == 1 else f'No {FINDINGS[k].lower()}.'
                sentences.append(quote)
                findings.append(
                    {
                        'finding': FINDINGS[k],
                        'status': 'present' if lab[k] == 1 else 'absent',
                        'quote': quote,
                    }
                )
            w.writerow(
                [f'{v}.nii.gz', 'Not given.', 'Not given.', ' '.join(sentences), 'Not given.']
            )
            ev.write(
                json.dumps(
                    {'report_id': f'{v}.nii.gz', 'schema_version': '1.0', 'findings': findings}
                )
                + '\n'
            )
    return paths
