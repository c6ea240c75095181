"""Benchmark runs from a config dict: a model over CT-RATE or RAD-ChestCT, or score files alone.

Each `run_*` returns the metrics dict it also wrote to `out/metrics.json` (with report.md,
report.html and the PNGs). The model runners save image embeddings chunk by chunk and the
per-volume scores (`scores.csv`), so a killed run resumes and any run can be re-scored with
`ctclip bench score` under other options.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import ctrate, prompts, radchestct
from benchmarks.bootstrap import BootstrapConfig
from benchmarks.embeddings import EmbeddingStore, model_fingerprint
from benchmarks.report import write_report
from benchmarks.retrieval import RetrievalOptions
from benchmarks.scoring import ScoringOptions, score, score_retrieval
from benchmarks.tables import Table, normalise_id, read_table, write_table
from llm_labeling.schema import FINDINGS

_logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    'model': None,
    'data': None,  # CT-RATE root, or a cache (.h5)
    'cache': None,  # explicit cache when `data` is a CT-RATE root
    'labels': None,
    'reports': None,
    'split': 'valid',
    'mapping': 'ctclip16',
    'out': None,
    'limit': None,  # score only the first N labelled volumes (smoke runs)
    'allow_missing': False,
    'zero_shot': {'templates': list(prompts.DEFAULT_TEMPLATES), 'class_prompts': {}},
    'scoring': {'unit': 'volume', 'scan_aggregate': 'mean', 'uncertain': 'exclude'},
    'retrieval': {
        'enabled': True,
        'reference': False,  # reproduce CT-CLIP's scripts, quirks included
        'exclude': 'self',
        'negative_queries': 'skip',
        'cumulative_k': False,
        'ties': 'pessimistic',
        'report_match': 'volume',
        'unit': 'volume',
    },
    'bootstrap': {'n_draws': 1000, 'seed': 0, 'level': 0.95, 'unit': 'scan'},
    'embed': {'batch_size': 4, 'chunk_size': 64},
    'plots': True,
}


def _require(cfg: dict, key: str, hint: str) -> Any:
    if cfg.get(key) in (None, ''):
        raise ValueError(f'{key} must be set ({hint})')
    return cfg[key]


def bootstrap_config(cfg: dict) -> BootstrapConfig:
    b = cfg.get('bootstrap') or {}
    return BootstrapConfig(
        int(b.get('n_draws', 1000)),
        int(b.get('seed', 0)),
        float(b.get('level', 0.95)),
        b.get('unit', 'scan'),
    )


def scoring_options(cfg: dict) -> ScoringOptions:
    s = cfg.get('scoring') or {}
    return ScoringOptions(
        s.get('unit', 'volume'),
        s.get('scan_aggregate', 'mean'),
        s.get('uncertain', 'exclude'),
        bool(cfg.get('allow_missing', False)),
    )


def retrieval_options(cfg: dict) -> RetrievalOptions:
    r = dict(cfg.get('retrieval') or {})
    fields = (
        'exclude',
        'negative_queries',
        'cumulative_k',
        'ties',
        'report_match',
        'recall_ks',
        'map_ks',
        'chunk_size',
    )
    given = {k: r[k] for k in fields if k in r}
    if r.get('reference'):
        # The reference preset wins over the corrected defaults, not over explicit choices.
        defaults = DEFAULTS['retrieval']
        explicit = {k: v for k, v in given.items() if k not in defaults or v != defaults[k]}
        return RetrievalOptions.reference(**explicit)
    return RetrievalOptions(**given)


def _with_defaults(cfg: dict) -> dict:
    from ctclip.config import merge

    return merge(DEFAULTS, cfg or {})


def _metrics_header(cfg: dict, title: str, protocol: str) -> dict:
    return {'title': title, 'protocol': protocol, 'options': copy.deepcopy(cfg), 'notes': []}


# ---------------------------------------------------------------- scoring files only


def score_files(cfg: dict) -> dict:
    """`ctclip bench score`: a scores CSV against a labels CSV (optionally a RAD-ChestCT mapping)."""
    cfg = _with_defaults(cfg)
    out = Path(_require(cfg, 'out', '--out DIR'))
    scores = read_table(_require(cfg, 'scores', '--scores scores.csv'))
    labels = read_table(_require(cfg, 'labels', '--labels labels.csv'))
    metrics = _metrics_header(
        cfg, 'Zero-shot classification (scored from files)', 'ctclip-zero-shot'
    )
    classes = None
    if cfg.get('mapping') and radchestct.is_raw_table(labels):
        mapping = radchestct.get_mapping(cfg['mapping'])
        labels = radchestct.map_labels(labels, mapping)
        if not set(mapping.class_names) <= set(scores.columns):
            scores = radchestct.map_scores(scores, mapping)
        metrics['mapping'] = mapping.as_dict()
        classes = mapping.class_names
    metrics['classification'] = score(
        scores, labels, classes, scoring_options(cfg), bootstrap_config(cfg)
    )
    write_report(metrics, out, plots_enabled=bool(cfg.get('plots', True)))
    return metrics


def _load_matrix(path: str | os.PathLike, what: str) -> np.ndarray:
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
    cfg = _with_defaults(cfg)
    out = Path(_require(cfg, 'out', '--out DIR'))
    image = _load_matrix(_require(cfg, 'image_emb', '--image-emb img.npy'), 'image embeddings')
    text = _load_matrix(cfg['text_emb'], 'text embeddings') if cfg.get('text_emb') else None
    labels = ctrate.load_labels(cfg['labels']) if cfg.get('labels') else None
    if cfg.get('ids'):
        ids = [line.strip() for line in Path(cfg['ids']).read_text().splitlines() if line.strip()]
    elif labels is not None:
        ids = labels.ids
    else:
        ids = [str(i) for i in range(len(image))]
    if len(ids) != len(image):
        raise ValueError(
            f'{len(image)} embedding rows but {len(ids)} ids (from --ids or the labels CSV); they must match'
        )
    lab = labels.select(ids=_match_ids(labels, ids)).values if labels is not None else None
    metrics = _metrics_header(cfg, 'Retrieval (scored from files)', 'ctclip-retrieval')
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


def _match_ids(table: Table, ids: list[str]) -> list[str]:
    """Table ids for `ids`, matching with or without the file extension."""
    where = {normalise_id(i): i for i in table.ids}
    missing = [i for i in ids if normalise_id(i) not in where]
    if missing:
        raise ValueError(f'{table.source}: {len(missing)} ids have no labels, e.g. {missing[:5]}')
    return [where[normalise_id(i)] for i in ids]


# ---------------------------------------------------------------- model runners


def _resolve_ctrate(cfg: dict) -> tuple[Path, Path, Path | None, set[str]]:
    """(cache, labels, reports or None, non-chest ids) from `data` / `cache` / `labels` / `reports`."""
    data = Path(_require(cfg, 'data', '--data: a CT-RATE root or a cache .h5'))
    split = cfg.get('split', 'valid')
    root = data if data.is_dir() else None
    cache = (
        Path(cfg['cache']) if cfg.get('cache') else (data if data.is_file() else _find_cache(data))
    )
    labels = (
        Path(cfg['labels'])
        if cfg.get('labels')
        else (ctrate.labels_path(root, split) if root else None)
    )
    if labels is None or not labels.is_file():
        raise FileNotFoundError(
            f'CT-RATE labels CSV not found ({labels}); pass --labels valid_predicted_labels.csv'
        )
    reports = (
        Path(cfg['reports'])
        if cfg.get('reports')
        else (ctrate.reports_path(root, split) if root else None)
    )
    if reports is not None and not reports.is_file():
        if cfg.get('reports'):
            raise FileNotFoundError(f'Reports file {str(reports)!r} does not exist')
        reports = None
    no_chest = ctrate.load_no_chest(ctrate.no_chest_path(root, split)) if root else set()
    return cache, labels, reports, no_chest


def _find_cache(root: Path) -> Path:
    """The one cache file in a CT-RATE root (or its `cache/` folder); several must be merged first."""
    found = sorted(root.glob('*.h5')) + sorted(root.glob('cache/*.h5'))
    if len(found) != 1:
        what = (
            'No cache (*.h5)'
            if not found
            else f'{len(found)} caches ({[p.name for p in found[:4]]})'
        )
        raise FileNotFoundError(
            f'{what} in {root}: preprocess the CT-RATE tree first (ctclip preprocess ...; shards '
            'merged into one file) and pass --data cache.h5, or name it with --cache'
        )
    return found[0]


def _select_ids(labels: Table, cache_ids: list[str], cfg: dict, drop: set[str]) -> list[str]:
    in_cache = {normalise_id(i): i for i in cache_ids}
    ids = [i for i in labels.ids if normalise_id(i) not in drop]
    missing = [i for i in ids if normalise_id(i) not in in_cache]
    if missing and not cfg.get('allow_missing'):
        raise ValueError(
            f'{len(missing)} of {len(ids)} labelled volumes are not in the cache, e.g. {missing[:5]}; '
            'preprocess them or pass allow_missing=true'
        )
    ids = [in_cache[normalise_id(i)] for i in ids if normalise_id(i) in in_cache]
    if cfg.get('limit'):
        ids = ids[: int(cfg['limit'])]
    if not ids:
        raise ValueError('no labelled volume is in the cache: nothing to benchmark')
    return ids


def _embed_images(model, cache, ids: list[str], cfg: dict, out: Path) -> np.ndarray:
    from ctclip import inference

    store = EmbeddingStore(
        out / 'embeddings', model_fingerprint(cfg['model']), int(cfg['embed']['chunk_size'])
    )
    batch = int(cfg['embed']['batch_size'])
    return store.compute(
        ids,
        lambda chunk: inference.embed_volumes(model, cache, chunk, batch_size=batch),
        'embedding volumes',
    )


def _zero_shot(model, image_emb: np.ndarray, ids: list[str], cfg: dict, out: Path) -> Table:
    from ctclip import inference

    pairs = prompts.resolve_templates(cfg['zero_shot'].get('templates'))
    phrases = prompts.class_phrases(FINDINGS, cfg['zero_shot'].get('class_prompts'))
    scores = np.asarray(
        inference.zero_shot_scores(model, image_emb, phrases, pairs if len(pairs) > 1 else pairs[0])
    )
    if scores.shape != (len(ids), len(FINDINGS)):
        raise ValueError(
            f'zero_shot_scores returned shape {scores.shape}, expected ({len(ids)}, {len(FINDINGS)})'
        )
    table = Table(list(ids), list(FINDINGS), scores, str(out / 'scores.csv'))
    write_table(table, out / 'scores.csv')
    return table


def _ctrate_retrieval(
    model, image_emb, ids, labels: Table, reports: Path | None, cfg, metrics
) -> dict | None:
    from ctclip import inference

    texts = None
    if reports is not None:
        by_id = ctrate.load_reports(reports)
        lacking = [i for i in ids if normalise_id(i) not in by_id]
        if lacking:
            metrics['notes'].append(
                f'Report->volume retrieval skipped: {len(lacking)} volumes have no report (e.g. {lacking[0]}).'
            )
        else:
            texts = [by_id[normalise_id(i)] for i in ids]
    else:
        metrics['notes'].append(
            'Report->volume retrieval skipped: no reports CSV (pass --reports).'
        )
    text_emb = np.asarray(inference.embed_texts(model, texts), dtype=np.float32) if texts else None
    lab = labels.select(ids=_match_ids(labels, ids)).values
    return score_retrieval(
        image_emb,
        text_emb,
        lab,
        ids,
        retrieval_options(cfg),
        bootstrap_config(cfg),
        cfg['retrieval'].get('unit', 'volume'),
    )


def _run_model(cfg: dict, labels: Table, cache_path: Path, drop: set[str]):
    """Load the model and cache, embed the selected volumes and score them zero-shot."""
    from ctclip import inference
    from preprocessing.cache import open_cache

    out = Path(cfg['out'])
    out.mkdir(parents=True, exist_ok=True)
    cache = open_cache(cache_path)
    ids = _select_ids(labels, cache.ids(), cfg, drop)
    _logger.info('benchmarking %d volumes from %s', len(ids), cache_path)
    model = inference.load_model(_require(cfg, 'model', '--model DIR (an exported model folder)'))
    image_emb = _embed_images(model, cache, ids, cfg, out)
    scores = _zero_shot(model, image_emb, ids, cfg, out)
    return model, ids, image_emb, scores


def _model_info(cfg: dict) -> dict:
    return {'dir': str(cfg['model']), 'fingerprint': model_fingerprint(cfg['model'])}


def run_ctrate(cfg: dict) -> dict:
    """Zero-shot over the 18 CT-RATE classes plus both retrievals; writes the report to `out`."""
    cfg = _with_defaults(cfg)
    _require(cfg, 'out', '--out DIR')
    cache_path, labels_csv, reports, no_chest = _resolve_ctrate(cfg)
    labels = ctrate.load_labels(labels_csv)
    model, ids, image_emb, scores = _run_model(cfg, labels, cache_path, no_chest)
    metrics = _metrics_header(
        cfg, f'CT-RATE {cfg["split"]} benchmark', 'ctclip-zero-shot + ctclip-retrieval'
    )
    metrics.update(
        model=_model_info(cfg),
        prompts=prompts.describe(prompts.resolve_templates(cfg['zero_shot']['templates'])),
    )
    metrics['data'] = {
        'cache': str(cache_path),
        'labels': str(labels_csv),
        'reports': str(reports) if reports else None,
        'n_dropped_non_chest': len(no_chest),
    }
    metrics['classification'] = score(
        scores,
        labels,
        list(FINDINGS) if set(FINDINGS) <= set(labels.columns) else None,
        scoring_options(cfg) if not cfg.get('limit') else _limited(cfg),
        bootstrap_config(cfg),
    )
    if cfg['retrieval'].get('enabled', True):
        metrics['retrieval'] = _ctrate_retrieval(
            model, image_emb, ids, labels, reports, cfg, metrics
        )
        _save_embeddings_for_rescoring(cfg, ids, image_emb)
    write_report(metrics, cfg['out'], plots_enabled=bool(cfg.get('plots', True)))
    return metrics


def _limited(cfg: dict) -> ScoringOptions:
    """With `limit`, only the first N labelled volumes have scores: score those."""
    opts = scoring_options(cfg)
    return ScoringOptions(opts.unit, opts.scan_aggregate, opts.uncertain, True)


def _save_embeddings_for_rescoring(cfg: dict, ids: list[str], image_emb: np.ndarray) -> None:
    out = Path(cfg['out'])
    np.save(out / 'image_emb.npy', image_emb)
    (out / 'ids.txt').write_text('\n'.join(ids) + '\n')


def run_radchestct(cfg: dict) -> dict:
    """Zero-shot on RAD-ChestCT under a named class mapping (`ctclip16`, `hlip`, `hlip14`)."""
    cfg = _with_defaults(cfg)
    _require(cfg, 'out', '--out DIR')
    mapping = radchestct.get_mapping(cfg.get('mapping') or 'ctclip16')
    raw = read_table(
        _require(cfg, 'labels', '--labels imgtest.csv (raw) or a mapped CSV'),
        id_column=radchestct.ID_COLUMN,
    )
    labels = radchestct.map_labels(raw, mapping)
    cache_path = Path(_require(cfg, 'data', '--data cache.h5'))
    model, ids, image_emb, scores = _run_model(cfg, labels, cache_path, set())
    mapped = radchestct.map_scores(scores, mapping)
    write_table(mapped, Path(cfg['out']) / 'scores_mapped.csv', id_column=radchestct.ID_COLUMN)
    metrics = _metrics_header(
        cfg,
        f'RAD-ChestCT benchmark ({mapping.name} mapping)',
        f'ctclip-zero-shot / rad-chestct-{mapping.name}',
    )
    metrics.update(
        model=_model_info(cfg),
        mapping=mapping.as_dict(),
        prompts=prompts.describe(prompts.resolve_templates(cfg['zero_shot']['templates'])),
    )
    metrics['data'] = {'cache': str(cache_path), 'labels': str(cfg['labels'])}
    opts = _limited(cfg) if cfg.get('limit') else scoring_options(cfg)
    metrics['classification'] = score(
        mapped, labels, mapping.class_names, opts, bootstrap_config(cfg)
    )
    write_report(metrics, cfg['out'], plots_enabled=bool(cfg.get('plots', True)))
    return metrics


__all__ = ['DEFAULTS', 'run_ctrate', 'run_radchestct', 'score_files', 'retrieval_files']
