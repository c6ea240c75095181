"""The report's figures (matplotlib, Agg): ROC per class, AUROC bars with CIs, Recall@K and MAP@K."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ctcommon.atomic import atomic_path


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    """Write a figure as PNG atomically: a full disk never leaves half a picture at `path`."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches='tight', format='png')
    return path


def _value(entry: dict | None) -> float:
    return math.nan if not entry or entry.get('value') is None else entry['value']


def plot_roc(classification: dict, path: Path) -> Path:
    """One small ROC panel per class, AUROC and its CI in the title."""
    plt = pyplot()
    classes = classification['classes']
    cols = min(6, len(classes))
    rows = math.ceil(len(classes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), classes, strict=False):
        curve = classification['curves']['roc'][name]
        auc = classification['per_class'][name]['auroc']
        ax.step(curve['fpr'], curve['tpr'], where='post', color='#3b5b92', lw=1.5)
        ax.plot([0, 1], [0, 1], '--', color='0.6', lw=0.8)
        ax.set_title(f'{name}\nAUROC {_fmt_ci(auc)}', fontsize=7.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
        ax.set_aspect('equal')
    for ax in axes.ravel()[len(classes) :]:
        ax.axis('off')
    fig.supxlabel('False positive rate', fontsize=9)
    fig.supylabel('True positive rate', fontsize=9)
    fig.tight_layout()
    out = save_png(fig, path)
    plt.close(fig)
    return out


def plot_auroc_bars(classification: dict, path: Path) -> Path:
    """Per-class AUROC with 95% bootstrap CIs, the macro mean as a line."""
    plt = pyplot()
    classes = classification['classes']
    entries = [classification['per_class'][c]['auroc'] for c in classes]
    values = np.array([_value(e) for e in entries])
    err = _errors(entries, values)
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(classes) + 1.2))
    y = np.arange(len(classes))[::-1]
    ax.barh(y, np.nan_to_num(values), xerr=err, color='#7aa6c2', ecolor='0.25', capsize=2)
    macro = _value(classification['macro']['auroc'])
    if not math.isnan(macro):
        ax.axvline(macro, color='#c0392b', lw=1.2, label=f'mean {macro:.3f}')
        ax.legend(loc='lower right', fontsize=8)
    ax.axvline(0.5, color='0.5', ls=':', lw=1)
    ax.set_yticks(y, classes, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel('AUROC (95% bootstrap CI)')
    fig.tight_layout()
    out = save_png(fig, path)
    plt.close(fig)
    return out


def _errors(entries: list[dict], values: np.ndarray) -> np.ndarray:
    """(2, n) error-bar lengths from CI bounds; 0 where a bound is undefined."""
    lo = np.array([np.nan if e.get('ci_low') is None else e['ci_low'] for e in entries])
    hi = np.array([np.nan if e.get('ci_high') is None else e['ci_high'] for e in entries])
    return np.vstack([np.nan_to_num(values - lo), np.nan_to_num(hi - values)])


def _recall_panel(ax, block: dict, n_volumes: int) -> None:
    ks = np.array(block['curve']['k'])
    ax.plot(ks, block['curve']['recall'], color='#3b5b92', lw=1.5, label='model')
    ax.plot(ks, np.minimum(ks / n_volumes, 1.0), '--', color='0.6', lw=1, label='chance')
    for key in (k for k in block if k.startswith('recall@')):
        k, v = int(key.split('@')[1]), _value(block[key])
        ax.plot([k], [v], 'o', color='#c0392b', ms=4)
        ax.annotate(
            f'R@{k} {v:.3f}', (k, v), fontsize=7, xytext=(3, -10), textcoords='offset points'
        )
    ax.set_xscale('log')
    ax.set(xlabel='K', ylabel='Recall@K', ylim=(0, 1))
    ax.legend(fontsize=8, loc='upper left')
    ax.set_title('Report → volume', fontsize=10)


def _map_panel(ax, block: dict) -> None:
    keys = [k for k in block if k.startswith('map@')]
    values = np.array([_value(block[k]) for k in keys])
    err = _errors([block[k] for k in keys], values)
    ax.bar([k.upper() for k in keys], np.nan_to_num(values), yerr=err, color='#7aa6c2', capsize=3)
    ax.set(ylim=(0, 1), ylabel='mean Jaccard of top-K')
    ax.set_title('Volume → volume (CT-CLIP MAP@K)', fontsize=10)


def plot_retrieval(retrieval: dict, path: Path) -> Path:
    """Recall@K curve (report->volume) and MAP@K bars (volume->volume), whichever exist."""
    plt = pyplot()
    panels = [k for k in ('report_to_volume', 'volume_to_volume') if k in retrieval]
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.6), squeeze=False)
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        if panel == 'report_to_volume':
            _recall_panel(ax, retrieval[panel], retrieval['n_volumes'])
        else:
            _map_panel(ax, retrieval[panel])
    fig.tight_layout()
    out = save_png(fig, path)
    plt.close(fig)
    return out


def _fmt_ci(entry: dict) -> str:
    v = _value(entry)
    if math.isnan(v):
        return 'undefined'
    if entry.get('ci_low') is None:
        return f'{v:.3f}'
    return f'{v:.3f} [{entry["ci_low"]:.3f}, {entry["ci_high"]:.3f}]'
