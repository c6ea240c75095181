"""slurm/label.sbatch on the local Slurm cluster, against an OpenAI-compatible server on the node.

The job starts the server itself (--server-cmd, port from the job id), labels slowly, gets the
time-limit warning (USR1 to the batch shell, as --signal=B:USR1@120 sends it), stops, requeues
itself, and the requeued run starts the server again and finishes from the response cache: no
report is asked twice (beyond the one in flight) and the outputs cover every report.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_labeling.schema import FINDINGS
from tests.conftest import llama_model_path
from tests.slurm.conftest import (
    Job,
    assert_completed,
    job_states,
    make_eligible_now,
    submit,
    wait_done,
    wait_for,
)

N_REPORTS = 8
STUB = Path(__file__).with_name('openai_stub.py')

pytestmark = pytest.mark.slurm


def _write_reports(path: Path, n: int = N_REPORTS) -> None:
    with path.open('w', encoding='utf-8', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                'VolumeName',
                'ClinicalInformation_EN',
                'Technique_EN',
                'Findings_EN',
                'Impressions_EN',
            ]
        )
        for i in range(n):
            findings = (
                f'Case {i}: a {4 + i} mm nodule in the right upper lobe. No pleural effusion.'
            )
            writer.writerow(
                [f'valid_{i}_a_1.nii.gz', 'Not given.', 'Not given.', findings, 'Nodule.']
            )


def _requests(log: Path) -> int:
    return len(log.read_text(encoding='utf-8').splitlines()) if log.exists() else 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_label_job_requeues_and_finishes_from_the_cache(slurm_cluster, tmp_path):
    reports, out, request_log = (
        tmp_path / 'reports.csv',
        tmp_path / 'labels',
        tmp_path / 'requests.log',
    )
    _write_reports(reports)
    server = (
        f'{sys.executable} {STUB} --host {{host}} --port {{port}} --latency 0.7 --log {request_log}'
    )
    job = submit(
        'label.sbatch',
        [
            '--server-cmd',
            server,
            '--',
            '--reports',
            str(reports),
            '--out-dir',
            str(out),
            '--model',
            'stub',
            '--concurrency',
            '1',
        ],
        ['--time=10', '--cpus-per-task=1'],
        tmp_path,
        env={'CTCLIP_LOG_DIR': tmp_path, 'CTCLIP_RESIGNAL_S': 2},
    )
    deadline = time.monotonic() + 90
    while _requests(request_log) < 2:  # labeling is under way
        assert time.monotonic() < deadline, f'no requests reached the server\n{job.logs()}'
        assert _running_or_pending(job), job.logs()
        time.sleep(0.2)
    subprocess.run(['scancel', '--batch', '--signal=USR1', job.id], check=True)
    wait_for(
        job.id,
        lambda s: s[job.id]['JobState'] == 'PENDING' and int(s[job.id]['Restarts']) >= 1,
        60,
        'the job to requeue itself',
    )
    first_run = _requests(request_log)
    assert first_run < N_REPORTS, (
        f'the first run labelled everything before the signal ({first_run})'
    )
    make_eligible_now(job.id)
    states = wait_done(job, timeout=120)
    assert_completed(job, states)

    log = job.logs()
    assert 'USR1' in log and 'requeueing job' in log, log
    assert log.count('starting the LLM server') == 2, log
    assert log.count('stopping the LLM server') == 2, log
    # stopped before the requeue, not left to the EXIT trap that races with the job's teardown
    assert log.index('stopping the LLM server') < log.index('requeueing job'), log
    total = _requests(request_log)
    assert total <= N_REPORTS + 1, (
        f'{total} requests for {N_REPORTS} reports: the cache was not used\n{log}'
    )
    assert total - first_run < N_REPORTS, log

    with (out / 'labels.csv').open(encoding='utf-8') as f:
        rows = list(csv.DictReader(f))
    assert [r['report_id'] for r in rows] == [f'valid_{i}_a_1.nii.gz' for i in range(N_REPORTS)]
    assert all(r[name] != '' for r in rows for name in FINDINGS), 'a report was left unlabelled'
    assert len((out / 'evidence.jsonl').read_text(encoding='utf-8').splitlines()) == N_REPORTS
    meta = json.loads((out / 'labels.meta.json').read_text(encoding='utf-8'))
    assert meta['backend'] == 'openai', meta


def _running_or_pending(job: Job) -> bool:
    return job_states(job.id).get(job.id, {}).get('JobState') in (
        'PENDING',
        'RUNNING',
        'CONFIGURING',
    )


@pytest.mark.slow
@pytest.mark.llamacpp
@pytest.mark.timeout(400)
def test_label_job_serves_a_gguf_with_llama_cpp_on_its_node(slurm_cluster, tmp_path):
    model = llama_model_path()
    reports, out = tmp_path / 'reports.csv', tmp_path / 'labels'
    _write_reports(reports, n=2)
    server = (
        f'{sys.executable} -m llama_cpp.server --model {model} --chat_format gemma --n_ctx 1024 '
        '--host {host} --port {port} --verbose False'
    )
    job = submit(
        'label.sbatch',
        ['--server-cmd', server, '--', '--reports', str(reports), '--out-dir', str(out), '--model', 'gemma',
         '--concurrency', '2', 'max_tokens=300', 'max_reasks=0',
         # a 270M model may not answer in the schema: the job's subject is serving it, so its
         # failed reports are allowed (and checked below to be listed, never silently 0)
         'failures.max_fraction=1'],
        ['--time=10', '--cpus-per-task=1'],
        tmp_path,
        env={'CTCLIP_LOG_DIR': tmp_path},
    )  # fmt: skip
    assert_completed(job, wait_done(job, timeout=300))
    log = job.logs()
    assert 'LLM server ready' in log and 'stopping the LLM server' in log, log
    with (out / 'labels.csv').open(encoding='utf-8') as f:
        rows = list(csv.DictReader(f))
    assert [r['report_id'] for r in rows] == ['valid_0_a_1.nii.gz', 'valid_1_a_1.nii.gz']
    failed = {
        line.split(',')[0]
        for line in (out / 'failures.csv').read_text(encoding='utf-8').splitlines()[1:]
    }
    for row in (
        rows
    ):  # a base model may not answer in the schema: then the report is listed, never a silent 0
        values = {row[name] for name in FINDINGS}
        assert values == {''} if row['report_id'] in failed else values <= {'1', '0', '-1'}, row
    assert json.loads((out / 'labels.meta.json').read_text(encoding='utf-8'))['backend'] == 'openai'
