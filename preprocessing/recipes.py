"""Named preprocessing recipes, as data.

A recipe fixes the cache grid (spacing, shape, orientation) and also carries the load-time choices
(HU window and training crop), so a cache records everything the training dataset needs to turn its
int16 HU into model input. Only the grid fields change the cached voxels, so only they enter the hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

AIR_HU = -1000
ORIENTATIONS = ('LPS', 'RAS')
INTERPOLATIONS = ('linear', 'bspline', 'nearest')
# how a cache stores its int16 chunks: blosc-lz4 with byte shuffle (about 2.2x smaller than raw
# int16 on real CT), or raw (faster page-cache-warm crops, 2.2x the bytes); benchmarks/perf/
# cache_layout.md has the measurements
CACHE_CODECS = ('blosc-lz4', 'none')


@dataclass(frozen=True)
class Recipe:
    """Target grid of the cache plus the window/crop applied when the cache is read for training.

    All geometry is in (z, y, x) order: `shape_zyx=(120, 240, 240)` is D x H x W.
    """

    name: str
    spacing_zyx: tuple[float, float, float]
    shape_zyx: tuple[int, int, int]
    window_hu: tuple[float, float] = (-1000.0, 200.0)
    window_out: tuple[float, float] = (-1.0, 1.0)
    train_crop_zyx: tuple[int, int, int] | None = None
    orientation: str = 'LPS'
    interpolation: str = 'linear'
    pad_hu: int = AIR_HU
    chunks_zyx: tuple[int, int, int] | None = None
    cache_codec: str = 'blosc-lz4'
    description: str = ''

    def __post_init__(self) -> None:
        if len(self.spacing_zyx) != 3 or any(float(s) <= 0 for s in self.spacing_zyx):
            raise ValueError(
                f'Recipe spacing_zyx must be 3 positive numbers, not {self.spacing_zyx}'
            )
        if len(self.shape_zyx) != 3 or any(int(s) < 1 for s in self.shape_zyx):
            raise ValueError(f'Recipe shape_zyx must be 3 positive integers, not {self.shape_zyx}')
        if self.orientation not in ORIENTATIONS:
            raise ValueError(
                f'Recipe orientation must be one of {ORIENTATIONS}, not {self.orientation!r}'
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f'Recipe interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}'
            )
        if self.cache_codec not in CACHE_CODECS:
            raise ValueError(
                f'Recipe cache_codec must be one of {CACHE_CODECS}, not {self.cache_codec!r}'
            )
        lo, hi = self.window_hu
        if not lo < hi:
            raise ValueError(
                f'Recipe window_hu must be (low, high) with low < high, not {self.window_hu}'
            )
        crop = self.train_crop_zyx
        if crop is not None and any(c > s for c, s in zip(crop, self.shape_zyx, strict=False)):
            raise ValueError(f'Recipe train_crop_zyx {crop} must fit in shape_zyx {self.shape_zyx}')

    @property
    def crop_zyx(self) -> tuple[int, int, int]:
        """The training/evaluation crop; the full grid when the recipe has none."""
        return tuple(self.train_crop_zyx or self.shape_zyx)  # type: ignore[return-value]

    @property
    def chunk_shape(self) -> tuple[int, int, int]:
        """HDF5 chunks: slabs of 8 whole slices. A training crop covers about 80% of each axis, so
        any y/x split still touches every column of chunks, while thin slabs decode only the
        crop's slices; slabs measured faster than 32x64x64, 48x96x96 or 24x120x120 blocks and
        8 slices than 16 or 24 (benchmarks/perf/cache_layout.md)."""
        if self.chunks_zyx:
            return tuple(int(c) for c in self.chunks_zyx)  # type: ignore[return-value]
        depth, height, width = self.shape_zyx
        return (max(1, min(8, depth)), height, width)

    def grid_dict(self) -> dict[str, Any]:
        """The fields that determine the cached voxels (and so the recipe hash)."""
        return {
            'spacing_zyx': [float(s) for s in self.spacing_zyx],
            'shape_zyx': [int(s) for s in self.shape_zyx],
            'orientation': self.orientation,
            'interpolation': self.interpolation,
            'pad_hu': int(self.pad_hu),
            'centre': 'body',
            'dtype': 'int16',
        }

    @property
    def hash(self) -> str:
        text = json.dumps(self.grid_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out['cache_codec'] == 'blosc-lz4':  # so code from before the field reads such caches
            del out['cache_codec']
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f'Unknown recipe fields {unknown}; valid fields: {sorted(names)}')
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Recipe:
        changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
        return dataclasses.replace(self, **changes)


RECIPES: dict[str, Recipe] = {
    'li2025': Recipe(
        name='li2025',
        spacing_zyx=(3.0, 1.5, 1.5),
        shape_zyx=(120, 240, 240),
        window_hu=(-1000.0, 200.0),
        window_out=(-1.0, 1.0),
        train_crop_zyx=(96, 192, 192),
        description='Li et al. 2025 / GreenRFM: 1.5x1.5x3 mm, 240x240x120, [-1000,200] -> [-1,1]',
    ),
    'ctclip': Recipe(
        name='ctclip',
        spacing_zyx=(1.5, 0.75, 0.75),
        shape_zyx=(240, 480, 480),
        window_hu=(-1000.0, 1000.0),
        window_out=(-1.0, 1.0),
        train_crop_zyx=None,
        description='CT-CLIP: 0.75x0.75x1.5 mm, 480x480x240, [-1000,1000] / 1000',
    ),
    'merlin': Recipe(
        name='merlin',
        spacing_zyx=(3.0, 1.5, 1.5),
        shape_zyx=(160, 224, 224),
        window_hu=(-1000.0, 1000.0),
        window_out=(0.0, 1.0),
        train_crop_zyx=None,
        orientation='RAS',
        description='Merlin-style: RAS, 1.5x1.5x3 mm, 224x224x160, [-1000,1000] -> [0,1]',
    ),
    'small': Recipe(
        name='small',
        spacing_zyx=(6.0, 3.0, 3.0),
        shape_zyx=(56, 112, 112),
        window_hu=(-1000.0, 200.0),
        window_out=(-1.0, 1.0),
        train_crop_zyx=(48, 96, 96),
        description='Demo/tests: 3x3x6 mm, 112x112x56, [-1000,200] -> [-1,1], crop 96x96x48',
    ),
}
DEFAULT_RECIPE = 'li2025'


def get_recipe(name_or_recipe: str | dict | Recipe, **overrides: Any) -> Recipe:
    """A recipe by name (or from a dict such as a cache's `recipe` attribute), with field overrides."""
    if isinstance(name_or_recipe, Recipe):
        recipe = name_or_recipe
    elif isinstance(name_or_recipe, dict):
        recipe = Recipe.from_dict(name_or_recipe)
    elif name_or_recipe in RECIPES:
        recipe = RECIPES[name_or_recipe]
    else:
        raise ValueError(f'Unknown recipe {name_or_recipe!r}; available: {sorted(RECIPES)}')
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return recipe.replace(**overrides) if overrides else recipe


def list_recipes() -> list[str]:
    return sorted(RECIPES)
