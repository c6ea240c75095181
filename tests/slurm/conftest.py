"""A real local Slurm cluster for the tests, and helpers to submit jobs, wait for them and read logs.

The cluster is ../shared/tools/slurm-local.sh (slurmctld + nodes n1, n2 on loopback addresses of
this machine). The session fixture installs it when it is missing and it can (root + apt), starts
it, and stops it at the end; a cluster that was already running is used and left running. Where it
cannot start, every test here skips with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED

SLURM_DIR = ROOT / 'slurm'
SLURM_LOCAL = SHARED / 'tools' / 'slurm-local.sh'
SLURM_ROOT = Path(os.environ.get('SLURM_LOCAL_ROOT', '/tmp/slurm-local'))
RESTART_DELAY_S = 3  # > 1 s: see make_eligible_now
FINAL_STATES = {
    'COMPLETED',
    'FAILED',
    'CANCELLED',
    'TIMEOUT',
    'NODE_FAIL',
    'OUT_OF_MEMORY',
    'BOOT_FAIL',
    'DEADLINE',
    'PREEMPTED',
}


def _run(cmd: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _cluster_up() -> bool:
    if not shutil.which('scontrol'):
        return False
    return (
        _run(['scontrol', 'ping'], timeout=10).returncode == 0
        and 'UP' in _run(['scontrol', 'ping']).stdout
    )


def _install_reason() -> str | None:
    """Install the Slurm packages if needed; the reason when that is impossible."""
    if shutil.which('slurmctld') and shutil.which('sbatch'):
        return None
    if os.geteuid() != 0:
        return 'Slurm is not installed and installing it needs root'
    if not shutil.which('apt-get'):
        return 'Slurm is not installed and this machine has no apt-get (Debian packages)'
    result = _run(['bash', str(SLURM_LOCAL), 'install'], timeout=600)
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        _run(['apt-get', 'update', '-q'], timeout=600)
        result = _run(['bash', str(SLURM_LOCAL), 'install'], timeout=600)
    if result.returncode != 0 or not shutil.which('sbatch'):
        return f'installing Slurm failed: {result.stderr[-500:]}'
    return None


@pytest.fixture(scope='session')
def slurm_cluster():
    """The running cluster (started here unless it already was), stopped again at the end."""
    if not SLURM_LOCAL.is_file():
        pytest.skip(
            f'needs {SLURM_LOCAL} (../shared is only present on development and CI machines)'
        )
    if _cluster_up():
        yield SLURM_ROOT
        return
    reason = _install_reason()
    if reason:
        pytest.skip(reason)
    started = _run(['bash', str(SLURM_LOCAL), 'start'], timeout=120)
    if started.returncode != 0 or not _cluster_up():
        pytest.skip(
            f'the local Slurm cluster did not start: {(started.stdout + started.stderr)[-1500:]}'
        )
    try:
        yield SLURM_ROOT
    finally:
        _run(['bash', str(SLURM_LOCAL), 'stop'], timeout=120)


@dataclass
class Job:
    """One submitted job (or array) and where its output goes."""

    id: str
    log: Path

    def logs(self) -> str:
        """Every output file of this job (all array tasks), for assertion messages."""
        pattern = self.log.name.replace('%A', self.id).replace('%j', self.id).replace('%a', '*')
        texts = [
            f'--- {p.name}\n{p.read_text(errors="replace", encoding="utf-8")}'
            for p in sorted(self.log.parent.glob(pattern))
        ]
        return '\n'.join(texts) or f'(no output file {self.log})'


def submit(
    script: str, args: list[str], sbatch: list[str], log_dir: Path, env: dict | None = None
) -> Job:
    """Submit slurm/<script> with --export=NONE (as on a real cluster) plus `env`; returns the job."""
    log = log_dir / (
        'slurm-%A_%a.out' if any(s.startswith('--array') for s in sbatch) else 'slurm-%j.out'
    )
    export = ','.join(['NONE', *(f'{k}={v}' for k, v in (env or {}).items())])
    cmd = [
        'sbatch',
        '--parsable',
        f'--export={export}',
        f'--output={log}',
        *sbatch,
        str(SLURM_DIR / script),
        *args,
    ]
    result = _run(cmd, timeout=60, cwd=log_dir)
    assert result.returncode == 0, f'{cmd} failed: {result.stderr}'
    return Job(result.stdout.strip().split(';')[0], log)


def submit_helper(kind: str, args: list[str], log_dir: Path, env: dict | None = None) -> list[str]:
    """slurm/submit.sh KIND ARGS; returns the job ids it prints."""
    result = _run(
        ['bash', str(SLURM_DIR / 'submit.sh'), kind, *args], timeout=60, cwd=log_dir, env=env
    )
    assert result.returncode == 0, f'submit.sh {kind} failed: {result.stderr}'
    return result.stdout.split()


def job_states(job_id: str) -> dict[str, dict[str, str]]:
    """JobId -> fields of `scontrol show job -o` (one entry per array task)."""
    result = _run(['scontrol', 'show', 'job', '-o', job_id], timeout=30)
    states = {}
    for line in result.stdout.splitlines():
        fields = dict(re.findall(r'(\w+)=(\S*)', line))
        if 'JobId' in fields:
            states[fields['JobId']] = fields
    return states


def wait_for(
    job_id: str, predicate, timeout: float, what: str, poll: float = 0.5
) -> dict[str, dict[str, str]]:
    """Poll the job until predicate(states) is true; fail with its states after `timeout` s."""
    deadline = time.monotonic() + timeout
    states: dict[str, dict[str, str]] = {}
    while time.monotonic() < deadline:
        states = job_states(job_id)
        if states and predicate(states):
            return states
        time.sleep(poll)
    summary = {k: (v.get('JobState'), v.get('Reason')) for k, v in states.items()}
    pytest.fail(
        f'job {job_id}: timed out after {timeout:.0f} s waiting for {what}; states {summary}\n{slurm_log_tail()}'
    )


def wait_done(job: Job, timeout: float) -> dict[str, dict[str, str]]:
    """Wait until every task of the job is in a final state; return the states."""
    return wait_for(
        job.id,
        lambda s: all(v['JobState'] in FINAL_STATES for v in s.values()),
        timeout,
        'the end of the job',
    )


def assert_completed(job: Job, states: dict[str, dict[str, str]]) -> None:
    bad = {
        k: (v['JobState'], v.get('ExitCode'))
        for k, v in states.items()
        if v['JobState'] != 'COMPLETED'
    }
    assert not bad, f'job {job.id} did not complete: {bad}\n{job.logs()}\n{slurm_log_tail()}'


def slurm_log_tail(lines: int = 15) -> str:
    """The end of the daemons' logs, for failure messages."""
    parts = []
    for log in sorted((SLURM_ROOT / 'log').glob('*.log')):
        text = log.read_text(errors='replace', encoding='utf-8').splitlines()[-lines:]
        parts.append(f'--- {log.name}\n' + '\n'.join(text))
    return '\n'.join(parts)


def make_eligible_now(job_id: str, time_limit_min: int | None = None) -> None:
    """Cut Slurm's ~2-minute hold on a requeued job to a few seconds.

    Slurm holds the job so that the old run's revoked credential cannot catch the new one. slurmd
    compares whole seconds, so a requeued run launched within the second of the revocation is
    killed with "Job credential revoked" (seen in CI): start it RESTART_DELAY_S seconds from now.
    With `time_limit_min` the requeued run also gets a new limit (so a test's short first limit
    does not interrupt it again).
    """
    limit = [f'TimeLimit={time_limit_min}'] if time_limit_min else []
    start = f'StartTime=now+{RESTART_DELAY_S}'
    result = _run(['scontrol', 'update', f'JobId={job_id}', start, *limit], timeout=30)
    assert result.returncode == 0, result.stderr
