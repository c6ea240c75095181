"""Build the training and validation datasets of a run from its `data` config section."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctclip.data.dataset import CTVolumeDataset, open_volume_cache
from ctclip.data.sampling import paired_plan, patient_fraction_split, select_split
from ctclip.data.text import Tokenize, build_text_table, load_evidence, load_labels, load_reports
from ctclip.data.transforms import (
    AnyWindow,
    build_augment,
    parse_size,
    parse_window,
    recipe_crop,
    recipe_window,
)

_logger = logging.getLogger(__name__)

DATA_DEFAULTS: dict[str, Any] = {
    'cache': None,
    'labels': None,
    'reports': None,
    'evidence': None,
    'evidence_statuses': ['present', 'uncertain'],
    'train_split': ['train'],
    'val_split': ['valid'],
    'val_fraction': 0.0,
    'paired_fraction': 1.0,
    'unpaired_text': 'other',
    'crop_zyx': None,
    'window': None,
    'max_length': 128,
    'max_evidence': 8,
    'evidence_length': 32,
    'num_workers': 0,
    'augment': None,
    'max_val_volumes': None,
}


@dataclass
class CacheIndex:
    """What the engine needs to know of every cached volume, read once from the attributes."""

    ids: list[str]
    patients: list[str]
    splits: list[str]
    shapes: list[tuple[int, int, int]]
    recipe: dict


def index_cache(path: str) -> CacheIndex:
    cache = open_volume_cache(path)
    ids = sorted(cache.ids())
    if not ids:
        raise ValueError(f'The cache {path} holds no volumes')
    recipe = _recipe_dict(cache)
    patients, splits, shapes = [], [], []
    for volume_id in ids:
        attrs = cache.attrs(volume_id)
        patients.append(str(attrs.get('patient_id') or volume_id))
        splits.append(str(attrs.get('split') or ''))
        shapes.append(_volume_shape(cache, volume_id, attrs))
    return CacheIndex(ids, patients, splits, shapes, recipe)


def _recipe_dict(cache: Any) -> dict:
    recipe = getattr(cache, 'recipe_dict', None)
    if recipe is None:
        recipe = getattr(cache, 'recipe', None)
        recipe = recipe.to_dict() if hasattr(recipe, 'to_dict') else recipe
    return dict(recipe or {})


def _volume_shape(cache: Any, volume_id: str, attrs: Mapping) -> tuple[int, int, int]:
    shape_fn = getattr(cache, 'shape', None)
    if callable(shape_fn):
        return tuple(int(v) for v in shape_fn(volume_id))  # type: ignore[return-value]
    for key in ('shape_zyx', 'shape'):
        if attrs.get(key) is not None:
            return tuple(int(v) for v in attrs[key])  # type: ignore[return-value]
    return tuple(cache.read(volume_id).array.shape)  # type: ignore[return-value]


def split_masks(index: CacheIndex, cfg: Mapping, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation masks by the cache's split attribute, optionally holding out patients."""
    train = select_split(index.splits, index.patients, cfg['train_split'])
    val = np.zeros_like(train)
    if cfg.get('val_split'):
        val = select_split(index.splits, index.patients, cfg['val_split'])
    if cfg.get('val_fraction'):
        held = patient_fraction_split(index.patients, float(cfg['val_fraction']), seed) & train
        train, val = train & ~held, val | held
    if not train.any():
        raise ValueError(
            f'No volume of {cfg["cache"]} is in data.train_split={cfg["train_split"]}; '
            f'its splits are {sorted(set(index.splits))}'
        )
    return train, val


def resolve_crop_window(cfg: Mapping, recipe: Mapping) -> tuple[tuple[int, int, int], AnyWindow]:
    """Config values win over the cache recipe; the recipe is the default."""
    crop = (
        parse_size(cfg['crop_zyx'], 'data.crop_zyx') if cfg.get('crop_zyx') else recipe_crop(recipe)
    )
    window = parse_window(cfg['window']) if cfg.get('window') else recipe_window(recipe)
    if crop is None:
        raise ValueError('data.crop_zyx must be set: the cache recipe names no training crop')
    if window is None:
        raise ValueError('data.window must be set: the cache recipe names no intensity window')
    return crop, window


def build_datasets(
    cfg: Mapping,
    tokenize: Tokenize | None,
    seed: int,
    pseudo_labels: Mapping[str, np.ndarray] | None = None,
) -> tuple[CTVolumeDataset, CTVolumeDataset | None]:
    """The training dataset (random crops, limited pairing) and the validation one (centre crops)."""
    cfg = {**DATA_DEFAULTS, **cfg}
    if not cfg.get('cache'):
        raise ValueError('data.cache must name the preprocessing cache (.h5)')
    if not cfg.get('labels'):
        raise ValueError('data.labels must name labels.csv')
    index = index_cache(cfg['cache'])
    crop, window = resolve_crop_window(cfg, index.recipe)
    labels = load_labels(cfg['labels'])
    reports = load_reports(cfg['reports']) if cfg.get('reports') else None
    evidence = (
        load_evidence(cfg['evidence'], cfg['evidence_statuses']) if cfg.get('evidence') else None
    )
    train_mask, val_mask = split_masks(index, cfg, seed)

    def make(mask: np.ndarray, train: bool) -> CTVolumeDataset:
        rows = np.flatnonzero(mask)
        ids = [index.ids[r] for r in rows]
        table = build_text_table(
            ids,
            labels,
            reports,
            evidence,
            tokenize,
            cfg['max_length'],
            cfg['max_evidence'] if evidence else 0,
            cfg['evidence_length'],
        )
        patients = [index.patients[r] for r in rows]
        paired = paired_plan(patients, float(cfg['paired_fraction']), seed) if train else None
        pseudo = None
        if train and pseudo_labels is not None:
            pseudo = np.stack(
                [pseudo_labels.get(v, np.full(table.labels.shape[1], -1.0)) for v in ids]
            ).astype(np.float32)
        return CTVolumeDataset(
            cfg['cache'],
            ids,
            [index.shapes[r] for r in rows],
            table,
            crop,
            window,
            paired=paired,
            train=train,
            pseudo_labels=pseudo,
            unpaired_text=cfg['unpaired_text'],
            augment=build_augment(cfg.get('augment')) if train else None,
            seed=seed,
        )

    train_ds = make(train_mask, True)
    train_ds.recipe = {**index.recipe, 'train_crop_zyx': list(crop)}
    train_ds.window = window
    if cfg.get('max_val_volumes'):
        keep = np.flatnonzero(val_mask)[: int(cfg['max_val_volumes'])]
        val_mask = np.zeros_like(val_mask)
        val_mask[keep] = True
    val_ds = make(val_mask, False) if val_mask.any() else None
    _logger.info(
        'Data: %d train volumes (%d paired), %d validation volumes, crop %s, %s',
        len(train_ds),
        int(train_ds.paired.sum()),
        len(val_ds) if val_ds else 0,
        crop,
        window,
    )
    return train_ds, val_ds
