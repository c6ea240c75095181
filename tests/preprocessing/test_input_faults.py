"""Bad inputs fail loudly and precisely: misspelt settings, broken DICOM, forged NIfTI headers,
clashing file names, odd dtypes, and workers that must not outlive their parent (issue 16)."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from ctclip.cli import main
from ctcommon.settings import UnknownSettingError
from preprocessing import run
from preprocessing.cache import open_cache
from preprocessing.errors import PreprocessError
from preprocessing.manifest import build_manifest
from preprocessing.pipeline import load_hu
from preprocessing.readers import read_dicom_series, read_nifti, read_npz
from preprocessing.settings import load_settings
from tests.conftest import shared_path
from tests.preprocessing.phantoms import ORIGIN, hu_image, phantom_hu, write_dicom_series

ROOT = Path(__file__).resolve().parents[2]


def _cohort(folder: Path, names: list[str]) -> Path:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(hu_image(phantom_hu()), str(path))
    return folder


def _cfg(src, out, **extra):
    return {'input': str(src), 'out': str(out), 'recipe': 'small', 'progress': False, **extra}


# --- item 4: unknown settings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ('override', 'named', 'closest'),
    [
        ('chekcs.min_slices=8', "'chekcs'", "'checks'"),
        ('checks.min_slice=8', "'checks.min_slice'", "'checks.min_slices'"),
        ('recipe_overrides.spacing_zxy=[2,1,1]', "'recipe_overrides.spacing_zxy'", 'spacing_zyx'),
    ],
)
def test_misspelt_setting_fails_in_one_line_before_any_work(
    tmp_path, capsys, override, named, closest
):
    src = _cohort(tmp_path / 'in', ['a.nii.gz'])
    out = tmp_path / 'c.h5'
    argv = ['preprocess', '--input', str(src), '--out', str(out), '--no-progress', override]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert named in err and closest in err and 'Traceback' not in err
    assert not any(tmp_path.glob('.c.h5*')) and not out.exists()  # nothing was started


def test_settings_are_typed(tmp_path):
    src = _cohort(tmp_path / 'in', ['a.nii.gz'])
    with pytest.raises(UnknownSettingError, match="did you mean 'qc.samples'"):
        run(_cfg(src, tmp_path / 'c.h5', qc={'sample': 3}))
    with pytest.raises(ValueError, match='checks.min_slices must be a number'):
        run(_cfg(src, tmp_path / 'c.h5', checks={'min_slices': 'many'}))


@pytest.mark.parametrize(
    'config',
    sorted((ROOT / 'ctclip' / 'configs' / 'preprocess').glob('*.yaml')),
    ids=lambda p: p.stem,
)
def test_packaged_preprocess_configs_are_valid(config):
    from ctclip.config import load_config

    settings = load_settings(load_config(config))
    assert settings.checks.min_slices == 16 and settings.qc.samples == 8


# --- item 7: clashing file names ------------------------------------------------------------


def test_clashing_file_names_get_path_ids_that_survive_a_rerun(tmp_path):
    src = _cohort(tmp_path / 'in', ['s0001/ct.nii.gz', 's0002/ct.nii.gz', 'solo/other.nii.gz'])
    out = tmp_path / 'c.h5'
    first = run(_cfg(src, out))
    assert (first.total, first.ok, first.failed) == (3, 3, 0)
    assert open_cache(out).ids() == ['s0001__ct', 's0002__ct', 'other']
    again = run(_cfg(src, out))
    assert (again.ok, again.skipped, again.failed) == (0, 3, 0)  # the same ids: all reused


def test_a_repeated_manifest_id_fails_that_row_not_the_run(tmp_path):
    src = _cohort(tmp_path / 'in', ['a.nii.gz', 'b.nii.gz'])
    manifest = tmp_path / 'manifest.csv'
    rows = [('v1', src / 'a.nii.gz'), ('v1', src / 'b.nii.gz'), ('v2', src / 'b.nii.gz')]
    manifest.write_text(
        'volume_id,path\n' + ''.join(f'{v},{p}\n' for v, p in rows), encoding='utf-8'
    )
    out = tmp_path / 'c.h5'
    summary = run(_cfg(manifest, out))
    assert (summary.total, summary.ok, summary.failed, summary.exit_code) == (3, 2, 1, 1)
    assert open_cache(out).ids() == ['v1', 'v2']
    (failure,) = summary.failures
    assert failure['stage'] == 'manifest' and 'appears twice' in failure['reason']
    assert failure['path'].endswith('b.nii.gz')


def test_ids_that_still_clash_keep_their_extension(tmp_path):
    src = _cohort(tmp_path / 'in', ['x/ct.nii.gz', 'x/ct.nii'])
    ids = [r['volume_id'] for r in build_manifest(src)]
    assert ids == ['x__ct.nii', 'x__ct.nii.gz']


# --- items 5 and 8: DICOM -------------------------------------------------------------------


@pytest.mark.parametrize('which', [0, 10, 19])
def test_truncated_real_dicom_slice_fails_naming_the_file(tmp_path, which):
    series = shutil.copytree(
        shared_path('volumes', 'totalsegmentator', 'example_ct_dicom'), tmp_path / 's'
    )
    for path in series.iterdir():
        path.chmod(0o644)
    victim = sorted(series.iterdir())[which]
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(PreprocessError) as info:
        read_dicom_series(series)
    assert info.value.stage == 'read'
    assert f'{str(victim)!r}: truncated DICOM slice (compressed pixel data fragment' in str(
        info.value
    )


def test_truncated_dicom_slice_is_a_failure_not_a_thinner_volume(tmp_path):
    vol = phantom_hu()
    series = write_dicom_series(tmp_path / 'in' / 'p1', vol, [ORIGIN[2] + 5 * k for k in range(24)])
    last = series / 'slice023.dcm'
    data = last.read_bytes()
    last.write_bytes(data[:-2])
    summary = run(_cfg(tmp_path / 'in', tmp_path / 'c.h5'))
    assert (summary.ok, summary.failed) == (0, 1)
    reason = summary.failures[0]['reason']
    assert (
        f'{str(last)!r}: truncated DICOM slice (pixel data 18430 bytes, expected 18432)' in reason
    )


def test_series_with_empty_uid_is_a_series_of_its_own(tmp_path):
    vol = phantom_hu()
    folder = tmp_path / 'in' / 'mixed'
    write_dicom_series(folder, vol, [ORIGIN[2] + 5 * k for k in range(24)])
    write_dicom_series(tmp_path / 'b', vol[::-1], [ORIGIN[2] + 5 * k for k in range(24)], uid='')
    for path in (tmp_path / 'b').iterdir():
        path.rename(folder / f'b{path.name}')
    rows = build_manifest(tmp_path / 'in')
    assert [r['volume_id'] for r in rows] == [
        'mixed__1.2.826.0.1.3680043.2.1125.1',
        'mixed__no-series-uid',
    ]
    arrays = [sitk.GetArrayFromImage(load_hu(r)[0]) for r in rows]
    np.testing.assert_array_equal(arrays[0], vol)
    np.testing.assert_array_equal(arrays[1], vol[::-1])


# --- item 11: declared size checked before allocating ---------------------------------------


def _forged_nifti(path: Path, shape: tuple[int, ...], payload: bytes) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_zooms((1.0,) * len(shape))
    header.set_qform(np.eye(4), code=1)
    header['vox_offset'] = 352
    with gzip.open(path, 'wb') as f:
        f.write(header.binaryblock + b'\0' * 4 + payload)
    return path


_PEAK = textwrap.dedent(
    """
    import resource, sys
    from preprocessing.errors import PreprocessError
    from preprocessing.readers import read_nifti
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        read_nifti(sys.argv[1])
        print('read', 0)
    except PreprocessError as exc:
        print(exc)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """
)


def test_small_gzip_declaring_2_gb_fails_with_bounded_memory(tmp_path):
    # 1024^3 int16 voxels = 2 GiB declared; 48 MB of zeros compress to about 47 KB
    path = _forged_nifti(tmp_path / 'bomb.nii.gz', (1024, 1024, 1024), b'\0' * (48 << 20))
    assert path.stat().st_size < 100_000
    result = subprocess.run(
        [sys.executable, '-c', _PEAK, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    message, peak_mb = result.stdout.strip().splitlines()
    assert int(peak_mb) < 300, f'peak RSS grew by {peak_mb} MB ({message})'
    assert 'declares (1024, 1024, 1024)' in message and 'a corrupt header' in message


def test_gzip_stream_shorter_than_declared_fails_before_allocating(tmp_path):
    payload = np.random.default_rng(0).integers(0, 255, 200_000, dtype=np.uint8).tobytes()
    path = _forged_nifti(tmp_path / 'short.nii.gz', (512, 512, 100), payload)  # 52 MB declared
    with pytest.raises(PreprocessError, match='gzip stream holds 200352 bytes, the header needs'):
        read_nifti(path)
    with pytest.raises(PreprocessError, match=r'above checks.max_voxels=1000'):
        read_nifti(path, max_voxels=1000)


def test_max_voxels_is_a_setting(tmp_path):
    src = _cohort(tmp_path / 'in', ['a.nii.gz'])
    summary = run(_cfg(src, tmp_path / 'c.h5', checks={'max_voxels': 10_000}))
    assert summary.failed == 1 and 'checks.max_voxels=10000' in summary.failures[0]['reason']


# --- item 13: one line naming the path and the problem --------------------------------------


def test_sheared_affine_is_named(tmp_path):
    affine = np.diag([3.0, 3.0, 5.0, 1.0])
    affine[0, 1] = 1.5
    image = nib.Nifti1Image(phantom_hu().transpose(2, 1, 0), affine)
    image.set_qform(None, code=0)
    image.set_sform(affine, code=1)
    path = tmp_path / 'shear.nii.gz'
    nib.save(image, path)
    with pytest.raises(PreprocessError, match='sheared or non-orthogonal affine') as info:
        read_nifti(path)
    assert str(path) in str(info.value) and '\n' not in str(info.value)


def test_nii_holding_gzip_data_is_named(tmp_path):
    sitk.WriteImage(hu_image(phantom_hu()), str(tmp_path / 'a.nii.gz'))
    path = tmp_path / 'a.nii'
    (tmp_path / 'a.nii.gz').rename(path)
    with pytest.raises(PreprocessError, match=r"'.*a\.nii' is named \.nii but holds gzip data"):
        read_nifti(path)


@pytest.mark.parametrize('dtype', ['bool', 'float16', 'complex64'])
def test_npz_of_a_non_hu_dtype_is_named(tmp_path, dtype):
    path = tmp_path / 'tst00001.npz'
    np.savez(path, ct=phantom_hu().astype(dtype))
    with pytest.raises(PreprocessError) as info:
        read_npz(path)
    assert str(info.value) == (
        f"read: {str(path)!r}: npz array 'ct' must be an integer or float32/64 HU array, "
        f'not {dtype}'
    )


# --- item 12: workers die with their parent -------------------------------------------------


def _children(pid: int) -> list[int]:
    psutil = pytest.importorskip('psutil')
    try:
        procs = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    return [p.pid for p in procs if 'spawn_main' in ' '.join(p.cmdline())]


def _alive(pid: int) -> bool:
    try:
        status = Path(f'/proc/{pid}/stat').read_text().split(')')[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return status != 'Z'


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='uses /proc')
@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGTERM], ids=['SIGKILL', 'SIGTERM'])
def test_workers_die_with_their_parent(tmp_path, sig):
    src = _cohort(tmp_path / 'in', [f'v{k:03d}.nii.gz' for k in range(40)])
    out = tmp_path / 'c.h5'
    parts = tmp_path / '.c.h5.parts'
    cmd = [sys.executable, '-m', 'preprocessing', '--input', str(src), '--out', str(out)]
    cmd += ['--recipe', 'small', '--workers', '2', '--no-progress']
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, 'PYTHONPATH': str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[int] = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline:  # both workers running and past their initializer
            workers = _children(proc.pid)
            if len(workers) == 2 and len(list(parts.glob('v*.h5'))) >= 3:
                break
            time.sleep(0.05)
        assert len(workers) == 2, 'the two workers never started'
        assert proc.poll() is None, 'the run ended before it could be killed'
        os.kill(proc.pid, sig)
        proc.wait(timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), 'workers outlived their parent'
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
