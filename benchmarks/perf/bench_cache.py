"""Cache read speed: random 192 x 192 x 96 training crops, against a MONAI PersistentDataset `.pt`.

Both sides start from the same li2025 volume and end with a float32 crop in [-1, 1]. Ours reads
only the chunks under the crop from the int16 HDF5 cache and applies the window; MONAI's
PersistentDataset loads its whole cached float tensor with torch.load and crops it
(RandSpatialCropd), which is how GreenRFM/Merlin-style loaders use it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.perf.bench_preprocess import make_input
from benchmarks.perf.common import Row

AREA = 'cache'
CROP_ZYX = (96, 192, 192)


def _evict(path: Path) -> None:
    """Drop one file's pages from the page cache (a cohort larger than RAM reads from disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _our_crops(cache_path: Path, n: int, window: bool, cold: bool, seed: int = 0) -> float:
    from preprocessing.cache import open_cache
    from preprocessing.window import HUWindow

    cache = open_cache(cache_path)
    lut = HUWindow.from_recipe(cache.recipe)
    shape = cache.shape('ct')
    rng = np.random.default_rng(seed)
    elapsed = 0.0
    for _ in range(n):
        origin = [int(rng.integers(0, s - c + 1)) for s, c in zip(shape, CROP_ZYX, strict=False)]
        if cold:
            cache.close()
            _evict(cache_path)
        start = time.perf_counter()
        crop = cache.read_crop('ct', origin, CROP_ZYX)
        if window:
            lut(crop)
        elapsed += time.perf_counter() - start
    cache.close()
    return n / elapsed


def _monai_crops(nifti: Path, cache_dir: Path, n: int, cold: bool) -> tuple[float, int]:
    import torch
    from monai.data import PersistentDataset
    from monai.transforms import Compose, RandSpatialCropd

    from benchmarks.perf.bench_preprocess import monai_pipeline

    torch.set_num_threads(1)
    transform = Compose(
        [
            *monai_pipeline().transforms,
            RandSpatialCropd(keys=['image'], roi_size=(192, 192, 96), random_size=False),
        ]
    )
    dataset = PersistentDataset(
        data=[{'image': str(nifti)}], transform=transform, cache_dir=str(cache_dir)
    )
    dataset[0]  # builds the .pt
    pt_files = list(cache_dir.glob('*.pt'))
    elapsed = 0.0
    for _ in range(n):
        if cold:
            for pt in pt_files:
                _evict(pt)
        start = time.perf_counter()
        dataset[0]
        elapsed += time.perf_counter() - start
    return n / elapsed, sum(p.stat().st_size for p in pt_files)


def run(quick: bool = False, ct_sample: Path | None = None) -> list[Row]:
    from preprocessing import run as preprocess

    n = 10 if quick else 40
    with tempfile.TemporaryDirectory(
        dir=Path.home()
    ) as tmp:  # a real disk, not tmpfs, for cold reads
        folder = Path(tmp)
        nifti = make_input(folder, 120 if quick else 300, ct_sample)
        cache_path = folder / 'cache.h5'
        preprocess(
            {'input': str(nifti), 'out': str(cache_path), 'progress': False, 'qc': {'samples': 0}}
        )
        theirs, pt_bytes = _monai_crops(nifti, folder / 'persistent', n, cold=False)
        theirs_cold, _ = _monai_crops(nifti, folder / 'persistent', max(3, n // 2), cold=True)
        raw = _our_crops(cache_path, n, window=False, cold=False)
        windowed = _our_crops(cache_path, n, window=True, cold=False)
        cold = _our_crops(cache_path, max(3, n // 2), window=True, cold=True)
        h5_bytes = cache_path.stat().st_size
    size = f'cache {h5_bytes / 2**20:.1f} MiB (int16, blosc-lz4) vs .pt {pt_bytes / 2**20:.1f} MiB (float32)'
    base = 'MONAI PersistentDataset .pt'
    return [
        Row(
            AREA,
            'random 192x192x96 crop, int16 HU (page cache warm)',
            raw,
            'crops/s',
            theirs,
            base,
            raw / theirs,
            '>= 2x faster',
            2.0,
            notes=f'MONAI crops are views of a float32 tensor already windowed; {size}',
        ),
        Row(
            AREA,
            'random 192x192x96 crop, windowed float32 (page cache warm)',
            windowed,
            'crops/s',
            theirs,
            base,
            windowed / theirs,
            '>= 2x faster',
            2.0,
            notes='window = HUWindow lookup table',
        ),
        Row(
            AREA,
            'random 192x192x96 crop, windowed float32 (file evicted before each read)',
            cold,
            'crops/s',
            theirs_cold,
            base,
            cold / theirs_cold,
            '>= 2x faster',
            2.0,
            notes='posix_fadvise(DONTNEED) before every read: a cohort larger than RAM reads from disk',
        ),
        Row(
            AREA,
            'bytes on disk per volume',
            h5_bytes / 2**20,
            'MiB',
            pt_bytes / 2**20,
            'MONAI .pt',
            pt_bytes / h5_bytes,
            'information',
        ),
    ]
