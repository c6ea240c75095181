"""Model benchmark runs from a config dict: a model over CT-RATE or RAD-ChestCT.

Each `run_*` returns the metrics dict it also wrote to `out/metrics.json` (with report.md,
report.html and the PNGs). The model runners save image embeddings chunk by chunk and the
per-volume scores (`scores.csv`), so a killed run resumes and any run can be re-scored with
`ctclip bench score` under other options.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from benchmarks import ctrate, prompts, radchestct
from benchmarks.embeddings import (
    EmbeddingStore,
    embedding_fingerprint,
    model_fingerprint,
    volume_keys,
)
from benchmarks.files import match_ids, retrieval_files, score_files
from benchmarks.report import write_report
from benchmarks.scoring import ScoringOptions, score, score_retrieval
from benchmarks.settings import (
    DEFAULTS,
    bootstrap_config,
    metrics_header,
    require,
    retrieval_options,
    scoring_options,
    with_defaults,
)
from benchmarks.tables import Table, normalise_id, read_table, write_table
from llm_labeling.schema import FINDINGS

_logger = logging.getLogger(__name__)


def _resolve_ctrate(cfg: dict) -> tuple[Path, Path, Path | None, set[str]]:
    """(cache, labels, reports or None, non-chest ids) from `data` / `cache` / `labels` / `reports`."""
    data = Path(require(cfg, 'data', '--data: a CT-RATE root or a cache .h5'))
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
            f'{what} in {root}: preprocess the validation volumes first, e.g. '
            f'`ctclip preprocess --input {root}/dataset/valid_fixed --out {root}/cache.h5 '
            f'--metadata {root}/dataset/metadata/validation_metadata.csv` (merge shards into one '
            'file), then pass --data cache.h5 or --cache'
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


def _eval_crop(cfg: dict, cache) -> tuple[int, int, int]:
    """`embed.crop_zyx`, else the cache recipe's evaluation crop (a centre crop)."""
    if cfg['embed'].get('crop_zyx'):
        return tuple(int(v) for v in cfg['embed']['crop_zyx'])
    crop = cache.recipe.crop_zyx
    return tuple(int(v) for v in (crop() if callable(crop) else crop))


class _NamedReads:
    """A cache whose read errors name the volume and the file (h5py names neither)."""

    def __init__(self, cache):
        self._cache = cache

    def __getattr__(self, name: str):
        return getattr(self._cache, name)

    def __contains__(self, volume_id: object) -> bool:
        return volume_id in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    def _guard(self, volume_id: str, read, *args):
        from preprocessing.errors import CacheCorruptError

        try:
            return read(volume_id, *args)
        except OSError as error:  # a damaged chunk or object header
            raise CacheCorruptError(self._cache.path, volume_id, f'cannot read: {error}') from error

    def shape(self, volume_id: str):
        return self._guard(volume_id, self._cache.shape)

    def attrs(self, volume_id: str):
        return self._guard(volume_id, self._cache.attrs)

    def read(self, volume_id: str):
        return self._guard(volume_id, self._cache.read)

    def read_crop(self, volume_id: str, start_zyx, size_zyx):
        return self._guard(volume_id, self._cache.read_crop, start_zyx, size_zyx)


def _open_cache(path: Path):
    from preprocessing.cache import CHECKSUM_SINCE, open_cache
    from preprocessing.errors import CacheCorruptError

    try:
        cache = open_cache(path)
    except FileNotFoundError:
        raise
    except OSError as error:  # a truncated or non-HDF5 file: h5py does not say which
        raise CacheCorruptError(path, None, f'cannot open: {error}') from error
    # every volume is read whole once, so checking its checksum costs one hash per volume
    if cache.format_version >= CHECKSUM_SINCE:
        cache.verify = True
    else:
        _logger.warning(
            '%s has no checksums (cache format %d): its voxels are read unverified; rerun '
            '`ctclip preprocess` into it to add them',
            path,
            cache.format_version,
        )
    return _NamedReads(cache)


def embedding_store(cfg: dict, cache, window: object, out: Path) -> EmbeddingStore:
    """The store keyed on the model's content, the crop and the window (volumes: per chunk)."""
    fingerprint = embedding_fingerprint(
        model_fingerprint(cfg['model']), _eval_crop(cfg, cache), window
    )
    return EmbeddingStore(out / 'embeddings', fingerprint, int(cfg['embed']['chunk_size']))


