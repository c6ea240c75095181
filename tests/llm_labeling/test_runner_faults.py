"""The openai backend against a real HTTP server on 127.0.0.1 that produces faults on purpose."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_labeling.backends import FatalBackendError
from llm_labeling.fake_server import (
    FakeChatServer,
    Reply,
    all_not_mentioned,
    completion,
    valid_reply,
)
from llm_labeling.responses import FIELD_NAMES
from llm_labeling.runner import OUTPUT_FILES, label_reports
from llm_labeling.schema import FINDINGS
from tests.llm_labeling.helpers import openai_cfg, read_jsonl, read_labels, write_ctrate_csv

ONE = [('r1', 'A 6 mm nodule in the right upper lobe.', 'Not given.')]


def scripted(*first: Reply | str):
    """Reply with `first` in order, then correctly; 'bad-quote' and 'truncated' are shorthands."""

    def responder(request: dict, n: int) -> Reply:
        if n >= len(first):
            return valid_reply(request, n)
        reply = first[n]
        if reply == 'bad-quote':
            answer = all_not_mentioned()
            answer['lung_nodule'] = {'status': 'present', 'quote': 'a 9 cm mass in the liver'}
            return Reply(body=completion(request, arguments=json.dumps(answer)))
        if reply == 'truncated':
            return Reply(body=completion(request, arguments=json.dumps(all_not_mentioned())[:70]))
        return reply

    return responder


def run_one(tmp_path: Path, responder, **extra) -> tuple[Path, FakeChatServer]:
    reports = write_ctrate_csv(tmp_path / 'one.csv', ONE)
    with FakeChatServer(responder) as server:
        out = label_reports(openai_cfg(reports, tmp_path / 'out', server.url, **extra))
    return out, server


def meta(out: Path) -> dict:
    return json.loads((out / 'labels.meta.json').read_text(encoding='utf-8'))


def test_429_waits_for_retry_after(tmp_path):
    limited = Reply(
        status=429, body={'error': {'message': 'slow down'}}, headers={'Retry-After': '1'}
    )
    out, server = run_one(tmp_path, scripted(limited))
    assert len(server.requests) == 2
    # the policy's own delay is 0.01 s: the 1 s gap can only come from Retry-After
    assert server.arrivals[1] - server.arrivals[0] >= 0.95
    assert read_labels(out / 'labels.csv')['r1'] == ['0'] * len(FINDINGS)
    assert meta(out)['counts']['requests'] == 2


@pytest.mark.parametrize(
    'fault',
    [
        Reply(status=500, body={'error': {'message': 'boom'}}),
        Reply(status=503, body=b'upstream unavailable'),
        Reply(body=b'{"id": "chatcmpl-x", "choices": [{"mess'),  # malformed body
    ],
    ids=['500', '503-text', 'malformed-body'],
)
def test_server_errors_are_retried(tmp_path, fault):
    out, server = run_one(tmp_path, scripted(fault, fault))
    assert len(server.requests) == 3
    assert read_labels(out / 'labels.csv')['r1'] == ['0'] * len(FINDINGS)
    assert (out / 'failures.csv').read_text(encoding='utf-8').splitlines() == [
        'report_id,reason,attempts'
    ]


def test_hang_past_timeout_is_retried(tmp_path):
    out, server = run_one(tmp_path, scripted(Reply(hang=True)), timeout=0.5)
    assert len(server.requests) == 2
    assert meta(out)['counts']['failed_reports'] == 0


@pytest.mark.parametrize('bad', ['bad-quote', 'truncated'])
def test_invalid_output_is_reasked(tmp_path, bad):
    out, server = run_one(tmp_path, scripted(bad))
    assert len(server.requests) == 2
    # instructor re-asks in the same conversation, with the validation error
    reask = json.dumps(server.requests[1]['messages'])
    assert len(server.requests[1]['messages']) > len(server.requests[0]['messages'])
    if bad == 'bad-quote':
        assert 'not an exact substring' in reask
    assert read_labels(out / 'labels.csv')['r1'] == ['0'] * len(FINDINGS)


@pytest.mark.parametrize(('finish', 'requests'), [('length', 1), ('tool_calls', 3)])
def test_answer_cut_off_at_max_tokens_fails_at_once_naming_the_setting(tmp_path, finish, requests):
    """OpenAI and vLLM say 'length'; llama.cpp's server says 'tool_calls' with the token count at
    the limit. instructor re-asks a malformed tool call (max_reasks=2), but the runner does not
    retry: the same request would be cut off at the same place."""

    def cut_off(request, n):
        body = completion(request, arguments=json.dumps(all_not_mentioned())[:200])
        body['choices'][0]['finish_reason'] = finish
        body['usage']['completion_tokens'] = request['max_tokens']
        return Reply(body=body)

    out, server = run_one(tmp_path, cut_off, max_tokens=300, max_reasks=2)
    assert len(server.requests) == requests
    assert read_labels(out / 'labels.csv')['r1'] == [''] * len(FINDINGS)
    failure = (out / 'failures.csv').read_text(encoding='utf-8').splitlines()[1]
    assert 'output cut off at max_tokens=300: raise max_tokens' in failure, failure
    assert failure.endswith(',1'), failure  # one attempt: no retries


def test_quote_is_checked_and_normalised_to_the_report(tmp_path):
    def responder(request, n):
        answer = all_not_mentioned()
        # case and spacing differ from the report: accepted as the report's exact span
        answer['lung_nodule'] = {
            'status': 'present',
            'quote': 'a 6 MM  nodule',
            'location': {'region': 'right upper lobe'},
        }
        return Reply(body=completion(request, arguments=json.dumps(answer)))

    out, _ = run_one(tmp_path, responder)
    labels = read_labels(out / 'labels.csv')['r1']
    assert labels[FINDINGS.index('Lung nodule')] == '1'
    (item,) = read_jsonl(out / 'evidence.jsonl')[0]['findings']
    assert item == {
        'finding': 'Lung nodule',
        'status': 'present',
        'quote': 'A 6 mm nodule',
        'location': {'side': None, 'region': 'right upper lobe', 'structure': None},
        'descriptors': {'size': None, 'severity': None, 'extent': None},
    }


def test_persistent_failure_is_listed_never_zero(tmp_path):
    always = lambda request, n: Reply(status=500, body={'error': {'message': 'down'}})  # noqa: E731
    out, server = run_one(tmp_path, always, retry={'max_retries': 2, 'initial_delay': 0.01})
    assert len(server.requests) == 3
    assert read_labels(out / 'labels.csv')['r1'] == [''] * len(FINDINGS)
    failures = (out / 'failures.csv').read_text(encoding='utf-8').splitlines()
    assert failures[1].startswith('r1,HTTP 500') and failures[1].endswith(',3')
    assert read_jsonl(out / 'evidence.jsonl') == []
    assert meta(out)['counts']['failed_reports'] == 1
    assert meta(out)['tokens'] == {'prompt': 0, 'completion': 0}


def test_bad_key_stops_the_run(tmp_path):
    denied = lambda request, n: Reply(status=401, body={'error': {'message': 'bad key'}})  # noqa: E731
    with pytest.raises(FatalBackendError, match='401'):
        run_one(tmp_path, denied)


def test_identical_texts_are_labelled_once_and_fanned_out(tmp_path, ctrate_csv):
    with FakeChatServer() as server:
        out = label_reports(openai_cfg(ctrate_csv, tmp_path / 'out', server.url))
    assert len(server.requests) == 4  # five rows, two share a text
    labels = read_labels(out / 'labels.csv')
    assert list(labels) == [r for r in labels]  # input order
    assert len(labels) == 5 and labels['valid_1_a_1.nii.gz'] == labels['valid_1_a_2.nii.gz']
    assert {e['report_id'] for e in read_jsonl(out / 'evidence.jsonl')} == set(labels)
    assert sorted(
        p.name for p in out.iterdir() if not p.name.startswith('response_cache')
    ) == sorted(OUTPUT_FILES)


def test_rerun_is_served_from_cache(tmp_path, ctrate_csv):
    with FakeChatServer() as server:
        cfg = openai_cfg(ctrate_csv, tmp_path / 'out', server.url)
        label_reports(cfg)
        first = (tmp_path / 'out' / 'labels.csv').read_text(encoding='utf-8')
        label_reports(cfg)
        assert len(server.requests) == 4  # the second run sent nothing
        assert meta(tmp_path / 'out')['counts']['cache_hits'] == 4
        assert (tmp_path / 'out' / 'labels.csv').read_text(encoding='utf-8') == first
        label_reports({**cfg, 'model': 'other-model'})  # a different key: asked again
        assert len(server.requests) == 8


def test_concurrency_is_bounded(tmp_path, many_reports):
    with FakeChatServer(latency=0.1) as server:
        label_reports(openai_cfg(many_reports(24), tmp_path / 'out', server.url, concurrency=6))
    assert server.max_in_flight == 6


def test_api_key_never_leaves_the_client(tmp_path, ctrate_csv, monkeypatch, caplog):
    secret = 'sk-test-DO-NOT-LEAK-1234567890'
    monkeypatch.setenv('CTCLIP_TEST_KEY', secret)
    always = lambda request, n: Reply(status=500, body={'error': {'message': 'x'}})  # noqa: E731
    caplog.set_level(logging.DEBUG)
    with FakeChatServer(scripted(*[always(None, 0)] * 2)) as server:
        cfg = openai_cfg(ctrate_csv, tmp_path / 'out', server.url, api_key_env='CTCLIP_TEST_KEY')
        label_reports(cfg)
    assert server.headers[0]['authorization'] == f'Bearer {secret}'
    for path in (tmp_path / 'out').iterdir():
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in caplog.text


def test_li_one_line_prompt(tmp_path):
    line = ','.join('1' if f == 'Lung nodule' else '0' for f in FINDINGS)

    def responder(request, n):
        assert 'tools' not in request
        content = 'Sure! Here are the labels:' if n == 0 else line
        return Reply(body=completion(request, content=content))

    out, server = run_one(tmp_path, responder, prompt='li')
    assert len(server.requests) == 2  # one re-ask for the unparseable first answer
    assert read_labels(out / 'labels.csv')['r1'][FINDINGS.index('Lung nodule')] == '1'
    assert meta(out)['prompt_version'].startswith('li-')


def test_empty_report_is_a_failure_not_a_zero(tmp_path):
    reports = write_ctrate_csv(tmp_path / 'r.csv', [('e1', 'Not given.', 'Not given.')] + ONE)
    with FakeChatServer() as server:
        out = label_reports(openai_cfg(reports, tmp_path / 'out', server.url))
    assert len(server.requests) == 1
    assert read_labels(out / 'labels.csv')['e1'] == [''] * len(FINDINGS)
    assert 'empty report text' in (out / 'failures.csv').read_text(encoding='utf-8')


def test_killed_run_resumes_without_repeating_finished_work(tmp_path, many_reports):
    reports, out = many_reports(60), tmp_path / 'out'
    with FakeChatServer(latency=0.08) as server:
        cfg = openai_cfg(reports, out, server.url, concurrency=2)
        code = 'import json, sys; from llm_labeling.runner import label_reports; label_reports(json.loads(sys.argv[1]))'
        child = subprocess.Popen([sys.executable, '-c', code, json.dumps(cfg)])
        db = out / 'response_cache.sqlite'
        deadline = time.monotonic() + 60
        done = 0
        while done < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
            if db.exists():
                try:
                    with sqlite3.connect(db) as con:
                        done = con.execute('SELECT COUNT(*) FROM responses').fetchone()[0]
                except sqlite3.OperationalError:
                    pass
        child.kill()
        child.wait()
        assert 10 <= done < 60, done
        assert not (out / 'labels.csv').exists()  # outputs appear only when a run completes
        with sqlite3.connect(db) as con:
            finished = con.execute('SELECT COUNT(*) FROM responses').fetchone()[0]
        before = len(server.requests)
        label_reports(cfg)
        assert len(server.requests) - before == 60 - finished
    assert meta(out)['counts']['cache_hits'] == finished
    assert len(read_labels(out / 'labels.csv')) == 60


@pytest.mark.parametrize('mode', ['tools', 'json', 'json_grammar'])
def test_instructor_modes(tmp_path, mode):
    out, server = run_one(tmp_path, valid_reply, mode=mode)
    request = server.requests[0]
    assert ('tools' in request) == (mode == 'tools')
    if mode == 'json_grammar':  # llama.cpp's form: the schema inside response_format
        assert request['response_format']['type'] == 'json_object'
        assert set(request['response_format']['schema']['required']) == set(FIELD_NAMES.values())
    assert meta(out)['instructor_mode'] == mode
    assert read_labels(out / 'labels.csv')['r1'] == ['0'] * len(FINDINGS)


def failure_rows(out: Path) -> list[list[str]]:
    import csv

    with (out / 'failures.csv').open(encoding='utf-8', newline='') as f:
        return list(csv.reader(f))[1:]


def _closed_port_url() -> str:
    """A port on 127.0.0.1 that nothing listens on: connecting is refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return f'http://127.0.0.1:{port}/v1'


