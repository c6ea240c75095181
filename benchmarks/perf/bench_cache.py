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
from typing import Any

import numpy as np

from benchmarks.perf.bench_preprocess import make_input
from benchmarks.perf.common import Row

AREA = 'cache'
CROP_ZYX = (96, 192, 192)
SHAPE = (120, 240, 240)  # the li2025 grid


def _evict(path: Path) -> None:
    """Drop one file's pages from the page cache (a cohort larger than RAM reads from disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


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


class _Ours:
    """Crops from one of our caches; `prepare` puts the file in the state a mode asks for."""

    def __init__(self, path: Path):
        from preprocessing.cache import open_cache

        self.path = path
        self.cache = open_cache(path)
        self.cache.read_crop('ct', (0, 0, 0), CROP_ZYX)  # opens the file

    def prepare(self, cold: str) -> None:
        if cold == 'reopen':
            self.cache.close()
        if cold:
            _evict(self.path)

    def crop(self, origin: list[int]) -> None:
        self.cache.read_crop('ct', origin, CROP_ZYX)


class _Monai:
    """MONAI's PersistentDataset of the same volume: torch.load of the .pt, RandSpatialCropd."""

    def __init__(self, nifti: Path, cache_dir: Path, contiguous: bool = False):
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
        self.dataset = PersistentDataset(
            data=[{'image': str(nifti)}], transform=transform, cache_dir=str(cache_dir)
        )
        self.dataset[0]  # builds the .pt
        self.pt_files = list(cache_dir.glob('*.pt'))
        self.bytes = sum(p.stat().st_size for p in self.pt_files)
        self.contiguous = contiguous

    def prepare(self, cold: str) -> None:
        if cold:  # it opens the .pt for every item anyway
            for pt in self.pt_files:
                _evict(pt)

    def crop(self, origin: list[int]) -> None:
        item = self.dataset[0]  # its own random crop, a view
        if self.contiguous:  # what collating a batch costs it
            item['image'].contiguous()


def _interleaved(readers: dict[str, Any], n: int, cold: str, seed: int) -> dict[str, float]:
    """Crops/s of each reader, taking turns crop by crop (rotating who goes first), so the load of
    a shared machine falls on every side alike."""
    rng = np.random.default_rng(seed)
    names = list(readers)
    elapsed = dict.fromkeys(names, 0.0)
    for i in range(n):
        origin = [int(rng.integers(0, s - c + 1)) for s, c in zip(SHAPE, CROP_ZYX, strict=False)]
        for name in names[i % len(names) :] + names[: i % len(names)]:
            readers[name].prepare(cold)
            start = time.perf_counter()
            readers[name].crop(origin)
            elapsed[name] += time.perf_counter() - start
    return {name: n / elapsed[name] for name in names}


def run(quick: bool = False, ct_sample: Path | None = None) -> list[Row]:
    from preprocessing import run as preprocess

    n = 10 if quick else 60
    n_cold = max(3, n // 2)
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:  # a real disk: not tmpfs
        folder = Path(tmp)
        nifti = make_input(folder, 120 if quick else 300, ct_sample)
        cache_path = folder / 'cache.h5'
        preprocess(
            {'input': str(nifti), 'out': str(cache_path), 'progress': False, 'qc': {'samples': 0}}
        )
        raw_path = _raw_copy(cache_path, folder / 'raw.h5')
        monai = _Monai(nifti, folder / 'persistent')
        ours, raw = _Ours(cache_path), _Ours(raw_path)
        assert ours.cache.shape('ct') == SHAPE, ours.cache.shape('ct')
        dense = _Monai(nifti, folder / 'persistent', contiguous=True)
        warm = _interleaved({'monai': monai, 'dense': dense, 'ours': ours, 'raw': raw}, n, '', 0)
        open_ = _interleaved({'monai': monai, 'ours': ours, 'raw': raw}, n_cold, 'open', 1)
        reopen = _interleaved({'monai': monai, 'ours': ours}, n_cold, 'reopen', 2)
        ours.cache.close()
        raw.cache.close()
        mib = {
            'ours': cache_path.stat().st_size / 2**20,
            'raw': raw_path.stat().st_size / 2**20,
            'pt': monai.bytes / 2**20,
        }
    size = (
        f'{mib["ours"]:.1f} MiB per volume on disk (int16, blosc-lz4 slabs) vs '
        f'{mib["pt"]:.1f} MiB (.pt, float32)'
    )
    raw_size = f'{mib["raw"]:.1f} MiB per volume on disk (raw int16) vs {mib["pt"]:.1f} MiB (.pt)'
    base = 'MONAI PersistentDataset .pt'
    crop = 'random 192x192x96 crop, contiguous int16 HU'
    view = 'MONAI crops are views of a float32 tensor already windowed; '
    evicted = 'posix_fadvise(DONTNEED) before every read: a cohort larger than RAM reads from disk'
    turns = 'both sides take turns crop by crop'

    def row(what: str, rates: dict[str, float], ours: str, notes: str) -> Row:
        return Row(
            AREA,
            what,
            rates[ours],
            'crops/s',
            rates['monai'],
            base,
            rates[ours] / rates['monai'],
            '>= 2x faster',
            2.0,
            notes=f'{notes}; {turns}',
        )

    return [
        row(f'{crop} (page cache warm)', warm, 'ours', view + size),
        Row(
            AREA,
            f'{crop} (page cache warm), against MONAI crops made contiguous',
            warm['ours'],
            'crops/s',
            warm['dense'],
            f'{base}, crop .contiguous()',
            warm['ours'] / warm['dense'],
            '>= 2x faster',
            2.0,
            notes="an added baseline: collating a batch copies MONAI's view (float32), as our "
            'crop is already copied (int16); the row above keeps the original baseline',
        ),
        row(
            f'{crop} (file open, data evicted before each read)',
            open_,
            'ours',
            f'{evicted}; the worker keeps the file open (HDF5 keeps its chunk index); {size}',
        ),
        row(
            f'{crop} (file closed and evicted before each read)',
            reopen,
            'ours',
            f'{evicted}; the open and the chunk index come from disk too; {size}',
        ),
        row(f'{crop}, raw cache (page cache warm)', warm, 'raw', f"cache_codec='none'; {raw_size}"),
        row(
            f'{crop}, raw cache (file open, data evicted before each read)',
            open_,
            'raw',
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
