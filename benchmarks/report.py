"""metrics.json, report.md, report.html and the PNGs of one benchmark run.

The report is built once as a list of blocks (headings, paragraphs, tables, images) and rendered
to both Markdown and HTML, so the two can never disagree.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import math
import os
import platform
from pathlib import Path
from typing import Any

from benchmarks import plots
from benchmarks.metrics import THRESHOLD_METRICS
from benchmarks.published import PUBLISHED_NOTE, published_rows
from ctcommon import atomic

_logger = logging.getLogger(__name__)

METRIC_LABELS = {
    'auroc': 'AUROC',
    'f1_weighted': 'F1 (support-weighted over 0/1)',
    'f1_positive': 'F1 (positive class)',
    'accuracy': 'Accuracy',
    'precision': 'Precision (positive class)',
    'sensitivity': 'Sensitivity',
    'specificity': 'Specificity',
}
CONVENTIONS = [
    'AUROC per class (ties count 1/2); every headline mean is unweighted over the classes with both '
    'label values present (the others are listed as undefined).',
    'Threshold per class chosen on the evaluated set: candidates linspace(0, 1, 100), prediction '
    'score > t (strict), minimising sqrt((1-TPR)^2 + FPR^2), ties to the larger t; re-chosen in every bootstrap draw.',
    "At that threshold: support-weighted F1 over classes 0 and 1 (sklearn average='weighted'), "
    'positive-class F1 (labelled as such), accuracy, positive-class precision, sensitivity, specificity.',
    'Bootstrap: scans resampled with replacement (all reconstructions of a scan together), '
    'fixed seed, percentile intervals; undefined draws (no positives) are skipped and counted.',
    'Report->volume Recall@K: L2-normalised embeddings, dot product; hit when the own volume is in the top K.',
    "Volume->volume MAP@K (CT-CLIP's definition, not ranking mAP): candidates = volumes with >= 1 positive label; "
    'each of the top K scores the Jaccard overlap |both| / (|both| + |exactly one|); mean over hits, then queries.',
]


def versions() -> dict[str, str]:
    """Versions that change numbers: ours, the numeric stack, and torch if it was loaded."""
    import sys

    import numpy

    out = {'python': platform.python_version(), 'numpy': numpy.__version__}
    try:
        from importlib.metadata import version

        out['ctclip'] = version('ctclip')
    except Exception:  # a source checkout without an installed distribution
        out['ctclip'] = 'unknown'
    if 'torch' in sys.modules:
        out['torch'] = sys.modules['torch'].__version__
    return out


def _json_default(value: Any) -> Any:
    if hasattr(value, 'tolist'):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def _clean_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_nan(v) for v in value]
    return value


def write_metrics_json(data: dict, path: Path) -> None:
    """NaN as null (strict JSON for any reader), numpy values as plain numbers."""
    atomic.write_json(path, _clean_nan(data), indent=2, default=_json_default)


def fmt(entry: dict | None, pct: bool = False) -> str:
    """'0.812 [0.801, 0.823]' (or percentages), 'n/a' when undefined."""
    if not entry or entry.get('value') is None:
        return 'n/a'
    scale, digits = (100.0, 1) if pct else (1.0, 3)
    text = f'{entry["value"] * scale:.{digits}f}'
    if entry.get('ci_low') is not None:
        text += f' [{entry["ci_low"] * scale:.{digits}f}, {entry["ci_high"] * scale:.{digits}f}]'
    return text


def headline(metrics: dict) -> dict[str, dict]:
    """The numbers a reader looks for first, each with its CI."""
    out: dict[str, dict] = {}
    cls = metrics.get('classification')
    if cls:
        for m in ('auroc', *THRESHOLD_METRICS):
            out[f'mean {METRIC_LABELS[m]}'] = cls['macro'][m]
    ret = metrics.get('retrieval') or {}
    for block in ('report_to_volume', 'volume_to_volume'):
        for key, value in (ret.get(block) or {}).items():
            if '@' in key:
                out[key.replace('recall', 'Recall').replace('map', 'MAP')] = value
    return out


_PUBLISHED_KEYS = (
    'ctrate_auroc',
    'radchestct_auroc',
    'report_to_volume_r100',
    'volume_to_volume_map50',
)
_RETRIEVAL_OPTIONS = ('exclude', 'negative_queries', 'cumulative_k', 'ties', 'report_match')


def _setup_blocks(metrics: dict) -> list[tuple]:
    created = metrics.get('created', '-')
    blocks: list[tuple] = [('h1', metrics.get('title', 'Benchmark report'))]
    blocks.append(('p', f'Protocol: {metrics.get("protocol", "-")}. Created {created}.'))
    setup = []
    if metrics.get('model'):
        setup.append(f'model {metrics["model"]["dir"]} ({metrics["model"]["fingerprint"]})')
    if metrics.get('mapping'):
        setup.append(
            f'RAD-ChestCT mapping {metrics["mapping"]["name"]}: {metrics["mapping"]["description"]}'
        )
    if metrics.get('prompts'):
        pairs = '; '.join(f'"{p["positive"]}" / "{p["negative"]}"' for p in metrics['prompts'])
        setup.append(f'prompts {pairs}')
    if setup:
        blocks.append(('p', 'Setup: ' + '. '.join(setup) + '.'))
    blocks.extend(('p', n) for n in metrics.get('notes') or [])
    heads = headline(metrics)
    if heads:
        blocks.append(('h2', 'Headline numbers (95% bootstrap CI)'))
        rows = [[k, fmt(v)] for k, v in heads.items()]
        blocks.append(('table', ['metric', 'value [95% CI]'], rows))
    return blocks


def _classification_blocks(cls: dict, images: dict[str, str]) -> list[tuple]:
    title = f'Zero-shot classification: {len(cls["classes"])} classes, {cls["n_items"]} items'
    header = ['class', 'n+', 'n-', 'AUROC', 'threshold']
    header += [METRIC_LABELS[m] for m in THRESHOLD_METRICS]
    rows = []
    for name in cls['classes']:
        e = cls['per_class'][name]
        row = [name, e['n_positive'], e['n_negative'], fmt(e['auroc']), f'{e["threshold"]:.3f}']
        rows.append(row + [fmt(e[m]) for m in THRESHOLD_METRICS])
    blocks: list[tuple] = [('h2', title), ('table', header, rows)]
    if cls['undefined_classes']:
        names = ', '.join(cls['undefined_classes'])
        blocks.append(('p', f'Undefined (one label value only), left out of the means: {names}.'))
    opts = cls['options']
    blocks.append(('p', f'Scored per {opts["unit"]}; uncertain labels: {opts["uncertain"]}.'))
    blocks.extend(('img', images[k], k) for k in ('auroc_bars', 'roc') if k in images)
    return blocks


def _retrieval_blocks(ret: dict, images: dict[str, str]) -> list[tuple]:
    opts = ret['options']
    title = f'Retrieval ({opts["protocol"]} protocol, {ret["n_volumes"]} {ret["unit"]}s)'
    rows = [
        [f'{block} {k}', fmt(v)]
        for block in ('report_to_volume', 'volume_to_volume')
        for k, v in (ret.get(block) or {}).items()
        if '@' in k
    ]
    options = ', '.join(f'{k}={opts[k]}' for k in _RETRIEVAL_OPTIONS)
    blocks: list[tuple] = [('h2', title), ('table', ['metric', 'value [95% CI]'], rows)]
    blocks.append(('p', f'Options: {options}.'))
    trivial = [k for k in opts['recall_ks'] if k >= ret['n_volumes']]
    if 'report_to_volume' in ret and trivial:
        blocks.append(
            (
                'p',
                f'Recall@{trivial} cover the whole pool of {ret["n_volumes"]}: 1 by construction.',
            )
        )
    if 'retrieval' in images:
        blocks.append(('img', images['retrieval'], 'retrieval'))
    return blocks


def _this_run_row(metrics: dict) -> list[str] | None:
    """Our numbers in the published table's columns, for a model run on a known benchmark."""
    column = {'ct-rate': 0, 'rad-chestct': 1}.get(metrics.get('benchmark', ''))
    cls = metrics.get('classification')
    if column is None or not cls:
        return None
    row = ['this run (our protocol, above)', '-', '-', '-', '-']
    row[1 + column] = fmt(cls['macro']['auroc'], pct=True)
    ret = metrics.get('retrieval') or {}
    if 'recall@100' in (ret.get('report_to_volume') or {}):
        row[3] = fmt(ret['report_to_volume']['recall@100'], pct=True)
    if 'map@50' in (ret.get('volume_to_volume') or {}):
        row[4] = fmt(ret['volume_to_volume']['map@50'], pct=True)
    return row


