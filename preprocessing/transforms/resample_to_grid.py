"""TorchIO transform: canonical orientation, recipe spacing and body-centred crop/pad in one resample."""

from __future__ import annotations

import torchio as tio

from preprocessing.grid import resample_to_grid
from preprocessing.recipes import Recipe, get_recipe


class ResampleToGrid(tio.SpatialTransform):
    """Resample onto a recipe's grid with SimpleITK, centred on the body, padding with air.

    This is the same function the cache builder uses, so a user pipeline built from it places the
    voxel grid exactly as the cache does (TorchIO's own `Resample` + `CropOrPad` shift the grid by
    up to half a voxel and pad with 0). Label maps are resampled with nearest neighbour on the
    same grid, centred on the body of the first scalar image.

    Args:
        recipe: a recipe name ('li2025', 'small', ...), a dict, or a `Recipe`.

    Example:
        >>> import torch, torchio as tio
        >>> ct = tio.ScalarImage(tensor=torch.full((1, 40, 40, 20), -1000.0))
        >>> ResampleToGrid('small')(ct).shape
        (1, 112, 112, 56)
    """

    def __init__(self, recipe: str | dict | Recipe = 'li2025', **kwargs):
        super().__init__(**kwargs)
        self.recipe = get_recipe(recipe)
        self.args_names = ['recipe']

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        from preprocessing.grid import body_centre

        images = list(self.get_images(subject))
        scalars = [im for im in images if isinstance(im, tio.ScalarImage)] or images
        centre = body_centre(scalars[0].as_sitk()) if scalars else None
        nearest = self.recipe.replace(interpolation='nearest', pad_hu=0)
        for image in images:
            recipe = self.recipe if isinstance(image, tio.ScalarImage) else nearest
            out = resample_to_grid(image.as_sitk(), recipe, centre)
            new = (
                type(image).from_sitk(out)
                if hasattr(type(image), 'from_sitk')
                else tio.ScalarImage.from_sitk(out)
            )
            image.set_data(
                new.data.to(image.data.dtype)
                if not isinstance(image, tio.ScalarImage)
                else new.data
            )
            image.affine = new.affine
        return subject
