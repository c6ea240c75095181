"""slurm/train_multinode.sbatch on the local Slurm cluster: 2 nodes, gloo on CPU, stage 2 small.

Two jobs run side by side on n1 + n2 with the same config and seed:
- an uninterrupted run through the DeepSpeed launcher (one per-node launcher started by srun);
- a run through srun + torchrun (c10d rendezvous) with a 2-minute limit and the warning signal
  80 s before it: it checkpoints on the signal, requeues itself and resumes.
The step count continues across the requeue and the losses equal the uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.slurm.conftest import (
    FINAL_STATES,
    ROOT,
    assert_completed,
    job_states,
    make_eligible_now,
    submit,
    wait_done,
    wait_for,
)

# The first run must still be training when the warning comes, and the warning must not come before
# the batch script runs. slurmctld checks time limits every 30 s and sends --signal=B:USR1@N at the
# first check that finds the job within N + 30 s of its limit: USR1@110 of a 2-minute limit went out
# at the first check, which can fall in the instant between allocation and the script's start, and
# the signal was lost (CI, once). USR1@80 arrives 10-40 s after the start (measured: 8 jobs, 8-34 s
# after the start with USR1@85); 300 steps take 60-90 s. A signal during start-up is re-sent.
STEPS = 300

pytestmark = pytest.mark.slurm


def _build_deepspeed_ops() -> None:
    """JIT-build DeepSpeed's CPU comm op here, before the jobs start (a no-op when it is built).

    Otherwise the first job pays the compile inside its time limit, and a job killed mid-build
    leaves a lock file that hangs every later DeepSpeed start. The jobs resolve `ninja` on the
    same PATH as this process (slurm/common.sh puts the venv last), so they reuse this build.
    """
    env = {**os.environ, 'DS_ACCELERATOR': 'cpu'}
    code = 'from deepspeed.comm.torch import build_shm_op; build_shm_op()'
    result = subprocess.run(
        [sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope='module')
def two_runs(slurm_cluster, tmp_path_factory):
    """Submit both jobs at once (they share the nodes); returns (folder, reference job, time-limited job)."""
    from tests.ctclip.training_data import make_cohort

    _build_deepspeed_ops()
    root = tmp_path_factory.mktemp('train')
    data = make_cohort(root / 'data', n_train=8, n_valid=4)

    def train_args(out: Path) -> list[str]:
        return [
            '--config', str(ROOT / 'ctclip' / 'configs' / 'train' / 'stage2-evidence-small.yaml'),
            f'data.cache={data["cache"]}', f'data.labels={data["labels"]}', f'data.reports={data["reports"]}',
            f'data.evidence={data["evidence"]}', f'train.output_dir={out}', f'train.steps={STEPS}',
            'model.name=resnet3d-tiny-tinybert', 'train.pseudo_labels=false', 'data.batch_size=2',
            'data.num_workers=0', 'train.log_every=1', 'train.ckpt_every=100', 'train.eval_every=0',
            'train.progress=false',
        ]  # fmt: skip

    common = ['--nodes=2', '--cpus-per-task=1']
    reference = submit(
        'train_multinode.sbatch', ['--launcher', 'deepspeed', '--', *train_args(root / 'reference')],
        [*common, '--time=10'], root,
    )  # fmt: skip
    limited = submit(
        'train_multinode.sbatch', ['--launcher', 'torchrun', '--', *train_args(root / 'limited')],
        [*common, '--time=2', '--signal=B:USR1@80'], root, env={'CTCLIP_RESIGNAL_S': 2},
    )  # fmt: skip
    threading.Thread(target=_release_when_requeued, args=(limited.id,), daemon=True).start()
    return root, reference, limited


def _release_when_requeued(job_id: str, timeout: float = 900) -> None:
    """Let the requeued run start at once, with a longer limit, while the reference still runs.

    Slurm holds a requeued job for ~2 minutes; the first run's short limit only has to cause the
    one interruption under test.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_states(job_id).get(job_id, {})
        if state.get('JobState') in FINAL_STATES:
            return
        if int(state.get('Restarts', 0) or 0) >= 1 and state.get('JobState') == 'PENDING':
            make_eligible_now(job_id, time_limit_min=10)
            return
        time.sleep(0.5)


def _losses(run: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl (the last entry wins when a resumed run logs a step again)."""
    losses = {}
    for line in (run / 'metrics.jsonl').read_text(encoding='utf-8').splitlines():
        entry = json.loads(line)
        if 'loss' in entry:
            losses[int(entry['step'])] = float(entry['loss'])
    return losses


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_nodes_deepspeed_launcher_trains_and_checkpoints(two_runs):
    root, reference, _ = two_runs
    assert_completed(reference, wait_done(reference, timeout=500))
    log = reference.logs()
    for node in ('n1', 'n2'):  # one per-node launcher on each node, with its own node rank
        assert f'[launch_node {node}] node {int(node[1]) - 1}/2' in log, log
    assert "'n1': [0], 'n2': [1]" in log, log  # DeepSpeed's global rank of each node
    run = root / 'reference'
    assert (run / 'checkpoints' / 'latest').is_file()
    assert (run / 'final' / 'model.safetensors').is_file()
    assert sorted(_losses(run)) == list(range(1, STEPS + 1))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_time_limit_checkpoints_requeues_and_resumes_exactly(two_runs):
    root, reference, limited = two_runs
    wait_for(
        limited.id,
        lambda s: int(s[limited.id].get('Restarts', 0)) >= 1,
        300,
        'the job to checkpoint on the time-limit signal and requeue itself',
    )
    assert_completed(limited, wait_done(limited, timeout=500))
    log = limited.logs()
    assert 'USR1: time limit or preemption ahead' in log and 'requeueing job' in log, log
    assert 'restart=1' in log, log
    first = log.split('restart=1')[0]
    stopped = [line for line in first.splitlines() if 'Checkpointed at step' in line]
    assert stopped, f'the first run did not checkpoint on the signal\n{log}'
    step = int(stopped[0].split('Checkpointed at step')[1].split()[0])
    assert 0 < step < STEPS, log
    assert f'at step {step}' in log.split('restart=1')[1], (
        f'the requeued run did not resume from {step}\n{log}'
    )

    assert_completed(reference, wait_done(reference, timeout=500))
    got, want = _losses(root / 'limited'), _losses(root / 'reference')
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    for s in want:
        assert got[s] == pytest.approx(want[s], rel=1e-5, abs=1e-6), (
            f'step {s} (resumed after {step})'
        )
