"""End to end: the CLI on cohorts, bad inputs, workers, shards + merge, and kill-and-resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from ctclip.cli import main
from preprocessing import run
from preprocessing.cache import open_cache
from tests.preprocessing.phantoms import (
    ORIGIN,
    hu_image,
    phantom_hu,
    write_ctrate_tree,
    write_dicom_series,
)

ROOT = Path(__file__).resolve().parents[2]
NAMES = [
    f'{split}_{p}_{s}_{r}.nii.gz'
    for split, p, s, r in [
        ('train', 1, 'a', 1),
        ('train', 1, 'a', 2),
        ('train', 2, 'a', 1),
        ('train', 2, 'b', 1),
        ('valid', 3, 'a', 1),
        ('valid', 4, 'a', 1),
    ]
]


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    return write_ctrate_tree(tmp_path_factory.mktemp('tree'), NAMES, siemens={NAMES[2]})


def _cfg(tree, out, **extra):
    return {'input': str(tree), 'out': str(out), 'recipe': 'small', 'progress': False, **extra}


def _volumes(path):
    cache = open_cache(path)
    return {vid: (cache.read(vid).array, cache.attrs(vid)) for vid in cache.ids()}


@pytest.fixture(scope='module')
def reference(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp('ref') / 'cache.h5'
    summary = run(_cfg(tree, out))
    assert (summary.total, summary.ok, summary.failed, summary.skipped) == (6, 6, 0, 0)
    return out


def test_cli_builds_a_cache_with_reports(tree, tmp_path, capsys):
    out = tmp_path / 'c.h5'
    assert (
        main(
            [
                'preprocess',
                '--input',
                str(tree),
                '--out',
                str(out),
                '--recipe',
                'small',
                '--no-progress',
                'qc.samples=2',
            ]
        )
        == 0
    )
    assert '"ok": 6' in capsys.readouterr().out
    cache = open_cache(out)
    assert cache.ids() == sorted(NAMES) and cache.recipe.name == 'small'
    attrs = cache.attrs(NAMES[4])
    assert (attrs['patient_id'], attrs['scan_id'], attrs['split']) == (
        'valid_3',
        'valid_3_a',
        'valid',
    )
    assert (
        attrs['file_version'] == 'v2'
        and attrs['orientation'] == 'LPS'
        and len(attrs['source_sha256']) == 64
    )
    qc = json.loads(out.with_suffix('.qc.json').read_text(encoding='utf-8'))
    assert qc['volumes'] == 6 and not qc['flagged'] and len(qc['sampled_for_png']) == 2
    assert out.with_suffix('.qc.png').stat().st_size > 10_000
    assert json.loads(out.with_suffix('.summary.json').read_text(encoding='utf-8'))['ok'] == 6
    assert not (tmp_path / '.c.h5.parts').exists()


def test_v1_tree_gives_the_same_voxels(tree, reference, tmp_path):
    out = tmp_path / 'v1.h5'
    run(_cfg(tree, out, prefer_version='v1'))
    v1, v2 = _volumes(out), _volumes(reference)
    for vid in NAMES:
        np.testing.assert_array_equal(v1[vid][0], v2[vid][0])
        assert v1[vid][1]['file_version'] == 'v1'


def test_rerun_skips_everything_and_keeps_bytes(tree, reference, tmp_path):
    out = tmp_path / 'cache.h5'
    out.write_bytes(reference.read_bytes())
    summary = run(_cfg(tree, out))
    assert (summary.ok, summary.skipped) == (0, 6)
    assert out.read_bytes() == reference.read_bytes()


def test_two_workers_give_identical_bytes(tree, reference, tmp_path):
    out = tmp_path / 'cache.h5'
    run(_cfg(tree, out, workers=2))
    assert out.read_bytes() == reference.read_bytes()


def test_shards_and_merge_equal_a_single_run(tree, reference, tmp_path):
    out = tmp_path / 'cache.h5'
    for i in range(3):
        assert (
            main(
                [
                    'preprocess',
                    '--input',
                    str(tree),
                    '--out',
                    str(out),
                    '--recipe',
                    'small',
                    '--shard',
                    f'{i}/3',
                    '--no-progress',
                ]
            )
            == 0
        )
    assert len(list(tmp_path.glob('cache.shard*-of-0003.h5'))) == 3
    assert (
        main(['preprocess', 'merge', '--out', str(tmp_path / 'merged.h5')]) == 2
    )  # no shards match
    assert main(['preprocess', 'merge', '--out', str(out)]) == 0
    merged, single = _volumes(out), _volumes(reference)
    assert sorted(merged) == sorted(single)
    for vid in single:
        np.testing.assert_array_equal(merged[vid][0], single[vid][0])
        assert merged[vid][1] == single[vid][1]


def test_limit_and_bad_shard(tree, tmp_path):
    assert run(_cfg(tree, tmp_path / 'c.h5', limit=2)).total == 2
    with pytest.raises(ValueError, match='0 <= i < n'):
        run(_cfg(tree, tmp_path / 'c.h5', shard='3/3'))
    assert (
        main(['preprocess', '--input', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'c.h5')])
        == 2
    )


def _bad_cohort(folder: Path) -> dict[str, str]:
    """One good volume plus every kind of bad input; returns volume_id -> expected reason."""
    folder.mkdir()
    vol = phantom_hu()
    sitk.WriteImage(hu_image(vol), str(folder / 'good.nii.gz'))
    data = (folder / 'good.nii.gz').read_bytes()
    (folder / 'truncated.nii.gz').write_bytes(data[: len(data) // 2])
    (folder / 'empty.nii.gz').write_bytes(b'')
    (folder / 'report.nii.gz').write_text('FINDINGS: no acute abnormality.', encoding='utf-8')
    sitk.WriteImage(sitk.GetImageFromArray(vol[0]), str(folder / 'flat.nii.gz'))
    mr_like = np.clip(vol.astype(np.int32) + 1024, 0, None).astype(
        np.int16
    )  # MR-like: background 0, no air
    sitk.WriteImage(hu_image(mr_like), str(folder / 'mr_like.nii.gz'))
    nan = vol.astype(np.float32)
    nan[3, 4, 5] = np.nan
    sitk.WriteImage(hu_image(nan), str(folder / 'nans.nii.gz'))
    img = nib.Nifti1Image(vol.transpose(2, 1, 0), None)
    img.header.set_zooms((0, 0, 0))
    nib.save(img, folder / 'nospacing.nii.gz')
    sitk.WriteImage(hu_image(vol[:4]), str(folder / 'thin.nii.gz'))
    zs = [ORIGIN[2] + 5 * k for k in range(24)]
    zs[10] = zs[9]
    write_dicom_series(folder / 'dicom_dup', vol, zs)
    return {
        'truncated': 'truncated or corrupt gzip',
        'empty': 'empty file',
        'report': 'not gzip data',
        'flat': '2D image',
        'mr_like': 'not a CT intensity range',
        'nans': 'NaN',
        'nospacing': 'missing spacing',
        'thin': 'too few slices',
        'dicom_dup': 'duplicate slice position',
    }


def test_every_bad_input_lands_in_the_failures_report(tmp_path):
    expected = _bad_cohort(tmp_path / 'in')
    out = tmp_path / 'c.h5'
    summary = run(
        {'input': str(tmp_path / 'in'), 'out': str(out), 'recipe': 'small', 'progress': False}
    )
    # Any failed volume makes the run exit 1 by default; a failure budget can allow them.
    assert (summary.ok, summary.failed, summary.exit_code) == (1, len(expected), 1)
    report = {
        row['volume_id']: row
        for row in json.loads(out.with_suffix('.failures.json').read_text(encoding='utf-8'))
    }
    assert set(report) == set(expected)
    for vid, reason in expected.items():
        assert reason in report[vid]['reason'], (vid, report[vid])
        assert report[vid]['stage'] in ('read', 'check', 'calibrate') and report[vid]['path']
    assert (
        out.with_suffix('.failures.csv').read_text(encoding='utf-8').count('\n')
        == len(expected) + 1
    )
    assert open_cache(out).ids() == ['good']
    argv = ['preprocess', '--input', str(tmp_path / 'in'), '--out', str(out), '--recipe', 'small']
    assert main([*argv, '--strict', '--no-progress']) == 1
    budget = len(expected) / (len(expected) + 1)
    assert main([*argv, '--no-progress', f'failures.max_fraction={budget}']) == 0
    assert main([*argv, '--no-progress', 'failures.max_fraction=0.5']) == 1


def _cli(tree, out):
    return [
        sys.executable,
        '-m',
        'preprocessing',
        '--input',
        str(tree),
        '--out',
        str(out),
        '--recipe',
        'small',
        '--no-progress',
        'checks.min_slices=16',
    ]


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_cache(tree, reference, tmp_path):
    out = tmp_path / 'cache.h5'
    parts = tmp_path / '.cache.h5.parts'
    env = {**os.environ, 'PYTHONPATH': str(ROOT)}
    proc = subprocess.Popen(
        _cli(tree, out),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (parts.is_dir() and list(parts.glob('*.nii.gz.h5'))):
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(parts.glob('*.nii.gz.h5')))
    assert 1 <= finished < len(NAMES), 'the kill should land mid-run'
    assert not out.exists()
    rerun = subprocess.run(
        _cli(tree, out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f'"skipped": {finished}' in rerun.stdout
    assert out.read_bytes() == reference.read_bytes()


def _tunables() -> str | None:
    return os.environ.get('GLIBC_TUNABLES')


def test_pool_workers_start_with_huge_pages_and_the_parent_keeps_its_environment(monkeypatch):
    import concurrent.futures as cf
    import multiprocessing

    from preprocessing.runner import HUGE_PAGES_TUNABLE, _huge_page_children

    monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0')
    ctx = multiprocessing.get_context('spawn')
    with cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        with _huge_page_children():
            future = pool.submit(_tunables)
        assert future.result() == f'glibc.malloc.arena_max=2:{HUGE_PAGES_TUNABLE}'
    assert os.environ['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0'
    monkeypatch.delenv('GLIBC_TUNABLES')
    with _huge_page_children():
        pass
    assert 'GLIBC_TUNABLES' not in os.environ
