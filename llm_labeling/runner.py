"""`label_reports(cfg)`: reports in, labels.csv / evidence.jsonl / labels.meta.json / failures.csv out.

Each distinct text is labelled once (from the cache when it was answered before), with at most
`concurrency` requests in flight, and the answer fans out to every report id sharing that text.
"""

from __future__ import annotations

import asyncio
import csv
import errno
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from llm_labeling.backends import Answer, Backend, LabelingFailed, Usage, make_backend
from llm_labeling.cache import ResponseCache
from llm_labeling.io import Report, atomic_open, read_reports, unique_texts, write_json
from llm_labeling.responses import RESPONSE_SCHEMA_VERSION
from llm_labeling.schema import FINDINGS, SCHEMA_VERSION, FindingEvidence, ReportAnnotation
from llm_labeling.settings import cost_usd, resolve_settings

_logger = logging.getLogger(__name__)

OUTPUT_FILES = ('labels.csv', 'evidence.jsonl', 'labels.meta.json', 'failures.csv')
EMPTY_TEXT = 'empty report text (no findings or impression)'


@dataclass
class RunStats:
    usage: Usage = field(default_factory=Usage)
    cache_hits: int = 0
    requests: int = 0  # attempts sent to the backend, retries included
    failed: int = 0


def _cache_for(backend: Backend, settings: dict) -> ResponseCache | None:
    if not (backend.cacheable and settings['cache']['enabled']):
        return None
    path = settings['cache']['path'] or Path(settings['out_dir']) / 'response_cache.sqlite'
    schema = f'{SCHEMA_VERSION}+r{RESPONSE_SCHEMA_VERSION}'
    return ResponseCache(path, backend.model, backend.prompt_version, schema)


def _from_cache(cache: ResponseCache, text: str) -> Answer | None:
    hit = cache.get(text)
    if hit is None:
        return None
    items = [FindingEvidence.model_validate(f) for f in hit.findings]
    usage = Usage(hit.prompt_tokens, hit.completion_tokens)
    return Answer(ReportAnnotation(report_id='', findings=items), usage, 0, cached=True)


class _Progress:
    """tqdm bar with reports/s, tokens and cost so far; silent when disabled."""

    def __init__(self, total: int, initial: int, settings: dict):
        from tqdm.auto import tqdm

        self.settings = settings
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit='report',
            desc=f'label ({settings["backend"]})',
            disable=not settings['progress'],
            dynamic_ncols=True,
        )

    def update(self, stats: RunStats, reports: int) -> None:
        usage = stats.usage
        tokens = usage.prompt_tokens + usage.completion_tokens
        cost = cost_usd(self.settings, usage.prompt_tokens, usage.completion_tokens)
        self.bar.set_postfix_str(f'tok={tokens:,} ${cost:.4f} failed={stats.failed}', False)
        self.bar.update(reports)

    def close(self) -> None:
        self.bar.close()


async def _label_texts(
    groups: dict[str, list[str]], backend: Backend, cache: ResponseCache | None, settings: dict
) -> tuple[dict[str, Answer | LabelingFailed], RunStats]:
    """Label each distinct text once; the bar counts reports (a text shared by n ids counts n)."""
    texts = list(groups)
    stats = RunStats()
    results: dict[str, Answer | LabelingFailed] = {}
    todo = []
    for text in texts:
        hit = _from_cache(cache, text) if cache is not None and text.strip() else None
        if hit is not None:
            results[text] = hit
            stats.cache_hits += 1
        elif not text.strip():
            results[text] = LabelingFailed(EMPTY_TEXT, attempts=0)
            stats.failed += 1
        else:
            todo.append(text)
    total = sum(map(len, groups.values()))
    progress = _Progress(total, total - sum(len(groups[t]) for t in todo), settings)
    gate = asyncio.Semaphore(settings['concurrency'])

    async def one(text: str) -> None:
        async with gate:
            try:
                answer = await backend.label(text)
            except LabelingFailed as e:
                results[text] = e
                stats.failed += 1
                stats.usage.add(e.usage)
                stats.requests += e.attempts
                _logger.warning('Labeling failed after %d attempt(s): %s', e.attempts, e.reason)
                progress.update(stats, len(groups[text]))
                return
        results[text] = answer
        stats.usage.add(answer.usage)
        stats.requests += answer.attempts
        if cache is not None:
            findings = [f.model_dump(mode='json') for f in answer.annotation.findings]
            cache.put(text, findings, answer.usage.prompt_tokens, answer.usage.completion_tokens)
        progress.update(stats, len(groups[text]))

    tasks = [asyncio.ensure_future(one(text)) for text in todo]
    try:
        if tasks:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raises a FatalBackendError (or a bug) at once
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        progress.close()
        await backend.aclose()
    return results, stats