def _published_blocks(metrics: dict) -> list[tuple]:
    header = ['model', 'CT-RATE AUROC %', 'RAD-ChestCT AUROC %', 'R@100 %', 'MAP@50 %']
    rows = metrics.get('published', published_rows())
    table = [[r['model'], *(_pct(r[k]) for k in _PUBLISHED_KEYS)] for r in rows]
    ours = _this_run_row(metrics)
    return [
        ('h2', 'Published results (their protocols, not recomputed)'),
        ('p', PUBLISHED_NOTE),
        ('table', header, table + ([ours] if ours else [])),
    ]


def _blocks(metrics: dict, images: dict[str, str]) -> list[tuple]:
    blocks = _setup_blocks(metrics)
    if metrics.get('classification'):
        blocks += _classification_blocks(metrics['classification'], images)
    if metrics.get('retrieval'):
        blocks += _retrieval_blocks(metrics['retrieval'], images)
    blocks += _published_blocks(metrics)
    blocks.append(('h2', 'Conventions'))
    blocks.extend(('li', c) for c in CONVENTIONS)
    versions_text = ', '.join(f'{k} {v}' for k, v in metrics.get('versions', {}).items())
    blocks.append(('p', f'Versions: {versions_text}'))
    return blocks


def _pct(v: float | None) -> str:
    return '-' if v is None else f'{v:.1f}'


