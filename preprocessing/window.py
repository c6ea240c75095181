"""The recipe's HU window as a 64 Ki-entry lookup table: int16 HU in, float32 model input out.

One gather per voxel instead of cast + clip + scale (measured about 2x faster on a 192x192x96
crop), so the training loader can keep the cache in int16 and window at load time. The table is
`ctcommon.window.Window.lut()`: the same values as the model's input path, bit for bit.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ctcommon.window import Window


class HUWindow:
    """Clip HU to `window_hu` and map it linearly onto `window_out`, by table lookup.

    Example:
        >>> HUWindow((-1000, 200), (-1, 1))(np.array([-2048, -1000, -400, 200, 3000], np.int16)).tolist()
        [-1.0, -1.0, 0.0, 1.0, 1.0]
    """

    def __init__(
        self, window_hu: Sequence[float] = (-1000, 200), window_out: Sequence[float] = (-1, 1)
    ):
        self.window = Window(*window_hu, *window_out)
        self.lut = self.window.lut()
        self.window_hu = (self.window.hu_min, self.window.hu_max)
        self.window_out = (self.window.out_min, self.window.out_max)

    @classmethod
    def from_recipe(cls, recipe) -> HUWindow:
        return cls(recipe.window_hu, recipe.window_out)

    def __call__(self, array: np.ndarray) -> np.ndarray:
        if array.dtype != np.int16:
            raise TypeError(f'HUWindow expects int16 HU, not {array.dtype}')
        return self.lut.take(np.ascontiguousarray(array).view(np.uint16))