def _model_window(model, cache) -> object:
    """The window the model takes: its config's, else the cache recipe's (as inference does)."""
    recipe = cache.recipe
    return model.config.get('window') or [list(recipe.window_hu), list(recipe.window_out)]


def _embed_images(model, cache, ids: list[str], cfg: dict, out: Path) -> np.ndarray:
    from ctclip import inference

    store = embedding_store(cfg, cache, _model_window(model, cache), out)
    batch, crop = int(cfg['embed']['batch_size']), _eval_crop(cfg, cache)
    return store.compute(
        ids,
        lambda chunk: inference.embed_volumes(
            model, cache, chunk, batch_size=batch, crop_zyx=crop, progress=False
        ),
        'embedding volumes',
        keys=lambda chunk: volume_keys(cache, chunk),
    )


def _zero_shot(model, image_emb: np.ndarray, ids: list[str], cfg: dict, out: Path) -> Table:
    from ctclip import inference

    pairs = prompts.resolve_templates(cfg['zero_shot'].get('templates'))
    phrases = prompts.class_phrases(FINDINGS, cfg['zero_shot'].get('class_prompts'))
    ensemble = cfg['zero_shot'].get('ensemble', 'embedding')
    scores = np.asarray(
        inference.zero_shot_scores(model, image_emb, phrases, pairs, ensemble=ensemble)
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
    lab = labels.select(ids=match_ids(labels, ids)).values
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

    out = Path(cfg['out'])
    out.mkdir(parents=True, exist_ok=True)
    cache = _open_cache(cache_path)
    ids = _select_ids(labels, cache.ids(), cfg, drop)
    _logger.info('benchmarking %d volumes from %s', len(ids), cache_path)
    model_dir = require(cfg, 'model', '--model DIR (an exported model folder)')
    model = inference.load_model(model_dir, device=_device(cfg.get('device', 'auto')))
    image_emb = _embed_images(model, cache, ids, cfg, out)
    scores = _zero_shot(model, image_emb, ids, cfg, out)
    return model, ids, image_emb, scores


def _device(name: str) -> str:
    """'auto' is the GPU when there is one; embedding 3,039 CTs on a CPU takes hours."""
    import torch

    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return name


def _model_info(cfg: dict) -> dict:
    return {'dir': str(cfg['model']), 'fingerprint': model_fingerprint(cfg['model'])}


def run_ctrate(cfg: dict) -> dict:
    """Zero-shot over the 18 CT-RATE classes plus both retrievals; writes the report to `out`."""
    cfg = with_defaults(cfg)
    require(cfg, 'out', '--out DIR')
    cache_path, labels_csv, reports, no_chest = _resolve_ctrate(cfg)
    labels = ctrate.load_labels(labels_csv)
    model, ids, image_emb, scores = _run_model(cfg, labels, cache_path, no_chest)
    metrics = metrics_header(
        cfg, f'CT-RATE {cfg["split"]} benchmark', 'ctclip-zero-shot + ctclip-retrieval'
    )
    metrics['benchmark'] = 'ct-rate'
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
    (out / 'ids.txt').write_text('\n'.join(ids) + '\n', encoding='utf-8')


def run_radchestct(cfg: dict) -> dict:
    """Zero-shot on RAD-ChestCT under a named class mapping (`ctclip16`, `hlip`, `hlip14`)."""
    cfg = with_defaults(cfg)
    require(cfg, 'out', '--out DIR')
    mapping = radchestct.get_mapping(cfg.get('mapping') or 'ctclip16')
    raw = read_table(
        require(cfg, 'labels', '--labels imgtest.csv (raw) or a mapped CSV'),
        id_column=radchestct.ID_COLUMN,
    )
    labels = radchestct.map_labels(raw, mapping)
    cache_path = Path(require(cfg, 'data', '--data cache.h5'))
    model, ids, image_emb, scores = _run_model(cfg, labels, cache_path, set())
    mapped = radchestct.map_scores(scores, mapping)
    write_table(mapped, Path(cfg['out']) / 'scores_mapped.csv', id_column=radchestct.ID_COLUMN)
    metrics = metrics_header(
        cfg,
        f'RAD-ChestCT benchmark ({mapping.name} mapping)',
        f'ctclip-zero-shot / rad-chestct-{mapping.name}',
    )
    metrics['benchmark'] = 'rad-chestct'
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