def _label_cli(reports: Path, out: Path, url: str, *extra: str) -> list[str]:
    args = ['label', '--reports', str(reports), '--out-dir', str(out), '--backend', 'openai']
    args += ['--model', 'test-model', '--base-url', url, '--no-progress', 'timeout=2']
    return [*args, 'retry.max_retries=1', 'retry.initial_delay=0.01', *extra]


def test_refused_connection_is_refused_not_timeout_and_exits_non_zero(tmp_path, capsys):
    """Item 9 of issue 16: a server that is not running is named as such, and the run fails."""
    from ctclip.cli import main

    reports = write_ctrate_csv(tmp_path / 'one.csv', ONE)
    assert main(_label_cli(reports, tmp_path / 'out', _closed_port_url())) == 1
    ((report, reason, attempts),) = failure_rows(tmp_path / 'out')
    assert (report, attempts) == ('r1', '2')
    assert reason.startswith('refused: connection refused') and 'timeout' not in reason, reason
    err = capsys.readouterr().err
    assert (
        'ctclip label: 1 of 1 report(s) failed (over the budget failures.max_fraction=0.0)' in err
    )


def test_every_failure_reason_says_what_happened(tmp_path):
    """refused, timeout, HTTP status, invalid output: each reason starts with what happened."""
    retry = {'max_retries': 1, 'initial_delay': 0.01}
    faults = {
        'HTTP 503: ': Reply(status=503, body={'error': {'message': 'overloaded'}}),
        'timeout: ': Reply(hang=True),
        'invalid output: ': 'truncated',
    }
    reports = write_ctrate_csv(tmp_path / 'one.csv', ONE)
    cfg = openai_cfg(reports, tmp_path / 'refused', _closed_port_url(), retry=retry)
    found = {failure_rows(label_reports(cfg))[0][1].split(':')[0] + ': '}
    for n, (reason, fault) in enumerate(faults.items()):
        (tmp_path / str(n)).mkdir()
        out, _ = run_one(
            tmp_path / str(n), scripted(fault, fault), timeout=0.3, max_reasks=0, retry=retry
        )
        ((report, text, attempts),) = failure_rows(out)
        assert (report, attempts) == ('r1', '2')  # both attempts, then listed
        found.add(text[: len(reason)])
    assert found == {'refused: ', *faults}


