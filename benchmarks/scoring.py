"""Model-agnostic scoring: zero-shot classification and retrieval numbers with bootstrap CIs.

Anything that produces a score per volume and class (our models, a published baseline's
prediction file) is scored here, so every number in a report comes from one code path.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from benchmarks import metrics as M
from benchmarks.bootstrap import (
    BootstrapConfig,
    draw_counts,
    summarise,
    unit_index,
    weighted_mean_draws,
)
from benchmarks.ctrate import read_labels
from benchmarks.retrieval import RetrievalOptions, report_ranks, volume_map_values
from benchmarks.tables import Table, align, read_table, scan_id

_logger = logging.getLogger(__name__)

PROTOCOL = 'ctclip-zero-shot'
_ROC_GRID = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class ScoringOptions:
    """How rows become scored items; written to metrics.json."""

    unit: str = 'volume'  # score each volume, or each scan (its reconstructions aggregated)
    scan_aggregate: str = 'mean'  # how a scan's reconstructions' scores combine: mean or max
    uncertain: str = 'exclude'  # label -1: exclude from that class, or count as negative/positive
    allow_missing: bool = False  # score only the shared ids when some labelled volumes lack scores

    def __post_init__(self) -> None:
        choices = {
            'unit': ('volume', 'scan'),
            'scan_aggregate': ('mean', 'max'),
            'uncertain': ('exclude', 'negative', 'positive'),
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(
                    f'scoring {name} must be one of {valid}, not {getattr(self, name)!r}'
                )


def as_table(data: Any, what: str) -> Table:
    """A Table from a Table, a CSV path, or a pandas-like DataFrame (first column = ids)."""
    if isinstance(data, Table):
        return data
    if isinstance(data, (str, os.PathLike)):
        return read_labels(data) if what == 'labels' else read_table(data)
    if hasattr(data, 'columns') and hasattr(data, 'to_numpy'):
        cols = [str(c) for c in data.columns]
        arr = data.to_numpy()
        return Table(
            [str(i) for i in arr[:, 0]], cols[1:], arr[:, 1:].astype(float), f'<{what} frame>'
        )
    raise TypeError(f'{what} must be a Table, a CSV path or a DataFrame, not {type(data).__name__}')


def _apply_uncertain(values: np.ndarray, how: str) -> np.ndarray:
    out = values.copy()
    if how == 'negative':
        out[out == -1] = 0
    elif how == 'positive':
        out[out == -1] = 1
    return out


def _reduce_rows(values: np.ndarray, index: np.ndarray, n: int, how: str) -> np.ndarray:
    """Per-group mean, max or min of rows; NaN cells are ignored (NaN where a group has none)."""
    values = np.asarray(values, dtype=np.float64)
    if how == 'mean':
        ok = ~np.isnan(values)
        sums = np.zeros((n, values.shape[1]))
        np.add.at(sums, index, np.where(ok, values, 0.0))
        counts = np.zeros((n, values.shape[1]))
        np.add.at(counts, index, ok)
        with np.errstate(invalid='ignore', divide='ignore'):
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    out = np.full((n, values.shape[1]), np.nan)
    (np.fmax if how == 'max' else np.fmin).at(out, index, values)
    return out


def group_by_scan(table: Table, aggregate: str, what: str) -> Table:
    """One row per scan: reconstructions' values combined (labels: max, and a warning if they differ)."""
    index, scans = unit_index([scan_id(i) for i in table.ids])
    if what == 'labels':
        out = _reduce_rows(table.values, index, len(scans), 'max')
        low = _reduce_rows(table.values, index, len(scans), 'min')
        differ = [
            scans[k] for k in np.flatnonzero(np.any(out != low, axis=1) & ~np.isnan(out).all(1))
        ]
        if differ:
            _logger.warning(
                '%d scans have reconstructions that disagree on labels (e.g. %s); using max',
                len(differ),
                differ[0],
            )
    else:
        out = _reduce_rows(table.values, index, len(scans), aggregate)
    return Table(scans, table.columns, out, table.source)


def _classes(scores: Table, labels: Table, classes: list[str] | None) -> list[str]:
    if classes is None:
        classes = [c for c in labels.columns if c in scores.columns]
        if not classes:
            raise ValueError(
                f'{scores.source} and {labels.source} share no class columns. '
                f'Scores: {scores.columns[:5]}..., labels: {labels.columns[:5]}...'
            )
    for table in (scores, labels):
        missing = [c for c in classes if c not in table.columns]
        if missing:
            raise ValueError(
                f'{table.source} lacks class columns {missing}. Columns: {table.columns}'
            )
    return list(classes)


