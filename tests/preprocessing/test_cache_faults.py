"""Faults around the preprocess cache: a full disk, replaced sources, bad output paths, stale temps.

The full-disk tests mount a real tmpfs (root only; they skip with the reason elsewhere) and run the
CLI in a subprocess, because the failure they guard against was a segfault (exit 139).
"""

import errno
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from ctclip.cli import main
from preprocessing import run
from preprocessing.cache import CacheWriter, open_cache, verify_cache
from preprocessing.recipes import get_recipe
from tests.preprocessing.phantoms import hu_image, phantom_hu

ROOT = Path(__file__).resolve().parents[2]
RECIPE = get_recipe('small')
SMALL_DISK = '8m'  # holds about 7 of the noisy volumes below (about 1 MB each, compressed)


def _noisy_cohort(folder: Path, count: int, seed: int = 0) -> Path:
    """NIfTI chests full of noise, so that their cache entries hardly compress."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        vol = phantom_hu(shape_zyx=(68, 96, 96))
        vol = np.where(vol > -1100, rng.integers(-1000, 1000, vol.shape), vol).astype(np.int16)
        sitk.WriteImage(hu_image(vol), str(folder / f'n{i:02d}.nii.gz'))
    return folder


def _mount(folder: Path, *options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', ','.join(options), 'tmpfs', str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs (needs root): {done.stderr.strip()}')


def _umount(folder: Path) -> None:
    subprocess.run(['umount', str(folder)], capture_output=True)


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHONFAULTHANDLER': '1'}
    return subprocess.run(
        [sys.executable, '-m', 'preprocessing', '--recipe', 'small', '--no-progress', *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _voxels(path: Path) -> dict[str, np.ndarray]:
    cache = open_cache(path)
    return {vid: cache.read(vid).array for vid in cache.ids()}


def _volume(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1500, RECIPE.shape_zyx).astype(np.int16)


def test_full_disk_in_the_writer_raises_and_leaves_nothing(tmp_path):
    disk = tmp_path / 'disk'
    _mount(disk, 'size=2m')
    try:
        with pytest.raises(OSError, match='disk full \\(ENOSPC\\) writing .*c.h5') as caught:
            with CacheWriter(disk / 'c.h5', RECIPE) as writer:
                for i in range(4):  # 4 x 2.8 MB of random int16 hardly compresses
                    writer.write(f'v{i}', _volume(i), {})
        assert caught.value.errno == errno.ENOSPC
        assert list(disk.iterdir()) == []
    finally:
        _umount(disk)


@pytest.mark.slow
def test_full_disk_fails_the_run_and_the_rerun_completes_it(tmp_path):
    cohort = _noisy_cohort(tmp_path / 'in', 10)
    reference = tmp_path / 'ref' / 'cache.h5'
    assert _cli(['--input', str(cohort), '--out', str(reference)]).returncode == 0
    disk = tmp_path / 'disk'
    out = disk / 'cache.h5'
    _mount(disk, f'size={SMALL_DISK}')
    try:
        first = _cli(['--input', str(cohort), '--out', str(out)])
        assert first.returncode == 1, (first.returncode, first.stderr[-2000:])
        assert 'disk full (ENOSPC) writing' in first.stderr
        report = json.loads(out.with_suffix('.failures.json').read_text(encoding='utf-8'))
        summary = json.loads(out.with_suffix('.summary.json').read_text(encoding='utf-8'))
        reasons = [row['reason'] for row in report] + [summary['error']]
        assert any('disk full (ENOSPC) writing' in r for r in reasons), reasons
        assert not out.exists() or not verify_cache(out)  # whatever is there is whole
        subprocess.run(['mount', '-o', 'remount,size=200m', str(disk)], check=True)
        rerun = _cli(['--input', str(cohort), '--out', str(out)])
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert verify_cache(out) == []
        got, want = _voxels(out), _voxels(reference)
        assert sorted(got) == sorted(want) and len(got) == 10
        for vid in want:
            np.testing.assert_array_equal(got[vid], want[vid])
        assert not [p for p in disk.iterdir() if 'tmp' in p.name]
    finally:
        _umount(disk)


def _nifti(path: Path, seed: int) -> None:
    vol = phantom_hu()
    vol[vol == 40] += np.int16(seed * 10)  # a different soft-tissue value per seed
    sitk.WriteImage(hu_image(vol), str(path))


def test_a_source_replaced_at_the_same_path_is_reprocessed(tmp_path, caplog):
    cohort = tmp_path / 'in'
    cohort.mkdir()
    _nifti(cohort / 'a.nii.gz', 0)
    _nifti(cohort / 'b.nii.gz', 0)
    out = tmp_path / 'cache.h5'
    cfg = {'input': str(cohort), 'out': str(out), 'recipe': 'small', 'progress': False}
    run(cfg)
    before = _voxels(out)
    stat = (cohort / 'a.nii.gz').stat()
    _nifti(tmp_path / 'new.nii.gz', 3)
    os.replace(tmp_path / 'new.nii.gz', cohort / 'a.nii.gz')
    os.utime(cohort / 'a.nii.gz', ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `cp -p` would
    with caplog.at_level(logging.INFO, logger='preprocessing.runner'):
        summary = run(cfg)
    assert (summary.ok, summary.skipped) == (1, 1)
    assert 'a: source' in caplog.text and 'changed since the cache was written' in caplog.text
    fresh = tmp_path / 'fresh.h5'
    run({**cfg, 'out': str(fresh)})
    after, want = _voxels(out), _voxels(fresh)
    np.testing.assert_array_equal(after['a'], want['a'])
    assert not np.array_equal(after['a'], before['a'])
    np.testing.assert_array_equal(after['b'], before['b'])
    assert (
        open_cache(out).attrs('a')['source_sha256'] == open_cache(fresh).attrs('a')['source_sha256']
    )


def test_a_damaged_part_is_reprocessed_not_reused(tmp_path, caplog):
    cohort = tmp_path / 'in'
    cohort.mkdir()
    _nifti(cohort / 'a.nii.gz', 0)
    out = tmp_path / 'cache.h5'
    cfg = {'input': str(cohort), 'out': str(out), 'recipe': 'small', 'progress': False}
    run({**cfg, 'keep_parts': True})
    want = _voxels(out)
    out.unlink()
    part = tmp_path / '.cache.h5.parts' / 'a.h5'
    with h5py.File(part) as f:  # zero one chunk, as the full disk did in the issue
        info = f['volumes/a'].id.get_chunk_info(1)
    with open(part, 'r+b') as f:
        f.seek(info.byte_offset)
        f.write(bytes(info.size))
    with caplog.at_level(logging.WARNING, logger='preprocessing.runner'):
        summary = run(cfg)
    assert (summary.ok, summary.skipped) == (1, 0)
    assert 'part' in caplog.text and 'is damaged' in caplog.text
    np.testing.assert_array_equal(_voxels(out)['a'], want['a'])


def _preprocess(args: list[str]) -> int:
    return main(['preprocess', '--recipe', 'small', '--no-progress', *args])


def test_output_paths_are_checked_before_any_work(tmp_path, capsys):
    cohort = tmp_path / 'in'
    cohort.mkdir()
    _nifti(cohort / 'a.nii.gz', 0)
    folder = tmp_path / 'outdir'
    folder.mkdir()
    assert _preprocess(['--input', str(cohort), '--out', str(folder)]) == 2
    err = capsys.readouterr().err
    assert 'not the folder' in err and err.count('\n') == 1
    assert list(folder.iterdir()) == []
    notes = tmp_path / 'notes.h5'
    notes.write_text('my notes', encoding='utf-8')
    assert _preprocess(['--input', str(cohort), '--out', str(notes)]) == 2
    assert 'not a ctclip cache: refusing to overwrite' in capsys.readouterr().err
    assert notes.read_text(encoding='utf-8') == 'my notes'
    assert _preprocess(['--input', str(cohort), '--out', str(notes / 'c.h5')]) == 2
    assert f'{notes} is a file' in capsys.readouterr().err
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert _preprocess(['--input', str(empty), '--out', str(tmp_path / 'e.h5')]) == 2
    err = capsys.readouterr().err
    assert 'holds no volumes' in err and err.count('\n') == 1
    assert not (tmp_path / 'e.h5').exists()
    assert not list(tmp_path.glob('.*.parts'))


def test_a_read_only_output_folder_fails_at_once(tmp_path, capsys):
    cohort = tmp_path / 'in'
    cohort.mkdir()
    _nifti(cohort / 'a.nii.gz', 0)
    readonly = tmp_path / 'ro'
    if os.geteuid() == 0:  # root writes through permission bits: a read-only mount then
        _mount(readonly, 'ro', 'size=1m')
    else:
        readonly.mkdir()
        readonly.chmod(0o555)
    try:
        assert _preprocess(['--input', str(cohort), '--out', str(readonly / 'c.h5')]) == 2
        err = capsys.readouterr().err
        assert f'output folder {readonly} is not writable' in err and err.count('\n') == 1
    finally:
        if os.geteuid() == 0:
            _umount(readonly)
        else:
            readonly.chmod(0o755)


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_temporary_files_of_dead_runs_are_removed_at_start(tmp_path):
    cohort = tmp_path / 'in'
    cohort.mkdir()
    _nifti(cohort / 'a.nii.gz', 0)
    out = tmp_path / 'out' / 'cache.h5'
    parts = out.parent / '.cache.h5.parts'
    parts.mkdir(parents=True)
    dead, host = _dead_pid(), socket.gethostname().split('.')[0]
    stale = [
        out.parent / f'.cache.h5.tmp{dead}',  # the names before ctcommon.atomic
        out.parent / f'cache.failures.csv.tmp{dead}',
        out.parent / f'cache.qc.png.tmp{dead}.png',
        parts / f'.a.h5.tmp{dead}',
        out.parent / f'.cache.h5.{host}-{dead}-0123abcd.ctclip-tmp',
    ]
    live = out.parent / f'.cache.h5.tmp{os.getppid()}'  # a running process: not ours to remove
    for path in [*stale, live]:
        path.write_bytes(b'x' * 1000)
    summary = run({'input': str(cohort), 'out': str(out), 'recipe': 'small', 'progress': False})
    assert summary.ok == 1
    assert [p for p in stale if p.exists()] == []
    assert live.exists()
    assert sorted(p.name for p in out.parent.iterdir() if 'tmp' in p.name) == [live.name]