def test_failure_budget_decides_the_exit_status(tmp_path, capsys):
    from ctclip.cli import main

    reports = write_ctrate_csv(
        tmp_path / 'r.csv', [*ONE, ('r2', 'Bilateral pleural effusion.', 'Not given.')]
    )
    flaky = lambda request, n: (  # noqa: E731
        Reply(status=503, body=b'down')
        if 'effusion' in json.dumps(request['messages'])
        else valid_reply(request, n)
    )
    with FakeChatServer(flaky) as server:
        assert main(_label_cli(reports, tmp_path / 'a', server.url)) == 1
        assert 'over the budget' in capsys.readouterr().err
        budget = 'failures.max_fraction=0.5'
        assert main(_label_cli(reports, tmp_path / 'b', server.url, budget)) == 0
        assert '1 of 2 report(s) failed (within the budget' in capsys.readouterr().err
    assert read_labels(tmp_path / 'b' / 'labels.csv')['r1'] == ['0'] * len(FINDINGS)


@pytest.mark.parametrize(
    ('setting', 'closest'),
    [
        ('retry.max_retris=6', 'retry.max_retries'),
        ('price.input_per_mtk=1', 'price.input_per_mtok'),
    ],
)
def test_misspelt_nested_setting_fails_before_any_request(tmp_path, setting, closest):
    """Item 4 of issue 16 (label): one line naming the key, its section and the closest name."""
    from ctclip.cli import main

    reports = write_ctrate_csv(tmp_path / 'one.csv', ONE)
    with FakeChatServer() as server:
        with pytest.raises(SystemExit) as stop:
            main(_label_cli(reports, tmp_path / 'out', server.url, setting))
    section, key = setting.split('=')[0].split('.')
    message = str(stop.value)
    assert f"Unknown setting '{section}.{key}' in section '{section}'" in message
    assert f"did you mean '{closest}'" in message and '\n' not in message
    assert server.requests == [] and not (tmp_path / 'out').exists()