def _roc_points(scores: np.ndarray, labels: np.ndarray) -> dict:
    fpr, tpr = M.roc_curve(scores, labels)
    # Highest TPR reached at each FPR grid point: a faithful step curve at a fixed size.
    idx = np.searchsorted(fpr, _ROC_GRID, side='right') - 1
    return {
        'fpr': _ROC_GRID.round(4).tolist(),
        'tpr': np.maximum.accumulate(tpr[idx]).round(4).tolist(),
    }


def classification_draws(
    s: np.ndarray, y: np.ndarray, index: np.ndarray, counts: np.ndarray
) -> dict[str, np.ndarray]:
    """Every classification metric for every draw: (B, C) arrays, one vectorised pass."""
    n_units, n_classes = counts.shape[1], s.shape[1]
    weights = counts[:, index]
    out = {'auroc': np.stack([M.auroc(s[:, c], y[:, c], weights) for c in range(n_classes)], 1)}
    # Per-unit threshold-bin histograms, then one matrix product gives every draw's histograms.
    hist = np.zeros((n_units, n_classes, 2, M.N_THRESHOLDS + 1))
    for c in range(n_classes):
        pos, neg = y[:, c] == 1, y[:, c] == 0
        bins = M.threshold_bins(s[:, c])
        np.add.at(hist, (index[pos], c, 0, bins[pos]), 1.0)
        np.add.at(hist, (index[neg], c, 1, bins[neg]), 1.0)
    drawn = (counts @ hist.reshape(n_units, -1)).reshape(len(counts), *hist.shape[1:])
    out.update(M.threshold_metrics_from_histograms(drawn))
    return out


