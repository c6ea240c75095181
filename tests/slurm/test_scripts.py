"""The Slurm scripts without a cluster: syntax, site config, argument checks, the submit helper's flags.

These run everywhere in a second. The behaviour on a real scheduler is in the other test files;
here `sbatch`/`scontrol` are small recorders on PATH, because what is checked is which flags we
pass, not what Slurm does with them.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

SLURM_DIR = ROOT / 'slurm'
SCRIPTS = sorted(SLURM_DIR.glob('*.sbatch')) + sorted(SLURM_DIR.glob('*.sh'))


def _bash(script: str, env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ['bash', '-c', script], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


def _fake_venv(root: Path) -> Path:
    python = root / 'venv' / 'bin' / 'python'
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\nexit 0\n', encoding='utf-8')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return python.parent.parent


@pytest.mark.parametrize('script', SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_scripts_parse(script):
    result = subprocess.run(['bash', '-n', str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_site_config_then_environment_then_defaults(tmp_path):
    venv = _fake_venv(tmp_path)
    site = tmp_path / 'site.sh'
    site.write_text(
        f'CTCLIP_VENV={venv}\nCTCLIP_PORT_BASE=20000\nCTCLIP_LAUNCHER=torchrun\n', encoding='utf-8'
    )
    env = {'PATH': '/usr/bin:/bin', 'SLURM_JOB_ID': '1234', 'CTCLIP_SLURM_DIR': str(SLURM_DIR),
           'CTCLIP_SITE': str(site), 'CTCLIP_LAUNCHER': 'deepspeed', 'HOME': str(tmp_path)}  # fmt: skip
    result = _bash(
        'source "$CTCLIP_SLURM_DIR/common.sh" && ctclip_setup && '
        'echo "$CTCLIP_VENV|$CTCLIP_LAUNCHER|$(ctclip_port 1)|$SLURM_EXPORT_ENV|${PATH##*:}|$CTCLIP_PYTHON|$HF_HUB_OFFLINE"',
        env,
    )
    assert result.returncode == 0, result.stderr
    venv_got, launcher, port, export, last_path, python, offline = result.stdout.strip().split('|')
    assert venv_got == str(venv)  # from the site file
    assert launcher == 'deepspeed'  # the environment wins over the site file
    assert int(port) == 20000 + (1234 % 5000) * 3 + 1
    assert export == 'ALL'  # srun steps inherit the job's environment under --export=NONE
    assert last_path == f'{venv}/bin' and python == f'{venv}/bin/python'  # called by full path
    assert offline == '1'


@pytest.mark.parametrize(
    ('site_text', 'message'),
    [
        ('CTCLIP_VENV=/nonexistent/venv\n', 'no Python at /nonexistent/venv/bin/python'),
        (
            'CTCLIP_CONTAINER=/nonexistent/ctclip.sif\n',
            'CTCLIP_CONTAINER=/nonexistent/ctclip.sif does not exist',
        ),
        ('CTCLIP_MODULES="cuda/12"\n', "'module' command"),
    ],
)
def test_bad_site_settings_are_named(tmp_path, site_text, message):
    site = tmp_path / 'site.sh'
    site.write_text(site_text, encoding='utf-8')
    env = {
        'PATH': '/usr/bin:/bin',
        'SLURM_JOB_ID': '7',
        'CTCLIP_SLURM_DIR': str(SLURM_DIR),
        'CTCLIP_SITE': str(site),
    }
    result = _bash('source "$CTCLIP_SLURM_DIR/common.sh" && ctclip_setup', env)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_missing_site_file_is_named(tmp_path):
    env = {'PATH': '/usr/bin:/bin', 'SLURM_JOB_ID': '7', 'CTCLIP_SLURM_DIR': str(SLURM_DIR),
           'CTCLIP_SITE': str(tmp_path / 'nope.sh')}  # fmt: skip
    result = _bash('source "$CTCLIP_SLURM_DIR/common.sh" && ctclip_setup', env)
    assert (
        result.returncode == 2 and f'site config {tmp_path}/nope.sh does not exist' in result.stderr
    )


@pytest.mark.parametrize(
    ('script', 'args', 'extra_env', 'message'),
    [
        ('preprocess_array.sbatch', ['--shards', '4', '--', '--input', 'x'], {'SLURM_ARRAY_TASK_ID': '5'},
         'array task 5 is outside --shards 4'),
        ('preprocess_array.sbatch', ['--', '--input', 'x'],
         {'SLURM_ARRAY_TASK_ID': '2', 'SLURM_ARRAY_TASK_MIN': '2', 'SLURM_ARRAY_TASK_MAX': '2', 'SLURM_ARRAY_TASK_COUNT': '1'},
         'pass --shards N'),
        ('preprocess_array.sbatch', ['--shards', 'four'], {'SLURM_ARRAY_TASK_ID': '0'}, "not 'four'"),
        ('preprocess_merge.sbatch', ['--shards', '3'], {}, '--out is required'),
        ('train_multinode.sbatch', ['--launcher', 'mpirun', '--', '--config', 'c.yaml'], {},
         "--launcher must be torchrun or deepspeed, not 'mpirun'"),
        ('train_multinode.sbatch', ['--procs-per-node', '0', '--', '--config', 'c.yaml'], {}, 'positive integer'),
        ('train_multinode.sbatch', [], {}, 'no ctclip train arguments'),
        ('label.sbatch', ['--', '--reports', 'r.csv'], {}, 'no endpoint'),
        ('label.sbatch', ['--base-url', 'http://h/v1', '--', '--backend', 'rules'], {}, 'not --base-url/--backend after --'),
        ('bench.sbatch', ['--fast'], {}, "unknown option '--fast'"),
    ],
)  # fmt: skip
def test_script_arguments_are_checked(tmp_path, script, args, extra_env, message):
    env = {'PATH': os.environ['PATH'], 'HOME': str(tmp_path), 'SLURM_JOB_ID': '11', 'SLURM_JOB_NODELIST': 'n1',
           'SLURM_JOB_NUM_NODES': '1', 'CTCLIP_SLURM_DIR': str(SLURM_DIR),
           'CTCLIP_VENV': str(_fake_venv(tmp_path)), **extra_env}  # fmt: skip
    result = subprocess.run(['bash', str(SLURM_DIR / script), *args], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=60)  # fmt: skip
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr, result.stderr


@pytest.fixture
def recorder(tmp_path) -> tuple[dict, Path]:
    """PATH with `sbatch` and `scontrol` that append their arguments to calls.log."""
    bin_dir, log = tmp_path / 'bin', tmp_path / 'calls.log'
    bin_dir.mkdir()
    for name, reply in (('sbatch', 'echo $((99 + $(wc -l < "$LOG")))'), ('scontrol', 'true')):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/bash\necho "{name} $*" >> "$LOG"\n{reply}\n', encoding='utf-8')
        tool.chmod(0o755)
    env = {'PATH': f'{bin_dir}:/usr/bin:/bin', 'LOG': str(log), 'HOME': str(tmp_path)}
    log.touch()
    return env, log


def test_submit_turns_the_site_config_into_flags(tmp_path, recorder):
    env, log = recorder
    site = tmp_path / 'site.sh'
    site.write_text('CTCLIP_PARTITION=gpu\nCTCLIP_ACCOUNT=rad\nCTCLIP_GPUS_PER_NODE=4\n'
                    "CTCLIP_TIME_TRAIN=12:00:00\nCTCLIP_SBATCH_ARGS='--constraint=a100 --exclusive'\n", encoding='utf-8')  # fmt: skip
    env['CTCLIP_SITE'] = str(site)
    result = _bash(
        f'{SLURM_DIR}/submit.sh train --nodes=4 -- --launcher deepspeed -- --config c.yaml', env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '100'
    call = log.read_text(encoding='utf-8')
    for flag in ('--partition=gpu', '--account=rad', '--gpus-per-node=4', '--time=12:00:00', '--constraint=a100',
                 '--exclusive', f'--export=NONE,CTCLIP_SITE={site}', '--nodes=4'):  # fmt: skip
        assert f' {flag} ' in call, (flag, call)
    assert call.rstrip().endswith(
        f'{SLURM_DIR}/train_multinode.sbatch --launcher deepspeed -- --config c.yaml'
    )
    assert call.index('--time=12:00:00') < call.index(
        '--nodes=4'
    )  # the user's own options come last


def test_submit_preprocess_wires_the_merge_and_reruns(tmp_path, recorder):
    env, log = recorder
    out = tmp_path / 'cache.h5'
    args = ['--', '--input', 'cohort', '--out', str(out)]
    result = subprocess.run(['bash', str(SLURM_DIR / 'submit.sh'), 'preprocess', '--shards', '4', *args],
                            capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ['100', '101']
    array, merge = log.read_text(encoding='utf-8').splitlines()
    assert (
        '--array=0-3' in array and 'preprocess_array.sbatch --shards 4 -- --input cohort' in array
    )
    assert (
        '--dependency=afterok:100' in merge
        and f'preprocess_merge.sbatch --shards 4 --out {out}' in merge
    )
    assert '--gpus-per-node' not in array + merge

    rerun = subprocess.run(['bash', str(SLURM_DIR / 'submit.sh'), 'preprocess', '--shards', '4', '--tasks', '2',
                            '--merge-job', '101', *args], capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.split() == ['102', '101']
    calls = log.read_text(encoding='utf-8').splitlines()[2:]
    assert (
        '--array=2 ' in calls[0] + ' '
        and calls[1] == 'scontrol update JobId=101 Dependency=afterok:102'
    )


@pytest.mark.parametrize(
    ('args', 'message'),
    [
        (['deploy'], "must be preprocess, train, label or bench, not 'deploy'"),
        (['preprocess', '--', '--out', 'x.h5'], 'needs --shards N'),
        (['preprocess', '--shards', '4', '--', '--input', 'c'], 'must include --out'),
    ],
)
def test_submit_rejects_bad_requests(recorder, args, message):
    env, log = recorder
    result = subprocess.run(
        ['bash', str(SLURM_DIR / 'submit.sh'), *args], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert log.read_text(encoding='utf-8') == ''


@pytest.mark.parametrize('when', ['before the step', 'during the step'])
def test_warning_signal_runs_clean_up_then_requeues(tmp_path, recorder, when):
    """USR1 stops the step (or keeps it from starting), then clean-up runs, then the job requeues."""
    env, log = recorder
    env |= {'SLURM_JOB_ID': '11', 'CTCLIP_SLURM_DIR': str(SLURM_DIR), 'CTCLIP_RESIGNAL_S': '1',
            'CTCLIP_VENV': str(_fake_venv(tmp_path))}  # fmt: skip
    step = (
        'trap "echo step stopped >> $LOG; exit 0" USR1; echo step started >> $LOG; '
        'while :; do sleep 0.1; done'
    )
    signal = (
        'kill -USR1 $$'
        if when == 'before the step'
        else '(while ! grep -q "step started" "$LOG"; do sleep 0.1; done; kill -USR1 $$) &'
    )
    script = (
        'source "$CTCLIP_SLURM_DIR/common.sh" && ctclip_setup\n'
        'clean_up() { echo clean-up >> "$LOG"; }\n'
        'ctclip_on_exit clean_up\n'
        f'{signal}\n'
        f"ctclip_run_step bash -c '{step}'\n"
        'echo not reached >> "$LOG"\n'
    )
    result = _bash(script, env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    calls = log.read_text(encoding='utf-8').splitlines()
    ran = ['step started', 'step stopped'] if when == 'during the step' else []
    assert calls == [*ran, 'clean-up', 'scontrol requeue 11'], (calls, result.stderr)
    assert 'requeueing job 11' in result.stderr
