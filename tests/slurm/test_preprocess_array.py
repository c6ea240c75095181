"""slurm/preprocess_array.sbatch + preprocess_merge.sbatch on the local Slurm cluster.

A 4-task array over a synthetic cohort in which one volume is broken: its task fails (--strict),
the merge stays pending, the volume is repaired, that one task is rerun alone and resumes (it keeps
the volumes it had finished), the merge runs, and the merged cache equals a single-process run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.slurm.conftest import Job, assert_completed, submit_helper, wait_done, wait_for

SHARDS = 4

pytestmark = pytest.mark.slurm


@pytest.fixture(scope='module')
def cohort(tmp_path_factory) -> Path:
    from synth import generate_cohort

    root = tmp_path_factory.mktemp('cohort')
    return generate_cohort(root, n=5, seed=3, small=True, workers=2, progress=False)


def _pick_broken(cohort: Path) -> tuple[Path, int]:
    """A volume of a shard that has others too (so that the rerun has something to keep)."""
    from preprocessing.manifest import build_manifest

    rows = build_manifest(cohort)
    assert len(rows) > SHARDS, f'the cohort should give some shard two volumes, got {len(rows)}'
    index = SHARDS if len(rows) > SHARDS else 0  # shard 0 holds rows 0, 4, 8, ...
    return Path(rows[index]['path']), index % SHARDS


def _single_process_run(cohort: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, 'HF_HUB_OFFLINE': '1'}
    cmd = [
        sys.executable,
        '-m',
        'ctclip.cli',
        'preprocess',
        '--input',
        str(cohort),
        '--out',
        str(out),
        '--recipe',
        'small',
        '--no-progress',
    ]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _assert_same_cache(merged: Path, reference: Path) -> None:
    from preprocessing.cache import open_cache

    with open_cache(merged) as got, open_cache(reference) as want:
        assert sorted(got.ids()) == sorted(want.ids())
        for vid in want.ids():
            a, b = got.read(vid), want.read(vid)
            np.testing.assert_array_equal(a.array, b.array, err_msg=vid)
            assert tuple(a.spacing_zyx) == tuple(b.spacing_zyx), vid
            for key in (
                'source_sha256',
                'patient_id',
                'scan_id',
                'split',
                'recipe_hash',
                'original_shape_zyx',
            ):
                assert str(got.attrs(vid).get(key)) == str(want.attrs(vid).get(key)), (vid, key)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_array_fails_reruns_one_task_and_merges_like_a_single_run(slurm_cluster, cohort, tmp_path):
    broken, broken_shard = _pick_broken(cohort)
    out_dir = tmp_path / 'array'
    out_dir.mkdir()
    out = out_dir / 'cache.h5'
    good_bytes = broken.read_bytes()
    broken.write_bytes(good_bytes[: len(good_bytes) // 3])  # a truncated gzip
    args = ['--', '--input', str(cohort), '--out', str(out), '--recipe', 'small', '--strict']
    env = {**os.environ, 'CTCLIP_LOG_DIR': str(tmp_path), 'CTCLIP_CPUS_PER_TASK': '1'}
    array_id, merge_id = submit_helper(
        'preprocess', ['--shards', str(SHARDS), *args], tmp_path, env
    )
    array = Job(array_id, tmp_path / 'slurm-ctclip-preprocess-%A_%a.out')

    states = wait_done(array, timeout=150)
    failed = [v['ArrayTaskId'] for v in states.values() if v['JobState'] != 'COMPLETED']
    assert failed == [str(broken_shard)], (
        f'only task {broken_shard} should fail: {failed}\n{array.logs()}'
    )
    assert broken.name in array.logs(), array.logs()
    wait_for(
        merge_id,
        lambda s: s[merge_id]['Reason'] == 'DependencyNeverSatisfied',
        30,
        'the merge to wait on the failed task',
    )
    assert not out.exists()

    broken.write_bytes(good_bytes)
    reference = tmp_path / 'single' / 'cache.h5'
    reference.parent.mkdir()
    single = _single_process_run(cohort, reference)  # runs while the cluster works
    rerun_id, same_merge = submit_helper(
        'preprocess',
        ['--shards', str(SHARDS), '--tasks', failed[0], '--merge-job', merge_id, *args],
        tmp_path,
        env,
    )
    assert same_merge == merge_id
    rerun = Job(rerun_id, tmp_path / 'slurm-ctclip-preprocess-%A_%a.out')
    assert_completed(rerun, wait_done(rerun, timeout=90))
    merge = Job(merge_id, tmp_path / 'slurm-ctclip-preprocess-merge-%j.out')
    assert_completed(merge, wait_done(merge, timeout=60))

    shard = int(failed[0])
    summaries = list(out_dir.glob(f'cache.shard{shard:04d}-of-{SHARDS:04d}*summary.json'))
    assert summaries, sorted(p.name for p in out_dir.iterdir())
    summary = json.loads(summaries[0].read_text(encoding='utf-8'))
    assert summary['failed'] == 0 and summary['ok'] == 1, (
        summary
    )  # only the repaired volume was new
    assert summary['skipped'] == summary['total'] - 1 >= 1, (
        summary
    )  # the rest was kept from the first try

    output, _ = single.communicate(timeout=120)
    assert single.returncode == 0, output
    _assert_same_cache(out, reference)
