"""Synthetic cohort speed: `ctclip synth --small --n 200 --workers 2` must take under 3 minutes.

There is no outside baseline for a phantom generator, so the row's ratio is the target time over
the measured time (>= 1 passes). CPU seconds (all processes) are recorded too: on a shared
machine the wall time says more about the neighbours than about the generator.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from benchmarks.perf.common import Row, peak_rss_mib

AREA = 'synth'
TARGET_S = 180.0
N_SCANS = 200


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run(quick: bool = False) -> list[Row]:
    from synth import generate_cohort

    n = 20 if quick else N_SCANS
    with tempfile.TemporaryDirectory() as tmp:
        cpu0, start = _cpu_seconds(), time.perf_counter()
        root = generate_cohort(Path(tmp) / 'c', n=n, seed=0, small=True, workers=2, progress=False)
        wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
        volumes = sum(1 for _ in root.rglob('*_fixed/*/*/*.nii.gz'))
        size_mib = sum(p.stat().st_size for p in root.rglob('*') if p.is_file()) / 2**20
    scale = N_SCANS / n  # quick runs extrapolate to 200 scans
    return [
        Row(
            AREA,
            f'{n} scans ({volumes} volumes x 2 versions), --small, 2 workers',
            wall,
            's',
            ratio=TARGET_S / (wall * scale),
            target=f'200 scans < {TARGET_S:.0f} s on 2 cores',
            target_ratio=1.0,
            notes=f'{cpu:.0f} CPU s in all processes, {size_mib:.0f} MiB written, '
            f'peak RSS {peak_rss_mib(children=True):.0f} MiB per worker',
            extra={'cpu_s': cpu, 'volumes': volumes, 'mib': size_mib},
        )
    ]
