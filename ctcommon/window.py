"""The HU window, once: clip HU to [hu_min, hu_max] and map it linearly onto [out_min, out_max].

Training, inference, the TorchIO transform and the int16 lookup table all compute this one
float32 expression, so a model sees bit for bit the same input whichever path prepared it:

    (clip(float32(hu), hu_min, hu_max) - hu_min) * scale + out_min,
    scale = (out_max - out_min) / (hu_max - hu_min)

It works on NumPy arrays and on torch tensors alike (both have `.clip`), without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ctcommon.settings import check_keys

KEYS = ('hu_min', 'hu_max', 'out_min', 'out_max')


class Window:
    """One HU window: a value that maps HU onto the model's input range (float32).

    Example:
        >>> Window(-1000, 200)(np.array([-2048, -1000, -400, 200, 3000], np.int16)).tolist()
        [-1.0, -1.0, 0.0, 1.0, 1.0]
    """

    channels = 1

    def __init__(self, hu_min: float, hu_max: float, out_min: float = -1.0, out_max: float = 1.0):
        if not hu_max > hu_min:
            raise ValueError(f'Window hu_max must be greater than hu_min, not [{hu_min}, {hu_max}]')
        if out_max == out_min:
            raise ValueError(
                f'Window out_min and out_max must be two different values, not {out_min}'
            )
        self.hu_min, self.hu_max = float(hu_min), float(hu_max)
        self.out_min, self.out_max = float(out_min), float(out_max)

    def __call__(self, hu: Any) -> Any:
        """A float32 array (NumPy in, NumPy out; a torch tensor in, a tensor out)."""
        values = hu.float() if callable(getattr(hu, 'float', None)) else np.asarray(hu, np.float32)
        scale = (self.out_max - self.out_min) / (self.hu_max - self.hu_min)
        return (values.clip(self.hu_min, self.hu_max) - self.hu_min) * scale + self.out_min

    def lut(self) -> np.ndarray:
        """The window of every int16 value, indexed by the value's uint16 bits (65,536 entries).

        One gather per voxel instead of cast, clip and scale; equal to `__call__` bit for bit.
        """
        codes = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
        return np.roll(self(codes), -32768)

    @property
    def pad_value_hu(self) -> float:
        """Padding in HU maps to the window's lower end (air), like the recipes' pad value."""
        return self.hu_min

    @property
    def spec(self) -> list[float]:
        """`[hu_min, hu_max, out_min, out_max]`, what `Window.parse` reads back (model configs)."""
        return [self.hu_min, self.hu_max, self.out_min, self.out_max]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Window) and self.spec == other.spec

    def __hash__(self) -> int:
        return hash(tuple(self.spec))

    def __repr__(self) -> str:
        return f'Window([{self.hu_min}, {self.hu_max}] -> [{self.out_min}, {self.out_max}])'

    @classmethod
    def parse(cls, spec: Any) -> Window:
        """From `[lo, hi]`, `[lo, hi, out_lo, out_hi]` or a mapping with the keys of `KEYS`.

        The one parser of a window setting: model configs, training configs and recipes.
        """
        if isinstance(spec, Window):
            return spec
        if isinstance(spec, Mapping):
            check_keys(spec, KEYS, 'window')
            if spec.get('hu_min') is None or spec.get('hu_max') is None:
                raise ValueError(f'Window must give hu_min and hu_max, not {dict(spec)!r}')
            return cls(**spec)
        if isinstance(spec, Sequence) and not isinstance(spec, str) and len(spec) in (2, 4):
            return cls(*[float(v) for v in spec])
        raise ValueError(
            f'Window must be [hu_min, hu_max], [hu_min, hu_max, out_min, out_max] or a mapping, '
            f'not {spec!r}'
        )
