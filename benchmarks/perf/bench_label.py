"""Labeler throughput against an OpenAI-compatible server with a fixed 200 ms latency per request.

At concurrency 32 the ideal is 32 / 0.2 s = 160 reports/s; the target is 90% of it. The server runs
in its own process so its CPU is not billed to ours; we also report the labeler process's CPU time
per report (instructor + openai client + our runner), which is what caps throughput.
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

from benchmarks.perf.common import Row

LATENCY_S = 0.2
CONCURRENCY = 32
TARGET_FRACTION = 0.9


def _serve(latency: float, port_queue, stop_event) -> None:
    from llm_labeling.fake_server import FakeChatServer

    with FakeChatServer(latency=latency) as server:
        port_queue.put(server.port)
        stop_event.wait()


def _write_reports(path: Path, n: int) -> None:
    """Distinct texts (identical ones would be deduplicated and never reach the server)."""
    with path.open('w', encoding='utf-8', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['VolumeName', 'Findings_EN', 'Impressions_EN'])
        for i in range(n):
            writer.writerow(
                [
                    f'bench_{i}_a_1.nii.gz',
                    f'Report {i}. There is a {3 + i % 9} mm nodule in the right upper lobe. '
                    'No pleural effusion. Heart size is normal.',
                    'Not given.',
                ]
            )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _label(url: str, reports: Path, out: Path, prompt: str) -> tuple[float, float, dict]:
    from llm_labeling.runner import label_reports

    cfg = {
        'reports': str(reports),
        'out_dir': str(out),
        'backend': 'openai',
        'model': 'bench',
        'base_url': url,
        'concurrency': CONCURRENCY,
        'prompt': prompt,
        # on, as users run it, but empty: every report still goes to the server
        'cache': {'enabled': True, 'path': str(out / 'responses.sqlite')},
        'progress': False,
    }
    cpu, wall = _cpu_seconds(), time.perf_counter()
    label_reports(cfg)
    return time.perf_counter() - wall, _cpu_seconds() - cpu, cfg


def _raw_aiohttp_cpu_ms(url: str, n: int) -> float:
    """CPU per request of a bare aiohttp session (POST + JSON parse) with CONCURRENCY connections,
    the transport our backend uses: the floor under instructor, openai and our runner."""
    import asyncio

    import aiohttp

    body = {'model': 'bench', 'messages': [{'role': 'user', 'content': 'Report 1.'}]}

    async def go() -> None:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as session:
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one() -> None:
                async with gate, session.post(f'{url}/chat/completions', json=body) as response:
                    await response.json()

            await asyncio.gather(*(one() for _ in range(n)))

    cpu = _cpu_seconds()
    asyncio.run(go())
    return (_cpu_seconds() - cpu) / n * 1000


def run(quick: bool) -> list[Row]:
    n = 320 if quick else 1600
    ctx = mp.get_context('spawn')
    ports, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(LATENCY_S, ports, stop), daemon=True)
    server.start()
    rows = []
    try:
        url = f'http://127.0.0.1:{ports.get(timeout=60)}/v1'
        ideal = CONCURRENCY / LATENCY_S
        with tempfile.TemporaryDirectory() as tmp:
            reports = Path(tmp) / 'reports.csv'
            _write_reports(reports, n)
            _label(url, reports, Path(tmp) / 'warmup', 'evidence')  # imports, pools, schema
            raw_ms = _raw_aiohttp_cpu_ms(url, n)
            for prompt in ('evidence', 'li'):
                wall, cpu, _ = _label(url, reports, Path(tmp) / prompt, prompt)
                rate = n / wall
                rows.append(
                    Row(
                        area='label',
                        what=f'reports/s, {prompt} prompt, concurrency {CONCURRENCY}, '
                        f'{LATENCY_S * 1000:.0f} ms server latency',
                        ours=rate,
                        unit='reports/s',
                        baseline=ideal,
                        baseline_name='ideal concurrency / latency',
                        ratio=rate / ideal,
                        target=f'>= {TARGET_FRACTION:.0%} of ideal',
                        target_ratio=TARGET_FRACTION,
                        notes=f'{n} reports in {wall:.1f} s, response cache on (empty); '
                        f'labeler CPU {cpu / n * 1000:.2f} '
                        f'ms/report, so one free core sustains {n / cpu:.0f} reports/s; the '
                        f'process used {cpu / wall:.0%} of a core',
                        extra={'cpu_ms_per_report': cpu / n * 1000, 'n': n},
                    )
                )
                ours_ms = cpu / n * 1000
                rows.append(
                    Row(
                        area='label',
                        what=f'labeler CPU per report, {prompt} prompt',
                        ours=ours_ms,
                        unit='ms',
                        baseline=raw_ms,
                        baseline_name='bare aiohttp POST + JSON parse',
                        ratio=raw_ms / ours_ms,
                        notes='process CPU (user + sys) / reports; the rest of ours is instructor, '
                        'the openai client, validation and the runner',
                    )
                )
    finally:
        stop.set()
        server.join(timeout=10)
        if server.is_alive():
            server.kill()
    return rows