def _macro(values: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        return np.nanmean(values, axis=-1)


def score(
    scores: Any,
    labels: Any,
    classes: list[str] | None = None,
    options: ScoringOptions | None = None,
    bootstrap: BootstrapConfig | None = None,
) -> dict:
    """Zero-shot classification metrics with bootstrap CIs (the `metrics.json` 'classification' block).

    Args:
        scores: one row per volume, one column per class (higher = more likely present).
        labels: same layout, CT-RATE style (1 / 0 / -1 / empty).
        classes: the classes to score, in order; default: the label columns the scores have.
    """
    options, bootstrap = options or ScoringOptions(), bootstrap or BootstrapConfig()
    scores, labels = as_table(scores, 'scores'), as_table(labels, 'labels')
    classes = _classes(scores, labels, classes)
    scores, labels = align(
        scores.select(columns=classes), labels.select(columns=classes), options.allow_missing
    )
    labels = Table(
        labels.ids, classes, _apply_uncertain(labels.values, options.uncertain), labels.source
    )
    if not np.all(np.isfinite(scores.values)):
        raise ValueError(f'{scores.source}: scores must be finite numbers; found NaN or inf')
    if options.unit == 'scan':
        scores = group_by_scan(scores, options.scan_aggregate, 'scores')
        labels = group_by_scan(labels, options.scan_aggregate, 'labels')
    s, y = scores.values, labels.values
    units = [scan_id(i) for i in labels.ids] if bootstrap.unit == 'scan' else list(labels.ids)
    index, unit_names = unit_index(units)
    point = classification_draws(s, y, index, np.ones((1, len(unit_names))))
    draws = classification_draws(
        s, y, index, draw_counts(len(unit_names), bootstrap.n_draws, bootstrap.seed)
    )
    return _classification_result(
        classes, labels, scores, point, draws, options, bootstrap, len(unit_names)
    )


def _classification_result(
    classes, labels, scores, point, draws, options, bootstrap, n_units
) -> dict:
    level = bootstrap.level
    names = ('auroc', *M.THRESHOLD_METRICS)
    per_class, undefined = {}, []
    for c, name in enumerate(classes):
        n_pos, n_neg = M.class_counts(labels.values[:, c])
        if n_pos == 0 or n_neg == 0:
            undefined.append(name)
        entry = {
            'n_positive': n_pos,
            'n_negative': n_neg,
            'threshold': float(point['threshold'][0, c]),
        }
        for m in names:
            entry[m] = summarise(point[m][0, c], draws[m][:, c], level)
        per_class[name] = entry
    if undefined:
        _logger.warning(
            'AUROC undefined (one label value only) for %s; left out of the means', undefined
        )
    # Every mean runs over the same classes: those with both label values in the evaluated set.
    keep = np.array([name not in undefined for name in classes])
    macro = {
        m: summarise(_macro(point[m][:, keep])[0], _macro(draws[m][:, keep]), level) for m in names
    }
    return {
        'protocol': PROTOCOL,
        'n_items': len(labels),
        'n_resampling_units': n_units,
        'classes': classes,
        'undefined_classes': undefined,
        'n_classes_in_means': int(keep.sum()),
        'per_class': per_class,
        'macro': macro,
        'options': asdict(options),
        'bootstrap': bootstrap.as_dict(),
        'curves': {
            'roc': {
                name: _roc_points(scores.values[:, c], labels.values[:, c])
                for c, name in enumerate(classes)
            }
        },
    }


def _group_embeddings(ids: list[str], image: np.ndarray, text: np.ndarray | None, labels):
    """Per scan: mean image embedding, the first reconstruction's report, max of the labels."""
    index, scans = unit_index([scan_id(i) for i in ids])
    img = _reduce_rows(image, index, len(scans), 'mean').astype(np.float32)
    first = np.unique(index, return_index=True)[1]
    txt = None if text is None else np.asarray(text)[first]
    lab = None if labels is None else _reduce_rows(labels, index, len(scans), 'max')
    return scans, img, txt, lab


def score_retrieval(
    image_emb: np.ndarray,
    text_emb: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    ids: list[str] | None = None,
    options: RetrievalOptions | None = None,
    bootstrap: BootstrapConfig | None = None,
    unit: str = 'volume',
) -> dict:
    """Report->volume Recall@K (needs `text_emb`) and volume->volume MAP@K (needs `labels`).

    Rows of image, text and labels are the same volumes, named by `ids` (default: row numbers).
    """
    options, bootstrap = options or RetrievalOptions(), bootstrap or BootstrapConfig()
    image_emb = np.asarray(image_emb, dtype=np.float32)
    ids = list(ids) if ids is not None else [str(i) for i in range(len(image_emb))]
    if len(ids) != len(image_emb):
        raise ValueError(f'ids must name every embedding row ({len(image_emb)}), not {len(ids)}')
    if unit == 'scan':
        ids, image_emb, text_emb, labels = _group_embeddings(ids, image_emb, text_emb, labels)
    elif unit != 'volume':
        raise ValueError(f"retrieval unit must be 'volume' or 'scan', not {unit!r}")
    units = [scan_id(i) for i in ids] if bootstrap.unit == 'scan' else ids
    index, unit_names = unit_index(units)
    counts = draw_counts(len(unit_names), bootstrap.n_draws, bootstrap.seed)
    scans = unit_index([scan_id(i) for i in ids])[0]
    out: dict = {
        'n_volumes': len(ids),
        'unit': unit,
        'options': options.as_dict(),
        'bootstrap': bootstrap.as_dict(),
    }
    if text_emb is not None:
        ranks = report_ranks(image_emb, text_emb, options, units=scans)
        out['report_to_volume'] = _recall_block(ranks, options, index, counts, bootstrap.level)
    if labels is not None:
        values, valid = volume_map_values(image_emb, labels, options, units=scans)
        block = _map_block(values, valid, options, index, counts, bootstrap.level)
        block['n_candidates'] = int((np.asarray(labels) == 1).any(1).sum())
        out['volume_to_volume'] = block
    return out


def _recall_block(ranks, options: RetrievalOptions, index, counts, level: float) -> dict:
    """Recall@K with CIs, plus the whole Recall@K curve up to K = 100 for the plot."""
    ok = np.ones(len(ranks), dtype=bool)
    block: dict = {'n_queries': len(ranks)}
    for k in options.recall_ks:
        hits = (ranks < k).astype(np.float64)
        block[f'recall@{k}'] = summarise(
            hits.mean(), weighted_mean_draws(hits, ok, index, counts), level
        )
    top = min(len(ranks), max(100, options.recall_ks[-1]))
    curve = np.cumsum(np.bincount(np.minimum(ranks, top), minlength=top + 1))[:top] / len(ranks)
    block['curve'] = {'k': list(range(1, top + 1)), 'recall': curve.round(5).tolist()}
    return block


def _map_block(values, valid, options: RetrievalOptions, index, counts, level: float) -> dict:
    block: dict = {'n_queries': int(valid.sum())}
    for j, k in enumerate(options.map_ks):
        point = values[valid, j].mean() if valid.any() else np.nan
        draws = weighted_mean_draws(values[:, j], valid, index, counts)
        block[f'map@{k}'] = summarise(point, draws, level)
    return block
