"""Scoring from files: any model's scores CSV or embeddings, no model needed.

These are `ctclip bench score` and `ctclip bench retrieval`; they also re-score a model run's
saved `scores.csv` / `image_emb.npy` under other options.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from benchmarks import ctrate, radchestct
from benchmarks.report import write_report
from benchmarks.scoring import score, score_retrieval
from benchmarks.settings import (
    bootstrap_config,
    metrics_header,
    require,
    retrieval_options,
    scoring_options,
    with_defaults,
)
from benchmarks.tables import Table, normalise_id, read_table


def score_files(cfg: dict) -> dict:
    """`ctclip bench score`: a scores CSV against a labels CSV (optionally a RAD-ChestCT mapping)."""
    cfg = with_defaults(cfg)
    out = Path(require(cfg, 'out', '--out DIR'))
    scores = read_table(require(cfg, 'scores', '--scores scores.csv'))
    labels = ctrate.read_labels(require(cfg, 'labels', '--labels labels.csv'))
    metrics = metrics_header(
        cfg, 'Zero-shot classification (scored from files)', 'ctclip-zero-shot'
    )
    if cfg.get('benchmark') not in (None, 'ct-rate', 'rad-chestct'):
        raise ValueError(f'benchmark must be ct-rate or rad-chestct, not {cfg["benchmark"]!r}')
    metrics['benchmark'] = cfg.get('benchmark')
    classes = None
    if cfg.get('mapping') and radchestct.is_raw_table(labels):
        mapping = radchestct.get_mapping(cfg['mapping'])
        labels = radchestct.map_labels(labels, mapping)
        if not set(mapping.class_names) <= set(scores.columns):
            scores = radchestct.map_scores(scores, mapping)
        metrics['mapping'] = mapping.as_dict()
        metrics['benchmark'] = 'rad-chestct'
        classes = mapping.class_names
    metrics['classification'] = score(
        scores, labels, classes, scoring_options(cfg), bootstrap_config(cfg)
    )
    write_report(metrics, out, plots_enabled=bool(cfg.get('plots', True)))
    return metrics


def load_matrix(path: str | os.PathLike, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{what} file {str(path)!r} does not exist')
    array = np.load(path)
    if isinstance(array, np.lib.npyio.NpzFile):
        array = array[array.files[0]]
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3 and array.shape[1] == 1:  # CT-CLIP saves (N, 1, E)
        array = array[:, 0]
    if array.ndim != 2:
        raise ValueError(f'{path}: {what} must be (N, E), not shape {array.shape}')
    return array


def retrieval_files(cfg: dict) -> dict:
    """`ctclip bench retrieval`: embeddings (.npy/.npz, rows = volumes) plus labels and optional ids."""
    cfg = with_defaults(cfg)
    out = Path(require(cfg, 'out', '--out DIR'))
    image = load_matrix(require(cfg, 'image_emb', '--image-emb img.npy'), 'image embeddings')
    text = load_matrix(cfg['text_emb'], 'text embeddings') if cfg.get('text_emb') else None
    labels = ctrate.load_labels(cfg['labels']) if cfg.get('labels') else None
    if cfg.get('ids'):
        ids = [
            line.strip()
            for line in Path(cfg['ids']).read_text(encoding='utf-8').splitlines()
            if line.strip()
        ]
    elif labels is not None:
        ids = labels.ids
    else:
        ids = [str(i) for i in range(len(image))]
    if len(ids) != len(image):
        raise ValueError(
            f'{len(image)} embedding rows but {len(ids)} ids (from --ids or the labels CSV); they must match'
        )
    lab = labels.select(ids=match_ids(labels, ids)).values if labels is not None else None
    metrics = metrics_header(cfg, 'Retrieval (scored from files)', 'ctclip-retrieval')
    metrics['retrieval'] = score_retrieval(
        image,
        text,
        lab,
        ids,
        retrieval_options(cfg),
        bootstrap_config(cfg),
        cfg['retrieval'].get('unit', 'volume'),
    )
    write_report(metrics, out, plots_enabled=bool(cfg.get('plots', True)))
    return metrics


def match_ids(table: Table, ids: list[str]) -> list[str]:
    """Table ids for `ids`, matching with or without the file extension."""
    where = {normalise_id(i): i for i in table.ids}
    missing = [i for i in ids if normalise_id(i) not in where]
    if missing:
        raise ValueError(f'{table.source}: {len(missing)} ids have no labels, e.g. {missing[:5]}')
    return [where[normalise_id(i)] for i in ids]
