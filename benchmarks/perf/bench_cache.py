"""Cache read speed: random 192 x 192 x 96 training crops, against a MONAI PersistentDataset `.pt`.

Both sides start from the same li2025 volume. Ours ends with what training consumes: a contiguous
int16 HU crop from `VolumeCache.read_crop` (the HU window runs on the accelerator, as the model's
first op), read chunk by chunk from the default cache layout (blosc-lz4 slabs) and from the raw
layout (`cache_codec='none'`). MONAI's PersistentDataset loads its whole cached float32 tensor
(already windowed) with torch.load and crops it (RandSpatialCropd, a view), which is how
GreenRFM/Merlin-style loaders use it. benchmarks/perf/cache_layout.md has the layout matrix.
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


def _our_crops(cache_path: Path, n: int, cold: str = '', seed: int = 0) -> float:
    """Crops/s; `cold`: '' (page cache warm), 'open' (file open, its pages evicted before each
    crop, as a worker reading a cohort larger than RAM) or 'reopen' (closed and evicted too)."""
    from preprocessing.cache import open_cache

    cache = open_cache(cache_path)
    shape = cache.shape('ct')
    cache.read_crop('ct', (0, 0, 0), CROP_ZYX)  # opens the file
    rng = np.random.default_rng(seed)
    elapsed = 0.0
    for _ in range(n):
        origin = [int(rng.integers(0, s - c + 1)) for s, c in zip(shape, CROP_ZYX, strict=False)]
        if cold == 'reopen':
            cache.close()
        if cold:
            _evict(cache_path)
        start = time.perf_counter()
        cache.read_crop('ct', origin, CROP_ZYX)
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


def _raw_copy(cache_path: Path, out: Path) -> Path:
    """The same volume in the raw layout (`cache_codec='none'`)."""
    from preprocessing.cache import CacheWriter, open_cache

    with open_cache(cache_path) as cache:
        volume = cache.read('ct')
        recipe = cache.recipe.replace(cache_codec='none')
    attrs = {k: v for k, v in volume.attrs.items() if k != 'checksum'}
    with CacheWriter(out, recipe) as writer:
        writer.write('ct', volume.array, attrs)
    return out


def run(quick: bool = False, ct_sample: Path | None = None) -> list[Row]:
    import statistics

    from preprocessing import run as preprocess

    n = 10 if quick else 40
    n_cold = max(3, n // 2)
    rounds = 1 if quick else 3
    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:  # a real disk: not tmpfs
        folder = Path(tmp)
        nifti = make_input(folder, 120 if quick else 300, ct_sample)
        cache_path = folder / 'cache.h5'
        preprocess(
            {'input': str(nifti), 'out': str(cache_path), 'progress': False, 'qc': {'samples': 0}}
        )
        raw_path = _raw_copy(cache_path, folder / 'raw.h5')
        pt_bytes = 0
        for r in range(rounds):  # interleaved, so load on a shared machine hits both sides
            measured = {}
            measured['monai'], pt_bytes = _monai_crops(nifti, folder / 'persistent', n, False)
            measured['ours'] = _our_crops(cache_path, n, seed=r)
            measured['raw'] = _our_crops(raw_path, n, seed=r)
            measured['monai cold'], _ = _monai_crops(nifti, folder / 'persistent', n_cold, True)
            measured['ours open'] = _our_crops(cache_path, n_cold, 'open', seed=r)
            measured['ours reopen'] = _our_crops(cache_path, n_cold, 'reopen', seed=r)
            measured['raw open'] = _our_crops(raw_path, n_cold, 'open', seed=r)
            for key, value in measured.items():
                runs.setdefault(key, []).append(value)
        h5_bytes = cache_path.stat().st_size
        raw_bytes = raw_path.stat().st_size
    rate = {key: statistics.median(values) for key, values in runs.items()}
    mib = {'ours': h5_bytes / 2**20, 'raw': raw_bytes / 2**20, 'pt': pt_bytes / 2**20}
    size = (
        f'{mib["ours"]:.1f} MiB per volume on disk (int16, blosc-lz4 slabs) vs '
        f'{mib["pt"]:.1f} MiB (.pt, float32)'
    )
    raw_size = f'{mib["raw"]:.1f} MiB per volume on disk (raw int16) vs {mib["pt"]:.1f} MiB (.pt)'
    base = 'MONAI PersistentDataset .pt'
    crop = 'random 192x192x96 crop, contiguous int16 HU'
    view = 'MONAI crops are views of a float32 tensor already windowed; '
    evicted = 'posix_fadvise(DONTNEED) before every read: a cohort larger than RAM reads from disk'
    median = f'median of {rounds} interleaved rounds'

    def row(what: str, ours: str, theirs: str, notes: str) -> Row:
        return Row(
            AREA,
            what,
            rate[ours],
            'crops/s',
            rate[theirs],
            base,
            rate[ours] / rate[theirs],
            '>= 2x faster',
            2.0,
            notes=f'{notes}; {median}',
        )

    return [
        row(f'{crop} (page cache warm)', 'ours', 'monai', view + size),
        row(
            f'{crop} (file open, data evicted before each read)',
            'ours open',
            'monai cold',
            f'{evicted}; the worker keeps the file open (HDF5 keeps its chunk index); {size}',
        ),
        row(
            f'{crop} (file closed and evicted before each read)',
            'ours reopen',
            'monai cold',
            f'{evicted}; the open and the chunk index come from disk too; {size}',
        ),
        row(
            f'{crop}, raw cache (page cache warm)',
            'raw',
            'monai',
            f"cache_codec='none'; {raw_size}",
        ),
        row(
            f'{crop}, raw cache (file open, data evicted before each read)',
            'raw open',
            'monai cold',
            f"cache_codec='none'; {evicted}; {raw_size}",
        ),
        Row(
            AREA,
            'bytes on disk per volume (blosc-lz4 slabs)',
            mib['ours'],
            'MiB',
            mib['pt'],
            'MONAI .pt',
            mib['pt'] / mib['ours'],
            'information',
        ),
        Row(
            AREA,
            "bytes on disk per volume (cache_codec='none')",
            mib['raw'],
            'MiB',
            mib['pt'],
            'MONAI .pt',
            mib['pt'] / mib['raw'],
            'information',
        ),
    ]