def _write_outputs(
    out_dir: Path, reports: list[Report], results: dict[str, Answer | LabelingFailed]
) -> None:
    """labels.csv, evidence.jsonl and failures.csv, each written to a temp file then renamed."""
    with (
        atomic_open(out_dir / 'labels.csv', newline='') as lf,
        atomic_open(out_dir / 'evidence.jsonl', encoding='utf-8') as ef,
        atomic_open(out_dir / 'failures.csv', newline='') as ff,
    ):
        labels, failures = csv.writer(lf), csv.writer(ff)
        labels.writerow(['report_id', *FINDINGS])
        failures.writerow(['report_id', 'reason', 'attempts'])
        for report in reports:
            result = results[report.text]
            if isinstance(result, LabelingFailed):
                labels.writerow([report.report_id, *([''] * len(FINDINGS))])
                failures.writerow([report.report_id, result.reason, result.attempts])
                continue
            annotation = result.annotation.model_copy(update={'report_id': report.report_id})
            values = annotation.labels()
            labels.writerow([report.report_id, *(values[f] for f in FINDINGS)])
            ef.write(json.dumps(annotation.model_dump(mode='json'), ensure_ascii=False) + '\n')


def _metadata(settings, backend, reports, n_texts, stats, seconds) -> dict:
    usage = stats.usage
    return {
        **backend.describe(),
        'schema_version': SCHEMA_VERSION,
        'response_schema_version': RESPONSE_SCHEMA_VERSION,
        'reports_file': str(settings['reports']),
        'counts': {
            'reports': len(reports),
            'unique_texts': n_texts,
            'failed_texts': stats.failed,
            'failed_reports': None,  # filled by the caller
            'cache_hits': stats.cache_hits,
            'requests': stats.requests,
        },
        'tokens': {'prompt': usage.prompt_tokens, 'completion': usage.completion_tokens},
        'price_usd_per_mtok': settings['price'],
        'cost_usd': cost_usd(settings, usage.prompt_tokens, usage.completion_tokens),
        'settings': {
            k: settings[k] for k in ('concurrency', 'max_tokens', 'max_reasks', 'retry', 'failures')
        },
        'seconds': round(seconds, 3),
        'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
    }


def label_reports(cfg: dict) -> Path:
    """Label a reports file; returns the output folder.

    Args:
        cfg: settings over `llm_labeling.settings.DEFAULTS`; at least `reports` and `out_dir`.

    Example:
        >>> label_reports({'reports': 'validation_reports.csv', 'out_dir': 'labels'})
        PosixPath('labels')
    """
    settings = resolve_settings(cfg)
    out_dir = Path(settings['out_dir'])
    inp = settings['input']
    reports = read_reports(
        settings['reports'], inp['id_column'], inp['text_columns'], inp['format']
    )
    groups = unique_texts(reports)
    backend = make_backend(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = _cache_for(backend, settings)
    started = time.perf_counter()
    try:
        results, stats = asyncio.run(_label_texts(groups, backend, cache, settings))
    except sqlite3.OperationalError as e:  # SQLite says 'database or disk is full', not ENOSPC
        if cache is None or 'full' not in str(e):
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(cache.path)) from e
    finally:
        if cache is not None:
            cache.close()
    seconds = time.perf_counter() - started
    meta = _metadata(settings, backend, reports, len(groups), stats, seconds)
    meta['counts']['failed_reports'] = sum(
        isinstance(results[r.text], LabelingFailed) for r in reports
    )
    try:
        _write_outputs(out_dir, reports, results)
        write_json(out_dir / 'labels.meta.json', meta)
    except OSError as e:  # a write error carries no file name: name the output folder
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(out_dir)) from e
    _logger.info(
        'Labelled %d reports (%d distinct texts, %d from cache, %d failed) in %.1f s -> %s',
        len(reports),
        len(groups),
        stats.cache_hits,
        meta['counts']['failed_reports'],
        seconds,
        out_dir,
    )
    return out_dir
