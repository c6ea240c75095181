"""The real thing: llama-cpp-python's OpenAI-compatible server (and in-process backend) with gemma-3-270m.

A base model this small labels badly, so these tests check plumbing, not accuracy: every report
ends up labelled with valid values and substring-checked quotes, or listed as a failure with its
reason; reruns come from the cache. They skip, with the reason, where llama.cpp cannot run.
"""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from llm_labeling.runner import label_reports
from llm_labeling.schema import FINDINGS
from tests.conftest import llama_model_path
from tests.llm_labeling.helpers import openai_cfg, read_jsonl, read_labels, write_ctrate_csv

# A 270M model on 2 CPU cores decodes about 10-50 tokens/s, and one evidence answer is ~300 tokens.
pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]

ROWS = [
    (
        'v_1_a_1',
        'There is a 6 mm nodule in the right upper lobe. No pleural effusion.',
        'Not given.',
    ),
    (
        'v_1_a_2',
        'There is a 6 mm nodule in the right upper lobe. No pleural effusion.',
        'Not given.',
    ),
    ('v_2_a_1', 'The heart is enlarged. Bilateral pleural effusion.', 'Cardiomegaly.'),
]
# Short generations keep the tests in budget; a cut-off answer is a listed failure, which is fine.
SMALL = {'max_tokens': 200, 'max_reasks': 0, 'concurrency': 2, 'timeout': 300.0}
NO_RETRY = {'max_retries': 0, 'initial_delay': 0.01}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def gguf() -> Path:
    return llama_model_path()


@pytest.fixture(scope='module')
def llama_server(gguf):
    port = _free_port()
    cmd = [sys.executable, '-m', 'llama_cpp.server', '--model', str(gguf), '--chat_format',
           'gemma', '--n_ctx', '1024', '--host', '127.0.0.1', '--port', str(port),
           '--verbose', 'False']  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f'http://127.0.0.1:{port}/v1'
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f'{url}/models', timeout=1).read()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f'llama_cpp.server did not start: {server.stderr.read()[-2000:]!r}')
            time.sleep(0.3)
    yield url
    server.terminate()
    server.wait(timeout=30)


def check_outputs(out: Path, rows) -> tuple[int, int]:
    """Every report labelled (18 values) xor listed as failed; quotes are report substrings."""
    labels = read_labels(out / 'labels.csv')
    assert list(labels) == [r[0] for r in rows]
    with (out / 'failures.csv').open(newline='', encoding='utf-8') as f:
        failed = {row['report_id'] for row in csv.DictReader(f)}
    texts = {rid: f'{a}\n{b}' if b != 'Not given.' else a for rid, a, b in rows}
    for rid, values in labels.items():
        if rid in failed:
            assert values == [''] * len(FINDINGS)
        else:
            assert len(values) == len(FINDINGS) and set(values) <= {'1', '0', '-1'}
    for record in read_jsonl(out / 'evidence.jsonl'):
        assert record['report_id'] not in failed
        for item in record['findings']:
            assert item['finding'] in FINDINGS
            if item['quote'] is not None:
                assert item['quote'] in texts[record['report_id']]
    return len(labels) - len(failed), len(failed)


def test_server_evidence_schema_and_cache(tmp_path, llama_server):
    rows = ROWS[:2]  # one text, two ids
    reports = write_ctrate_csv(tmp_path / 'r.csv', rows)
    cfg = openai_cfg(
        reports, tmp_path / 'out', llama_server, model='gemma-3-270m', retry=NO_RETRY, **SMALL
    )
    out = label_reports(cfg)
    meta = json.loads((out / 'labels.meta.json').read_text(encoding='utf-8'))
    assert meta['counts']['unique_texts'] == 1 and meta['counts']['requests'] == 1
    ok, failed = check_outputs(out, rows)
    assert (ok, failed) in ((2, 0), (0, 2))
    if failed:  # the only acceptable failure of a grammar-constrained answer: cut off or misquoted
        failures = (out / 'failures.csv').read_text(encoding='utf-8')
        assert 'invalid output' in failures or 'output cut off at max_tokens' in failures, failures
        return
    assert meta['tokens']['prompt'] > 0 and meta['tokens']['completion'] > 0
    label_reports(cfg)  # a rerun is answered from the cache
    meta = json.loads((out / 'labels.meta.json').read_text(encoding='utf-8'))
    assert meta['counts']['cache_hits'] == 1 and meta['counts']['requests'] == 0


def test_server_li_prompt(tmp_path, llama_server):
    reports = write_ctrate_csv(tmp_path / 'r.csv', ROWS[2:])
    cfg = openai_cfg(
        reports, tmp_path / 'out', llama_server, model='gemma-3-270m', prompt='li',
        retry=NO_RETRY, **{**SMALL, 'max_tokens': 48},
    )  # fmt: skip
    out = label_reports(cfg)
    check_outputs(out, ROWS[2:])
    failures = (out / 'failures.csv').read_text(encoding='utf-8')
    assert (
        'invalid output' in failures
        or 'output cut off at max_tokens' in failures
        or failures.count('\n') == 1
    ), failures


def test_in_process_backend(tmp_path, gguf):
    reports = write_ctrate_csv(tmp_path / 'r.csv', ROWS[:1])
    cfg = {
        'reports': str(reports),
        'out_dir': str(tmp_path / 'out'),
        'backend': 'llamacpp',
        'llamacpp': {'model_path': str(gguf), 'n_ctx': 1024},
        'progress': False,
        'retry': NO_RETRY,
        **SMALL,
    }
    out = label_reports(cfg)
    check_outputs(out, ROWS[:1])
    assert json.loads((out / 'labels.meta.json').read_text(encoding='utf-8'))['model'] == gguf.name