def render_markdown(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for previous, block in zip([('',), *blocks], blocks, strict=False):
        kind = block[0]
        if previous[0] == 'li' and kind != 'li':
            lines.append('')
        if kind in ('h1', 'h2'):
            lines += ['#' * int(kind[1]) + ' ' + block[1], '']
        elif kind == 'p':
            lines += [block[1], '']
        elif kind == 'li':
            lines.append(f'- {block[1]}')
        elif kind == 'table':
            lines.append('| ' + ' | '.join(map(str, block[1])) + ' |')
            lines.append('|' + '---|' * len(block[1]))
            lines += ['| ' + ' | '.join(map(str, r)) + ' |' for r in block[2]]
            lines.append('')
        elif kind == 'img':
            lines += [f'![{block[2]}]({block[1]})', '']
    return '\n'.join(lines).rstrip() + '\n'


def render_html(blocks: list[tuple], title: str) -> str:
    e = html.escape
    body: list[str] = []
    in_list = False
    for block in blocks:
        kind = block[0]
        if kind != 'li' and in_list:
            body.append('</ul>')
            in_list = False
        if kind in ('h1', 'h2'):
            body.append(f'<{kind}>{e(block[1])}</{kind}>')
        elif kind == 'p':
            body.append(f'<p>{e(block[1])}</p>')
        elif kind == 'li':
            if not in_list:
                body.append('<ul>')
                in_list = True
            body.append(f'<li>{e(block[1])}</li>')
        elif kind == 'table':
            head = ''.join(f'<th>{e(str(h))}</th>' for h in block[1])
            rows = ''.join(
                '<tr>' + ''.join(f'<td>{e(str(c))}</td>' for c in r) + '</tr>' for r in block[2]
            )
            body.append(f'<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')
        elif kind == 'img':
            body.append(f'<p><img src="{e(block[1])}" alt="{e(block[2])}"></p>')
    if in_list:
        body.append('</ul>')
    style = (
        'body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}'
        'table{border-collapse:collapse;font-size:13px;margin:1em 0}'
        'td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#eef}'
        'img{max-width:100%}'
    )
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{e(title)}</title>'
        f'<style>{style}</style></head><body>\n' + '\n'.join(body) + '\n</body></html>\n'
    )


def write_report(
    metrics: dict, out_dir: str | os.PathLike, plots_enabled: bool = True
) -> dict[str, Path]:
    """Write metrics.json, report.md, report.html and the PNGs into `out_dir`; return their paths.

    `metrics` (completed in place with 'created', 'versions', 'published' and 'headline')
    holds a 'classification' block (from `benchmarks.score`) and/or a 'retrieval'
    block (from `benchmarks.score_retrieval`), plus 'title', 'protocol', 'options', 'notes'.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics.setdefault('created', dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'))
    metrics.setdefault('versions', versions())
    metrics.setdefault('published', published_rows())
    metrics['published_note'] = PUBLISHED_NOTE
    metrics['headline'] = headline(metrics)
    paths: dict[str, Path] = {}
    images: dict[str, str] = {}
    if plots_enabled:
        cls, ret = metrics.get('classification'), metrics.get('retrieval')
        if cls:
            paths['roc'] = plots.plot_roc(cls, out / 'roc_curves.png')
            paths['auroc_bars'] = plots.plot_auroc_bars(cls, out / 'auroc_bars.png')
        if ret and ('report_to_volume' in ret or 'volume_to_volume' in ret):
            paths['retrieval'] = plots.plot_retrieval(ret, out / 'retrieval.png')
        images = {k: p.name for k, p in paths.items()}
    blocks = _blocks(metrics, images)
    paths['metrics'] = out / 'metrics.json'
    write_metrics_json(metrics, paths['metrics'])
    paths['markdown'] = out / 'report.md'
    atomic.write_text(paths['markdown'], render_markdown(blocks))
    paths['html'] = out / 'report.html'
    atomic.write_text(paths['html'], render_html(blocks, metrics.get('title', 'Benchmark report')))
    _logger.info('wrote %s', ', '.join(str(p) for p in paths.values()))
    return paths
