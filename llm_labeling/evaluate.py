"""Score label files against manual labels: per-class P/R/F1, macro and support-weighted means, AUROC.

Two or more prediction files are scored on the same reports (those every file labelled) and shown
side by side, so an LLM run can be compared with the rules baseline it must beat.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ctcommon import metrics
from llm_labeling.io import atomic_open, write_json
from llm_labeling.schema import FINDINGS

_logger = logging.getLogger(__name__)
UNCERTAIN_CHOICES = ('positive', 'negative')


def read_label_table(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(ids, values[n, 18]) from a CSV whose first column is the id; empty cells become NaN."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'Label file {str(path)!r} does not exist')
    with path.open(newline='', encoding='utf-8-sig') as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ValueError(f'{path}: empty file, expected a header row')
        missing = [c for c in FINDINGS if c not in header]
        if missing:
            raise ValueError(f'{path}: missing label column(s): {", ".join(missing)}')
        cols = [header.index(c) for c in FINDINGS]
        ids, rows = [], []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            ids.append(row[0])
            rows.append([_cell(path, line, FINDINGS[i], row[c]) for i, c in enumerate(cols)])
    if len(set(ids)) != len(ids):
        raise ValueError(f'{path}: report ids in the first column must be unique')
    values = np.array(rows, dtype=float).reshape(len(rows), len(FINDINGS))
    return ids, values


def _cell(path: Path, line: int, column: str, text: str) -> float:
    text = text.strip()
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f'{path}, line {line}, {column!r}: must be a number, not {text!r}'
        ) from None


def auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    """`ctcommon.metrics.auroc` of 0/1 labels; None (not NaN, for JSON) with one class only."""
    value = metrics.auroc(score, np.asarray(y).astype(bool).astype(np.float64))
    return None if np.isnan(value) else value


def binarize(values: np.ndarray, uncertain: str) -> np.ndarray:
    """1/0/-1 labels (or scores in [0, 1], cut at 0.5) to 0/1; -1 counts as `uncertain` says."""
    if uncertain not in UNCERTAIN_CHOICES:
        raise ValueError(f'uncertain must be one of {UNCERTAIN_CHOICES}, not {uncertain!r}')
    out = values >= 0.5
    out |= (values == -1) & (uncertain == 'positive')
    return out.astype(int)


def has_scores(values: np.ndarray) -> bool:
    """Scores, not labels: some value other than -1, 0 and 1."""
    finite = values[np.isfinite(values)]
    return bool(np.any(~np.isin(finite, (-1.0, 0.0, 1.0))))


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def score_classes(pred: np.ndarray, gold: np.ndarray, uncertain: str) -> dict:
    """Per-class counts and P/R/F1 (0 when a denominator is 0), then macro and weighted means."""
    p, g = binarize(pred, uncertain), binarize(gold, uncertain)
    scored = has_scores(pred)
    per_class = {}
    for j, name in enumerate(FINDINGS):
        tp = int(((p[:, j] == 1) & (g[:, j] == 1)).sum())
        fp = int(((p[:, j] == 1) & (g[:, j] == 0)).sum())
        fn = int(((p[:, j] == 0) & (g[:, j] == 1)).sum())
        prec, rec = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        per_class[name] = {
            'precision': prec,
            'recall': rec,
            'f1': _ratio(2 * prec * rec, prec + rec),
            'support': tp + fn,
            'tp': tp,
            'fp': fp,
            'fn': fn,
            'auroc': auroc(g[:, j], pred[:, j]) if scored else None,
        }
    support = np.array([c['support'] for c in per_class.values()], dtype=float)
    means = {'macro': {}, 'weighted': {}}
    for key in ('precision', 'recall', 'f1'):
        vals = np.array([c[key] for c in per_class.values()])
        means['macro'][key] = float(vals.mean())
        means['weighted'][key] = (
            float((vals * support).sum() / support.sum()) if support.sum() else 0.0
        )
    aurocs = [c['auroc'] for c in per_class.values() if c['auroc'] is not None]
    means['macro']['auroc'] = float(np.mean(aurocs)) if aurocs else None
    return {'per_class': per_class, **means}


def _align(preds, gold_ids, gold_vals, names):
    """Ids present in gold and labelled (no empty cell) by every prediction file."""
    index = {rid: i for i, rid in enumerate(gold_ids)}
    common = set(gold_ids)
    coverage = {}
    for name, (ids, vals) in zip(names, preds, strict=True):
        ok = {rid for rid, row in zip(ids, vals, strict=True) if np.isfinite(row).all()}
        coverage[name] = {
            'rows': len(ids),
            'failed': len(ids) - len(ok),
            'not_in_gold': len(set(ids) - set(index)),
            'gold_missing': len(set(index) - set(ids)),
        }
        common &= ok
    order = [rid for rid in gold_ids if rid in common]
    if not order:
        raise ValueError('No report id is both in the gold file and labelled in every --pred file')
    matrices = []
    for ids, vals in preds:
        where = {rid: i for i, rid in enumerate(ids)}
        matrices.append(vals[[where[rid] for rid in order]])
    gold = gold_vals[[index[rid] for rid in order]]
    if np.isnan(gold).any():
        raise ValueError('The gold file has empty cells for some scored reports')
    return order, matrices, gold, coverage


def evaluate_labels(
    pred_paths: str | Path | Sequence[str | Path],
    gold_path: str | Path,
    out_dir: str | Path,
    names: Sequence[str] | None = None,
    uncertain: str = 'positive',
) -> dict:
    """Score one or more label files against gold; write metrics.json, report.md, f1_per_class.png.

    Example:
        >>> evaluate_labels(['rules/labels.csv', 'gpt/labels.csv'], 'manual.csv', 'eval/')
    """
    paths = [pred_paths] if isinstance(pred_paths, (str, Path)) else list(pred_paths)
    names = list(names) if names else [_default_name(p, paths) for p in paths]
    if len(names) != len(paths) or len(set(names)) != len(names):
        raise ValueError(f'names must be {len(paths)} distinct names, not {names}')
    preds = [read_label_table(p) for p in paths]
    gold_ids, gold_vals = read_label_table(gold_path)
    ids, matrices, gold, coverage = _align(preds, gold_ids, gold_vals, names)
    results = {n: score_classes(m, gold, uncertain) for n, m in zip(names, matrices, strict=True)}
    metrics = {
        'gold': str(gold_path),
        'predictions': dict(zip(names, map(str, paths), strict=True)),
        'uncertain_counts_as': uncertain,
        'n_scored': len(ids),
        'coverage': coverage,
        'results': results,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / 'metrics.json', metrics)
    with atomic_open(out / 'report.md', encoding='utf-8') as f:
        f.write(render_markdown(metrics))
    plot_f1(results, out / 'f1_per_class.png')
    return metrics


def _default_name(path, paths) -> str:
    path = Path(path)
    stems = [Path(p).stem for p in paths]
    return path.parent.name or path.stem if stems.count(path.stem) > 1 else path.stem


def _fmt(v: float | None) -> str:
    return '-' if v is None else f'{v:.3f}'


def render_markdown(metrics: dict) -> str:
    names = list(metrics['results'])
    res = metrics['results']
    lines = [
        '# Label evaluation',
        '',
        f'Gold: `{metrics["gold"]}`; {metrics["n_scored"]} reports scored (labelled by every file); '
        f'uncertain (-1) counts as {metrics["uncertain_counts_as"]}.',
        '',
        '| file | rows | failed | not in gold | gold ids missing |',
        '|---|---|---|---|---|',
    ]
    for n in names:
        c = metrics['coverage'][n]
        lines.append(
            f'| {n} | {c["rows"]} | {c["failed"]} | {c["not_in_gold"]} | {c["gold_missing"]} |'
        )
    lines += [
        '',
        '## Means',
        '',
        '| file | macro P | macro R | macro F1 | weighted F1 | macro AUROC |',
    ]
    lines.append('|---|---|---|---|---|---|')
    for n in names:
        m, w = res[n]['macro'], res[n]['weighted']
        lines.append(
            f'| {n} | {_fmt(m["precision"])} | {_fmt(m["recall"])} | {_fmt(m["f1"])} '
            f'| {_fmt(w["f1"])} | {_fmt(m["auroc"])} |'
        )
    head = '| finding | support | ' + ' | '.join(f'{n} P / R / F1' for n in names)
    delta = len(names) == 2
    lines += ['', '## Per class', '', head + (' | F1 delta |' if delta else ' |')]
    lines.append('|---|---|' + '---|' * (len(names) + delta))
    for f in FINDINGS:
        cells = [res[n]['per_class'][f] for n in names]
        row = f'| {f} | {cells[0]["support"]} | ' + ' | '.join(
            f'{_fmt(c["precision"])} / {_fmt(c["recall"])} / {_fmt(c["f1"])}' for c in cells
        )
        if delta:
            row += f' | {cells[1]["f1"] - cells[0]["f1"]:+.3f}'
        lines.append(row + ' |')
    return '\n'.join(lines) + '\n'


def plot_f1(results: dict, path: Path) -> None:
    """Grouped horizontal bars: F1 per finding, one bar per label file."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = list(results)
    height = 0.8 / len(names)
    y = np.arange(len(FINDINGS))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(FINDINGS) + 1.5))
    for k, name in enumerate(names):
        f1 = [results[name]['per_class'][f]['f1'] for f in FINDINGS]
        macro = results[name]['macro']['f1']
        ax.barh(y + k * height, f1, height, label=f'{name} (macro F1 {macro:.3f})')
    ax.set_yticks(y + height * (len(names) - 1) / 2, FINDINGS)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel('F1')
    ax.grid(axis='x', alpha=0.3)
    ax.legend(loc='lower left', fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f'.{path.name}.tmp.png')
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
