"""TorchIO transform: stored values to HU, and scanner padding to air."""

from __future__ import annotations

import torch
import torchio as tio

from preprocessing.checks import PADDING_BELOW_HU
from preprocessing.recipes import AIR_HU


class CalibrateHU(tio.IntensityTransform):
    """Apply a rescale line (`HU = slope * stored + intercept`), then set padding to air.

    Use slope 1, intercept 0 (the defaults) for files already in HU, such as CT-RATE v2: applying
    CT-RATE's -1024 intercept to them a second time is the double-rescale bug.

    Args:
        slope: DICOM RescaleSlope.
        intercept: DICOM RescaleIntercept.
        air_hu: value given to voxels below -1024 HU (scanner padding such as -2048 or -8192).

    Example:
        >>> import torch, torchio as tio
        >>> ct = tio.ScalarImage(tensor=torch.full((1, 4, 4, 4), 24.0))
        >>> CalibrateHU(intercept=-1024)(ct).data.unique().tolist()
        [-1000.0]
    """

    def __init__(
        self, slope: float = 1.0, intercept: float = 0.0, air_hu: float = AIR_HU, **kwargs
    ):
        super().__init__(**kwargs)
        if slope == 0:
            message = f'Slope must be non-zero, not {slope}'
            raise ValueError(message)
        self.slope, self.intercept, self.air_hu = float(slope), float(intercept), float(air_hu)
        self.args_names = ['slope', 'intercept', 'air_hu']

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        for image in self.get_images(subject):
            image.set_data(self.calibrate(image.data))
        return subject

    def calibrate(self, tensor: torch.Tensor) -> torch.Tensor:
        hu = tensor.float() * self.slope + self.intercept
        return torch.where(hu < PADDING_BELOW_HU, torch.full_like(hu, self.air_hu), hu)
