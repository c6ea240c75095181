"""The recipe's HU window as a 64 Ki-entry lookup table: int16 HU in, float32 model input out.

One gather per voxel instead of cast + clip + scale (measured about 2x faster on a 192x192x96
crop), so the training loader can keep the cache in int16 and window at load time.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class HUWindow:
    """Clip HU to `window_hu` and map it linearly onto `window_out`.

    Example:
        >>> HUWindow((-1000, 200), (-1, 1))(np.array([-2048, -1000, -400, 200, 3000], np.int16)).tolist()
        [-1.0, -1.0, 0.0, 1.0, 1.0]
    """

    def __init__(
        self, window_hu: Sequence[float] = (-1000, 200), window_out: Sequence[float] = (-1, 1)
    ):
        lo, hi = (float(v) for v in window_hu)
        a, b = (float(v) for v in window_out)
        if not lo < hi:
            raise ValueError(
                f'window_hu must be (low, high) with low < high, not {tuple(window_hu)}'
            )
        codes = np.arange(65536, dtype=np.int64)
        hu = np.where(codes < 32768, codes, codes - 65536).astype(np.float64)
        self.lut = ((np.clip(hu, lo, hi) - lo) / (hi - lo) * (b - a) + a).astype(np.float32)
        self.window_hu, self.window_out = (lo, hi), (a, b)

    @classmethod
    def from_recipe(cls, recipe) -> HUWindow:
        return cls(recipe.window_hu, recipe.window_out)

    def __call__(self, array: np.ndarray) -> np.ndarray:
        if array.dtype != np.int16:
            raise TypeError(f'HUWindow expects int16 HU, not {array.dtype}')
        return self.lut.take(np.ascontiguousarray(array).view(np.uint16))
