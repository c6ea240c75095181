"""TorchIO transform: the recipe's HU window (`ctcommon.window`), mapped to the model's input range."""

from __future__ import annotations

from typing import Sequence

import torch
import torchio as tio

from ctcommon.window import Window


class WindowHU(tio.IntensityTransform):
    """Clip HU to `window` and map it linearly onto `out_range` (li2025: [-1000, 200] -> [-1, 1]).

    Air (-1000 HU, also used for padding) maps to `out_range[0]`, never to the middle of the range.

    Args:
        window: (low, high) HU.
        out_range: (low, high) output values.

    Example:
        >>> import torch, torchio as tio
        >>> ct = tio.ScalarImage(tensor=torch.tensor([-2000.0, -1000, -400, 200, 900]).view(1, 5, 1, 1))
        >>> WindowHU((-1000, 200), (-1, 1))(ct).data.flatten().tolist()
        [-1.0, -1.0, 0.0, 1.0, 1.0]
    """

    def __init__(
        self, window: Sequence[float] = (-1000, 200), out_range: Sequence[float] = (-1, 1), **kwargs
    ):
        super().__init__(**kwargs)
        if len(window) != 2 or not window[0] < window[1]:
            message = f'Window must be (low, high) with low < high, not {window}'
            raise ValueError(message)
        if len(out_range) != 2 or out_range[0] == out_range[1]:
            message = f'Output range must be two different values, not {out_range}'
            raise ValueError(message)
        self.window = tuple(float(v) for v in window)
        self.out_range = tuple(float(v) for v in out_range)
        self.args_names = ['window', 'out_range']
        self._window = Window(*self.window, *self.out_range)

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        for image in self.get_images(subject):
            image.set_data(self.apply_window(image.data))
        return subject

    def apply_window(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._window(tensor)
