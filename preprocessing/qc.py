"""Quality control: per-volume intensity statistics (JSON) and a PNG of mid-slices for a sample.

The statistics are computed by the worker while the array is in memory and stored as the
`qc_stats` attribute, so the QC JSON of a 50,000-volume cache costs only attribute reads. The PNG
shows axial, coronal and sagittal mid-slices in the recipe's window, labelled with the patient's
sides, so a person sees at a glance whether orientation and windowing are right.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ctcommon.atomic import atomic_path, write_text

_logger = logging.getLogger(__name__)

LUNG_HU = (-950, -700)
MIN_LUNG_FRACTION = 0.01


def volume_stats(array: np.ndarray) -> dict[str, float]:
    """Cheap HU statistics of one cached array (strided, a few ms)."""
    sample = array[::2, ::2, ::2]
    p1, p50, p99 = np.percentile(sample, [1, 50, 99])
    lung = np.count_nonzero((sample >= LUNG_HU[0]) & (sample <= LUNG_HU[1]))
    return {
        'p1_hu': float(p1),
        'p50_hu': float(p50),
        'p99_hu': float(p99),
        'air_fraction': round(float(np.count_nonzero(sample < -950) / sample.size), 4),
        'lung_fraction': round(float(lung / sample.size), 4),
        'body_fraction': round(float(np.count_nonzero(sample > -500) / sample.size), 4),
    }


def flags(stats: dict[str, float]) -> list[str]:
    out = []
    if stats.get('lung_fraction', 1.0) < MIN_LUNG_FRACTION:
        out.append('little or no lung on the grid: not a chest CT, or the body is off-centre')
    if stats.get('body_fraction', 1.0) < 0.02:
        out.append('almost no body on the grid')
    return out


def _windowed(slice_: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return np.clip((slice_.astype(np.float32) - lo) / (hi - lo), 0, 1)


def _plot(
    path: str,
    volumes: list[tuple[str, np.ndarray]],
    spacing: tuple,
    window: tuple,
    orientation: str,
) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    dz, dy, dx = spacing
    left, right = ('R', 'L') if orientation == 'LPS' else ('L', 'R')
    fig, axes = plt.subplots(len(volumes), 3, figsize=(9, 3 * len(volumes)), squeeze=False)
    for row, (vid, vol) in enumerate(volumes):
        d, h, w = vol.shape
        views = [
            ('axial', vol[d // 2], dy / dx, (left, right)),
            ('coronal', vol[::-1, h // 2, :], dz / dx, (left, right)),
            (
                'sagittal',
                vol[::-1, :, w // 2],
                dz / dy,
                ('A', 'P') if orientation == 'LPS' else ('P', 'A'),
            ),
        ]
        for col, (name, image, aspect, sides) in enumerate(views):
            ax = axes[row][col]
            ax.imshow(_windowed(image, window), cmap='gray', vmin=0, vmax=1, aspect=aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.02, 0.5, sides[0], color='yellow', transform=ax.transAxes, va='center')
            ax.text(
                0.98, 0.5, sides[1], color='yellow', transform=ax.transAxes, va='center', ha='right'
            )
            ax.set_title(f'{vid[:28]} {name}' if col == 0 else name, fontsize=8)
    fig.suptitle(
        f'window [{window[0]:.0f}, {window[1]:.0f}] HU, {orientation}, spacing {spacing} mm',
        fontsize=9,
    )
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format='png')
    finally:
        plt.close(fig)


def write_qc(cache_path: str | Path, json_path: str, png_path: str, samples: int = 8) -> bool:
    """Write the QC JSON (all volumes) and PNG (an even sample); returns whether a PNG was made."""
    from preprocessing.cache import open_cache

    cache = open_cache(cache_path)
    with cache:
        ids = cache.ids()
        per_volume: dict[str, Any] = {}
        for vid in ids:
            stats = json.loads(cache.attrs(vid).get('qc_stats') or '{}')
            per_volume[vid] = {**stats, 'flags': flags(stats)}
        picked = (
            [
                ids[i]
                for i in np.linspace(0, len(ids) - 1, min(samples, len(ids))).round().astype(int)
            ]
            if ids
            else []
        )
        recipe = cache.recipe
        flagged = {vid: v['flags'] for vid, v in per_volume.items() if v['flags']}
        report = {
            'cache': str(cache_path),
            'volumes': len(ids),
            'recipe': recipe.name,
            'window_hu': list(recipe.window_hu),
            'flagged': flagged,
            'sampled_for_png': picked,
            'per_volume': per_volume,
        }
        write_text(json_path, json.dumps(report, indent=1) + '\n')
        if not picked or samples <= 0:
            return False
        volumes = [(vid, cache.read(vid).array) for vid in dict.fromkeys(picked)]
        _plot(
            png_path,
            volumes,
            tuple(recipe.spacing_zyx),
            tuple(recipe.window_hu),
            recipe.orientation,
        )
    return True
