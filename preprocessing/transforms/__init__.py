"""The preprocessing steps as TorchIO transforms, for users composing their own pipelines."""

from __future__ import annotations

import torchio as tio

from preprocessing.recipes import Recipe, get_recipe
from preprocessing.transforms.calibrate_hu import CalibrateHU
from preprocessing.transforms.resample_to_grid import ResampleToGrid
from preprocessing.transforms.window_hu import WindowHU

__all__ = ['CalibrateHU', 'ResampleToGrid', 'WindowHU', 'recipe_transform']


def recipe_transform(recipe: str | dict | Recipe = 'li2025', window: bool = True) -> tio.Compose:
    """HU image -> padding to air -> recipe grid -> (optionally) the recipe's window, as one Compose."""
    recipe = get_recipe(recipe)
    steps: list[tio.Transform] = [CalibrateHU(), ResampleToGrid(recipe)]
    if window:
        steps.append(WindowHU(recipe.window_hu, recipe.window_out))
    return tio.Compose(steps)
