"""A PNG gallery of a synthetic cohort: one axial slice per finding, through its truth box.

For checking by eye that every finding is visible, and for the documentation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ctcommon.findings import FINDINGS


def _load_volume(root: Path, truth: dict) -> np.ndarray:
    """HU array (z, y, x) of a truth line's volume, in either layout."""
    name = truth['volume']
    if name.endswith('.nii.gz'):
        import nibabel as nib

        from synth.layouts import ctrate_paths

        return np.asarray(nib.load(ctrate_paths(root, name)[1]).dataobj).transpose(2, 1, 0)
    return np.load(root / 'radchestct' / 'volumes' / f'{name}.npz')['ct']


def finding_gallery(
    root: Path, out_png: Path, window: tuple[float, float] = (-1000.0, 200.0)
) -> Path:
    """One panel per finding (first volume that has it), with its bounding box drawn."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    root = Path(root)
    lines = [json.loads(x) for x in (root / 'truth.jsonl').read_text(encoding='utf-8').splitlines()]
    fig, axes = plt.subplots(3, 6, figsize=(24, 12.5))
    for ax, name in zip(axes.flat, FINDINGS, strict=False):
        ax.axis('off')
        hit = next(
            ((t, f) for t in lines for f in t['findings'] if f['finding'] == name and f['voxels']),
            None,
        )
        if hit is None:
            ax.set_title(f'{name}\n(not in this cohort)', fontsize=9)
            continue
        truth, item = hit
        vol = _load_volume(root, truth)
        (z0, y0, x0), (z1, y1, x1) = item['bbox_zyx']
        z = int(round(item['centre_zyx'][0]))
        ax.imshow(np.clip(vol[z], *window), cmap='gray', vmin=window[0], vmax=window[1])
        ax.add_patch(
            patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color='red', lw=1)
        )
        ax.set_title(f'{name}\n{truth["volume"]} z={z}', fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=70)
    plt.close(fig)
    return out_png
