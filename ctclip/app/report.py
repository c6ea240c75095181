"""The demo's one-page summary: labeler, training curves, zero-shot AUROC, retrieval, grounding.

It only reads what the stages wrote (their metrics.json, metrics.jsonl and PNGs) and links their
plots by relative path, so DIR/report.html opens anywhere the folder is copied.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctclip.app.pipeline import write_json_atomic

if TYPE_CHECKING:
    from ctclip.app.demo import Demo


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding='utf-8')) if path.exists() else None


def _last_validation(metrics_jsonl: Path) -> dict:
    """The last validation record of a training run (zero-shot or head AUROC)."""
    last: dict = {}
    if metrics_jsonl.exists():
        for line in metrics_jsonl.read_text(encoding='utf-8').splitlines():
            record = json.loads(line)
            if any(k.startswith('val/') for k in record):
                last = record
    return last


def _fmt(x: Any) -> str:
    if isinstance(x, dict):
        if x.get('value') is None:
            return 'n/a'
        ci = ''
        if x.get('ci_low') is not None:
            ci = f' [{x["ci_low"]:.3f}, {x["ci_high"]:.3f}]'
        return f'{x["value"]:.3f}{ci}'
    if isinstance(x, float):
        return f'{x:.3f}'
    return 'n/a' if x is None else str(x)


def collect(demo: Demo) -> dict:
    """Gather every number the stages produced into one dict (the demo's metrics.json)."""
    out = demo.out
    metrics: dict = {'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
    label_eval = _load(demo.paths['labels'] / 'eval' / 'metrics.json')
    if label_eval:
        result = next(iter(label_eval['results'].values()))
        metrics['labeler'] = {
            'backend': demo.cfg['labeler']['backend'],
            'n_scored': label_eval['n_scored'],
            'uncertain_counts_as': label_eval.get('uncertain_counts_as'),
            'macro': result['macro'],
            'weighted': result['weighted'],
            'per_class_f1': {k: v['f1'] for k, v in result['per_class'].items()},
        }
    for stage in ('stage1', 'stage2'):
        metrics[f'train_{stage}'] = _last_validation(demo.paths[stage] / 'metrics.jsonl')
    for key, name in (('bench_ctrate', 'ct-rate'), ('bench_rad', 'rad-chestct')):
        bench = _load(demo.paths[key] / 'metrics.json')
        if bench:
            per_class = bench['classification']['per_class']
            metrics[f'bench_{name}'] = {
                'protocol': bench.get('protocol'),
                'headline': bench['headline'],
                'per_class_auroc': {c: v['auroc'] for c, v in per_class.items()},
                'per_class_positives': {c: v['n_positive'] for c, v in per_class.items()},
                'per_class_negatives': {c: v.get('n_negative') for c, v in per_class.items()},
                'macro_auroc_ci_width': _width(bench['headline']['mean AUROC']),
                'undefined_classes': bench['classification'].get('undefined_classes', []),
                'n_items': bench['classification']['n_items'],
                'split': demo.held_out if name == 'ct-rate' else 'all (external)',
            }
    if demo.held_out == 'test':
        metrics['test_split'] = {
            'min_count': demo.cfg['test_min_count'],
            'n_rad': demo.cfg['n_rad'],
            'note': 'test patients were chosen so that every class has at least min_count '
            'positive and negative volumes: their prevalence is not the training prevalence',
        }
    grounding = _load(demo.paths['bench_grounding'] / 'metrics.json')
    if grounding:
        arms = {'model': grounding['model'], **grounding['baselines']}
        metrics['grounding'] = {
            'protocol': grounding.get('protocol'),
            'threshold': grounding.get('threshold'),
            'n_pairs': grounding['model']['n_pairs'],
            'n_patients': grounding['model']['n_patients'],
            **{arm: block['metrics'] for arm, block in arms.items()},
        }
    for name in ('ctrate', 'radchestct'):
        summary = _load(out / 'cache' / f'{name}.summary.json')
        if summary:
            metrics[f'cache_{name}'] = summary
    timings = {}
    for marker in sorted((out / 'stages').glob('*.json')):
        timings[marker.stem] = json.loads(marker.read_text(encoding='utf-8')).get('seconds')
    metrics['stage_seconds'] = timings
    metrics['headline'] = headline(metrics)
    return metrics


def _width(x: dict) -> float | None:
    if x.get('ci_low') is None or x.get('ci_high') is None:
        return None
    return round(float(x['ci_high']) - float(x['ci_low']), 4)


def headline(metrics: dict) -> dict[str, str]:
    out = {}
    for name in ('ct-rate', 'rad-chestct'):
        bench = metrics.get(f'bench_{name}')
        if bench:
            out[f'zero-shot macro AUROC ({name})'] = _fmt(bench['headline']['mean AUROC'])
    if 'grounding' in metrics:
        for arm in ('model', 'location_prior', 'random'):
            if arm in metrics['grounding']:
                value = metrics['grounding'][arm]['pointing_game']
                out[f'grounding pointing game ({arm})'] = _fmt(value)
    if 'labeler' in metrics:
        out['labeler macro F1 vs ground truth'] = _fmt(metrics['labeler']['macro']['f1'])
    return out


def _split_note(m: dict, name: str) -> str:
    """Which patients the benchmark scored, and why its prevalence is not the training one."""
    test = m.get('test_split')
    if not test:
        return 'Scored on the validation patients (no test split).'
    extra = f' plus {test["n_rad"]} more volumes' if test.get('n_rad') else ''
    who = (
        'the test split' if name == 'ct-rate' else f'the RAD-ChestCT cohort (its test split{extra})'
    )
    return (
        f'Scored on {who}: patients never trained on nor used for validation, chosen so that every '
        f'class has at least {test["min_count"]} positive and {test["min_count"]} negative volumes. '
        'Its prevalence (below) is therefore not the training prevalence; the renderer and the '
        'findings themselves are the same.'
    )


def _rel(demo: Demo, path: Path) -> str | None:
    return str(path.relative_to(demo.out)) if path.exists() else None


def render_markdown(demo: Demo, m: dict) -> str:
    lines = [
        '# ctclip demo report',
        '',
        f'Created {m["created"]}. Output folder: `{demo.out}`.',
        '',
    ]
    lines += ['## Headline', '', '| quantity | value [95% CI] |', '|---|---|']
    lines += [f'| {k} | {v} |' for k, v in m['headline'].items()]
    if 'labeler' in m:
        lab = m['labeler']
        lines += [
            '',
            f'## Labeler ({lab["backend"]}) against the ground truth',
            '',
            f'{lab["n_scored"]} reports; uncertain counted as {lab["uncertain_counts_as"]}. '
            f'Macro P / R / F1: {_fmt(lab["macro"]["precision"])} / '
            f'{_fmt(lab["macro"]["recall"])} / {_fmt(lab["macro"]["f1"])}.',
            '',
        ]
    figures: list[tuple[str, Path]] = [
        ('Labeler F1 per class', demo.paths['labels'] / 'eval' / 'f1_per_class.png'),
        ('Training curves, stage 1', demo.paths['stage1'] / 'training_curves.png'),
        ('Training curves, stage 2', demo.paths['stage2'] / 'training_curves.png'),
    ]
    for key, name in (('bench_ctrate', 'ct-rate'), ('bench_rad', 'rad-chestct')):
        bench = m.get(f'bench_{name}')
        if not bench:
            continue
        lines += [
            '',
            f'## Benchmark: {name} layout ({bench["n_items"]} volumes)',
            '',
            '| metric | value [95% CI] |',
            '|---|---|',
        ]
        lines += [f'| {k} | {_fmt(v)} |' for k, v in bench['headline'].items()]
        width = bench.get('macro_auroc_ci_width')
        lines += ['', f"Width of the macro AUROC's 95% interval: {_fmt(width)}."]
        if name == 'ct-rate' or 'test_split' in m:
            lines += ['', _split_note(m, name)]
        # a class with one or two positive patients moves by tenths between runs: show how many
        positives, negatives = bench['per_class_positives'], bench.get('per_class_negatives', {})
        lines += [
            '',
            '| class | positive volumes | negative volumes | prevalence | AUROC [95% CI] |',
            '|---|---:|---:|---:|---|',
        ]
        for c, v in bench['per_class_auroc'].items():
            pos, neg = positives[c], negatives.get(c)
            share = f'{pos / (pos + neg):.2f}' if neg is not None and pos + neg else 'n/a'
            lines.append(f'| {c} | {pos} | {_fmt(neg)} | {share} | {_fmt(v)} |')
        lines += ['', f'Full report: `{_rel(demo, demo.paths[key] / "report.html")}`']
        for png, title in (
            ('roc_curves.png', 'ROC curves'),
            ('auroc_bars.png', 'AUROC per class'),
            ('retrieval.png', 'Retrieval'),
        ):
            figures.append((f'{title} ({name})', demo.paths[key] / png))
    grounding = m.get('grounding')
    if grounding:
        arms = [a for a in ('model', 'location_prior', 'random') if a in grounding]
        names = list(grounding['model'])
        lines += [
            '',
            f"## Grounding: {'test' if demo.held_out == 'test' else 'held-out'} patients' "
            f'masks ({grounding["n_pairs"]} findings, '
            f'{grounding["n_patients"]} patients)',
            '',
            f'Masks: {grounding["protocol"]}.',
            '',
            '| metric | ' + ' | '.join(arms) + ' |',
            '|---|' + '---|' * len(arms),
        ]
        lines += [
            f'| {n} | ' + ' | '.join(_fmt(grounding[a][n]) for a in arms) + ' |' for n in names
        ]
        report = demo.paths['bench_grounding'] / 'report.html'
        lines += ['', f'Full report with overlays: `{_rel(demo, report)}`']
    lines += ['', '## Stage timings (s)', '', '| stage | seconds |', '|---|---|']
    lines += [f'| {k} | {v} |' for k, v in m['stage_seconds'].items()]
    lines += ['', '## Figures', '']
    for title, path in figures:
        rel = _rel(demo, path)
        if rel:
            lines += [f'### {title}', '', f'![{title}]({rel})', '']
    return '\n'.join(lines) + '\n'


def render_html(markdown: str) -> str:
    """A dependency-free rendering of our own Markdown subset (headings, tables, images)."""
    body: list[str] = []
    in_table = False
    for line in markdown.splitlines():
        if line.startswith('|'):
            cells = [c.strip() for c in line.strip('|').split('|')]
            if all(c and set(c) <= {'-', ':'} for c in cells):  # the separator, aligned or not
                continue
            tag = 'th' if not in_table else 'td'
            if not in_table:
                body.append('<table>')
                in_table = True
            body.append(
                '<tr>' + ''.join(f'<{tag}>{html.escape(c)}</{tag}>' for c in cells) + '</tr>'
            )
            continue
        if in_table:
            body.append('</table>')
            in_table = False
        if line.startswith('!['):
            alt, src = line[2:].split('](', 1)
            body.append(f'<img src="{html.escape(src[:-1])}" alt="{html.escape(alt)}">')
        elif line.startswith('#'):
            level = len(line) - len(line.lstrip('#'))
            body.append(f'<h{level}>{html.escape(line[level:].strip())}</h{level}>')
        elif line.strip():
            body.append(f'<p>{html.escape(line).replace("`", "")}</p>')
    if in_table:
        body.append('</table>')
    style = (
        'body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}'
        'table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px}'
        'img{max-width:100%;border:1px solid #eee}'
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>ctclip demo report</title>'
        f'<style>{style}</style></head><body>\n' + '\n'.join(body) + '\n</body></html>\n'
    )


def write_demo_report(demo: Demo) -> dict:
    metrics = collect(demo)
    write_json_atomic(demo.out / 'metrics.json', metrics)
    markdown = render_markdown(demo, metrics)
    for name, text in (('report.md', markdown), ('report.html', render_html(markdown))):
        tmp = demo.out / f'.{name}.tmp'
        tmp.write_text(text, encoding='utf-8')
        tmp.replace(demo.out / name)
    return {
        'report_html': str(demo.out / 'report.html'),
        'report_md': str(demo.out / 'report.md'),
        'metrics': str(demo.out / 'metrics.json'),
        'headline': metrics['headline'],
    }
