"""Phrase grounding: a 3D heat map per phrase, in the source CT's own grid and geometry.

The map of a phrase is the cosine similarity between its text embedding and each spatial image
token in the joint space (`CTClip.encode_image_grid`), interpolated trilinearly (as an upsampling
to the model input grid would) and evaluated at every voxel of the source grid: each voxel's world
position goes through the inverse of the reorientation and resampling and of the centre crop /
air padding, using the geometry that preprocessing recorded in the cache
(`preprocessing.inverse`). One pass, no intermediate grids. Voxels the model did not see get -1,
the lowest cosine.

Binary masks come from one of two documented rules (docs/grounding.md):
- `top_fraction` (default, value 0.02): the highest-scoring `value` share of the body's voxels;
- `max_fraction` (value e.g. 0.8): body voxels scoring at least min + value * (max - min).
The body is the largest connected region above -500 HU on the cache grid with each axial slice's
holes filled (lungs included), mapped to the source grid.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

_logger = logging.getLogger(__name__)

THRESHOLD_RULES = ('top_fraction', 'max_fraction')
DEFAULT_RULE = ('top_fraction', 0.02)
OUTSIDE = -1.0  # the map's value where the model saw nothing (the lowest cosine)
BODY_HU = -500.0


@dataclass
class GroundingMaps:
    """Heat maps of `phrases` for one volume.

    `maps` [P, z, y, x] lie on `geometry` (the source grid, or the cache grid when the volume
    has no recorded source geometry; `space` says which); `body` is the body mask on that grid.
    """

    volume_id: str
    phrases: list[str]
    maps: np.ndarray
    body: np.ndarray
    geometry: Any  # preprocessing.inverse.Geometry
    space: str = 'source'
    input_maps: np.ndarray | None = None  # [P, D, H, W] on the model input grid
    timings: dict[str, float] = field(default_factory=dict)

    def masks(self, rule: str = DEFAULT_RULE[0], value: float = DEFAULT_RULE[1]) -> np.ndarray:
        return threshold_maps(self.maps, self.body, rule, value)

    def save(
        self,
        out_dir: str | os.PathLike,
        rule: str = DEFAULT_RULE[0],
        value: float = DEFAULT_RULE[1],
    ) -> list[Path]:
        return save_maps(self, out_dir, rule, value)


def check_threshold(rule: str, value: float) -> None:
    if rule not in THRESHOLD_RULES:
        raise ValueError(f'threshold rule must be one of {list(THRESHOLD_RULES)}, not {rule!r}')
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f'threshold value must be in (0, 1], not {value!r}')


def threshold_maps(
    maps: np.ndarray, body: np.ndarray, rule: str = DEFAULT_RULE[0], value: float = DEFAULT_RULE[1]
) -> np.ndarray:
    """Binary masks [P, ...] from maps [P, ...] by one of `THRESHOLD_RULES`, inside `body`."""
    check_threshold(rule, value)
    maps = np.asarray(maps, np.float32)
    body = np.asarray(body, bool)
    if not body.any():
        body = np.ones(maps.shape[1:], bool)
    out = np.zeros(maps.shape, bool)
    for i, m in enumerate(maps):
        inside = m[body]
        if rule == 'top_fraction':
            k = max(1, int(round(float(value) * inside.size)))
            cut = np.partition(inside, inside.size - k)[inside.size - k]
        else:
            lo, hi = float(inside.min()), float(inside.max())
            cut = lo + float(value) * (hi - lo)
        if inside.max() > inside.min():
            out[i] = (m >= cut) & body
    return out


def body_mask(hu_zyx: np.ndarray) -> np.ndarray:
    """The largest region above -500 HU, each axial slice's holes (the lungs) filled."""
    from scipy import ndimage

    above = np.asarray(hu_zyx) > BODY_HU
    labels, count = ndimage.label(above)
    if count == 0:
        return np.ones(above.shape, bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    for z in range(body.shape[0]):
        body[z] = ndimage.binary_fill_holes(body[z])
    return body


def _resolve_volume(model, volume: Any, cache: Any):
    """(volume_id, HU array on the cache grid, attrs, recipe) of a cache id, `CACHE.h5::id` or a
    CT file preprocessed with the model's recipe."""
    from preprocessing.cache import open_cache

    if isinstance(cache, (str, os.PathLike)):
        cache = open_cache(cache)
    text = str(volume)
    if cache is None and '::' in text:
        path, volume = text.split('::', 1)
        cache = open_cache(path)
    if cache is not None:
        if volume not in cache:
            raise KeyError(f'volume {volume!r} is not in the cache {getattr(cache, "path", "")}')
        entry = cache.read(volume)
        return str(volume), np.asarray(entry.array), dict(entry.attrs), cache.recipe
    from ctclip.inference import _resolve_recipe
    from preprocessing.pipeline import process_row

    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(f'{path}: no such CT file or folder (or pass CACHE.h5::id)')
    recipe = _resolve_recipe(model.config.get('recipe'))
    hu, attrs = process_row({'path': str(path)}, recipe)
    name = path.name.split('.')[0] if path.is_file() else path.name
    return name, hu, attrs, recipe


@torch.inference_mode()
def ground(
    model,
    volume_or_cache_id: Any,
    phrases: Sequence[str],
    cache: Any = None,
    space: str = 'source',
    keep_input_maps: bool = False,
    text_embeddings: np.ndarray | None = None,
) -> GroundingMaps:
    """Heat maps of `phrases` for one volume (see the module docstring).

    Args:
        model: a CTClip in eval mode.
        volume_or_cache_id: a cache volume id (with `cache`), `CACHE.h5::id`, or a NIfTI file /
            DICOM folder, preprocessed on the fly with the model's recipe.
        phrases: free text: evidence quotes, finding names, report sentences.
        cache: a `VolumeCache` or its path.
        space: 'source' (the CT's own grid) or 'cache' (the recipe grid).
        text_embeddings: [P, E] precomputed phrase embeddings (a benchmark embeds each text once).
    """
    import time

    import torch.nn.functional as F

    from ctclip.data.transforms import centre_model_input
    from ctclip.inference import _device, _recipe_window, embed_texts, input_window
    from preprocessing import inverse

    if space not in ('source', 'cache'):
        raise ValueError(f"space must be 'source' or 'cache', not {space!r}")
    if isinstance(phrases, str):
        raise TypeError('phrases must be a sequence of strings, not a single str')
    phrases = list(phrases)
    if not phrases:
        raise ValueError('phrases must hold at least one phrase, not an empty list')
    t0 = time.perf_counter()
    volume_id, hu, attrs, recipe = _resolve_volume(model, volume_or_cache_id, cache)
    t1 = time.perf_counter()
    window = input_window(model, _recipe_window(recipe))
    size = tuple(int(s) for s in recipe.crop_zyx)
    x = centre_model_input(hu, size, window)
    device = _device(model)
    model.eval()
    grid = model.encode_image_grid(torch.from_numpy(x[None]).to(device), window.spec).float()
    if text_embeddings is None:
        text_embeddings = embed_texts(model, phrases)
    text = torch.as_tensor(np.asarray(text_embeddings, np.float32), device=device)
    if text.shape != (len(phrases), grid.shape[1]):
        raise ValueError(
            f'text_embeddings must be [{len(phrases)}, {grid.shape[1]}], not {list(text.shape)}'
        )
    sim = torch.einsum('pe,edhw->pdhw', text, grid[0])
    input_maps = None
    if keep_input_maps:
        up = F.interpolate(sim[None], size=size, mode='trilinear', align_corners=False)[0]
        input_maps = up.cpu().numpy().astype(np.float32)
    t2 = time.perf_counter()
    cache_geo = inverse.cache_geometry(attrs, recipe, volume_id)
    target, used = cache_geo, 'cache'
    if space == 'source':
        try:
            target, used = inverse.source_geometry(attrs, volume_id), 'source'
        except ValueError as exc:
            _logger.warning('%s; the maps stay on the cache grid', exc)
    maps, body = _sample(sim, body_mask(hu), target, cache_geo, hu.shape, size)
    t3 = time.perf_counter()
    return GroundingMaps(
        volume_id=volume_id,
        phrases=phrases,
        maps=maps,
        body=body,
        geometry=target,
        space=used,
        input_maps=input_maps,
        timings={'read': t1 - t0, 'model': t2 - t1, 'inverse': t3 - t2},
    )


def _sample(sim, body_cache, target, cache_geo, cache_shape, crop_zyx, chunk_voxels=1 << 22):
    """The token-grid similarities [P, d, h, w] evaluated at every voxel of `target`.

    The value at a voxel is the trilinear interpolation of the token grid at that voxel's world
    position, expressed in model-input coordinates (`align_corners=False`, edges clamped): the
    same function that `F.interpolate(..., mode='trilinear')` samples on the input grid, so this is
    'upsample to the input grid, undo the crop, resample onto the source grid' in one pass without
    the intermediate grids. Voxels outside the model's crop get OUTSIDE; `body` is the cache
    grid's body mask at the nearest cache voxel.
    """
    import torch.nn.functional as F

    from preprocessing import inverse

    a, b = inverse.index_map(target, cache_geo)  # (x, y, z) indices
    start, read, before = inverse.crop_box(cache_shape, crop_zyx)
    zt, yt, xt = target.shape_zyx
    maps = torch.empty((sim.shape[0], zt, yt, xt), dtype=torch.float32)
    body = np.zeros((zt, yt, xt), bool)
    step = max(1, chunk_voxels // max(1, yt * xt))
    i = np.arange(xt, dtype=np.float32)[None, None, :]
    j = np.arange(yt, dtype=np.float32)[None, :, None]
    src = sim[None].float()
    for z0 in range(0, zt, step):
        k = np.arange(z0, min(zt, z0 + step), dtype=np.float32)[:, None, None]
        shape = (k.shape[0], yt, xt)
        grid = np.empty((*shape, 3), np.float32)  # grid_sample's (x, y, z) order
        inside = np.ones(shape, bool)
        body_at = []
        for ax, r in enumerate((2, 1, 0)):  # cache (z, y, x) continuous indices
            idx = np.float32(a[r, 0]) * i + np.float32(a[r, 1]) * j + np.float32(a[r, 2]) * k
            idx = np.broadcast_to(idx + np.float32(b[r]), shape)
            inside &= (idx >= start[ax] - 0.5) & (idx <= start[ax] + read[ax] - 0.5)
            q = idx - (start[ax] - before[ax])  # model-input index
            grid[..., 2 - ax] = (2 * q + 1) / crop_zyx[ax] - 1
            body_at.append(np.rint(idx).astype(np.int64))
        out = F.grid_sample(
            src,
            torch.from_numpy(grid)[None].to(src.device),
            mode='bilinear',
            padding_mode='border',
            align_corners=False,
        )[0].cpu()
        out.masked_fill_(torch.from_numpy(~inside)[None], OUTSIDE)
        maps[:, z0 : z0 + shape[0]] = out
        on_grid = np.ones(shape, bool)
        for idx, n in zip(body_at, cache_shape, strict=True):
            on_grid &= (idx >= 0) & (idx < n)
            np.clip(idx, 0, n - 1, out=idx)
        body[z0 : z0 + shape[0]] = on_grid & body_cache[tuple(body_at)]
    return maps.numpy(), body


def save_maps(
    result: GroundingMaps,
    out_dir: str | os.PathLike,
    rule: str = DEFAULT_RULE[0],
    value: float = DEFAULT_RULE[1],
) -> list[Path]:
    """Write each phrase's map (`map_NN.nii.gz`, float32) and mask (`mask_NN.nii.gz`, uint8)
    with the grid's affine, so they open over the original CT, plus `phrases.json`."""
    import json

    import nibabel as nib

    from ctcommon.atomic import write_text
    from preprocessing.inverse import write_nifti

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    affine = result.geometry.affine_ras()
    masks = result.masks(rule, value)
    written, index = [], []
    for i, phrase in enumerate(result.phrases):
        for kind, data in (('map', result.maps[i]), ('mask', masks[i].astype(np.uint8))):
            path = out / f'{kind}_{i:02d}.nii.gz'
            image = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine)
            written.append(write_nifti(path, image))
        index.append(
            {
                'index': i,
                'phrase': phrase,
                'map': f'map_{i:02d}.nii.gz',
                'mask': f'mask_{i:02d}.nii.gz',
            }
        )
    meta = {
        'volume_id': result.volume_id,
        'space': result.space,
        'threshold': {'rule': rule, 'value': value},
        'phrases': index,
    }
    written.append(write_text(out / 'phrases.json', json.dumps(meta, indent=1)))
    return written
