"""Load-time intensity window and crops for cached int16 HU volumes.

The cache keeps raw HU so the window stays a training-time choice; these helpers turn one cached
volume into the float tensor the model sees, reading only the crop from HDF5.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ctcommon.settings import check_keys
from ctcommon.window import Window as Window  # re-exported: the one HU window

_logger = logging.getLogger(__name__)


class WindowStack:
    """Several windows of the same crop, stacked as input channels [C, D, H, W].

    One window cannot show lung and mediastinum at once: [-1000, 200] HU leaves fluid, fat, lymph
    nodes and calcium a few percent of its range, so a second, soft-tissue window gives the encoder
    that contrast back as a channel (the model's `in_chans` must match).
    """

    def __init__(self, windows: Sequence[Window]):
        if len(windows) < 2:
            raise ValueError(f'WindowStack needs at least two windows, not {len(windows)}')
        self.windows = list(windows)

    @property
    def channels(self) -> int:
        return len(self.windows)

    @property
    def spec(self) -> list[list[float]]:
        return [w.spec for w in self.windows]

    @property
    def pad_value_hu(self) -> float:
        """Air: the lowest window start, which every window maps to its lower end."""
        return min(w.hu_min for w in self.windows)

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        return np.stack([w(hu) for w in self.windows])

    def __repr__(self) -> str:
        return f'WindowStack({self.windows})'


AnyWindow = Window | WindowStack


def parse_window(spec: Any) -> AnyWindow:
    """One window (`[lo, hi]`, `[lo, hi, out_lo, out_hi]`, a mapping) or a list of them as channels."""
    if isinstance(spec, (Window, WindowStack)):
        return spec
    if isinstance(spec, Sequence) and not isinstance(spec, str) and spec:
        if all(isinstance(w, (Sequence, Mapping)) and not isinstance(w, str) for w in spec):
            windows = [Window.parse(w) for w in spec]
            return windows[0] if len(windows) == 1 else WindowStack(windows)
    return Window.parse(spec)


def as_channels(array: np.ndarray) -> np.ndarray:
    """[D, H, W] from one window or [C, D, H, W] from a stack, always as [C, D, H, W]."""
    return array[None] if array.ndim == 3 else array


def recipe_window(recipe: Mapping | None) -> Window | None:
    """The window a cache recipe asks for, or None when the recipe does not say."""
    if not recipe:
        return None
    if recipe.get('window_hu') is not None:
        return Window(*recipe['window_hu'], *(recipe.get('window_out') or (-1.0, 1.0)))
    return Window.parse(recipe['window']) if recipe.get('window') is not None else None


def recipe_crop(recipe: Mapping | None) -> tuple[int, int, int] | None:
    """The (z, y, x) training crop a cache recipe asks for, or None."""
    if not recipe:
        return None
    for key in ('crop_zyx', 'train_crop_zyx'):
        if recipe.get(key) is not None:
            return parse_size(recipe[key], key)
    for key in ('crop', 'train_crop'):
        value = recipe.get(key)
        if isinstance(value, Mapping):
            value = value.get('size_zyx') or value.get('train_zyx') or value.get('zyx')
        if value is not None:
            return parse_size(value, key)
    if recipe.get('shape_zyx') is not None:
        return parse_size(recipe['shape_zyx'], 'shape_zyx')
    return None


def parse_size(value: Any, name: str = 'crop_zyx') -> tuple[int, int, int]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 3:
        raise ValueError(f'{name} must be three integers (z, y, x), not {value!r}')
    size = tuple(int(v) for v in value)
    if min(size) <= 0:
        raise ValueError(f'{name} must be positive, not {value!r}')
    return size  # type: ignore[return-value]


def crop_start(
    shape: Sequence[int], size: Sequence[int], rng: np.random.Generator | None
) -> tuple[int, ...]:
    """A random (rng given) or centre crop start per axis; 0 where the volume is smaller."""
    starts = []
    for dim, want in zip(shape, size, strict=False):
        room = max(int(dim) - int(want), 0)
        starts.append(int(rng.integers(0, room + 1)) if rng is not None else room // 2)
    return tuple(starts)


def pad_to(array: np.ndarray, size: Sequence[int], value: float) -> np.ndarray:
    """Centre-pad an array up to `size` (axes already at least that size are left alone)."""
    if all(a >= s for a, s in zip(array.shape, size, strict=False)):
        return array
    pads = []
    for dim, want in zip(array.shape, size, strict=False):
        extra = max(int(want) - dim, 0)
        pads.append((extra // 2, extra - extra // 2))
    return np.pad(array, pads, mode='constant', constant_values=value)


def pad_hu(window: AnyWindow) -> int:
    """Air as an int16 HU value at or below every window's start, so it windows to the lower end."""
    return int(np.clip(np.floor(window.pad_value_hu), -32768, 32767))


def read_hu_crop(
    cache: Any,
    volume_id: str,
    shape: Sequence[int],
    size: Sequence[int],
    window: AnyWindow,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Read only the crop from the cache and pad small volumes with air: int16 HU [D, H, W]."""
    start = crop_start(shape, size, rng)
    read_size = tuple(min(int(d), int(s)) for d, s in zip(shape, size, strict=False))
    hu = np.asarray(cache.read_crop(volume_id, start, read_size))
    return pad_to(hu, size, pad_hu(window))


def model_input(hu: np.ndarray, window: AnyWindow) -> np.ndarray:
    """What the model takes for one crop: int16 HU stays int16 [1, D, H, W] and the model windows
    it on its own device (`CTClip.prepare_image`, half the bytes of float32 through the loader and
    the host-to-device copy); HU of any other dtype is windowed here to float32 [C, D, H, W]."""
    if hu.dtype == np.int16:
        return hu[None]
    return as_channels(window(hu))


def centre_model_input(hu: np.ndarray, size: Sequence[int], window: AnyWindow) -> np.ndarray:
    """The evaluation input of an HU volume in memory: its centre crop, padded with air, as
    `model_input` gives it (the cache's twin is `read_hu_crop` with no rng)."""
    start = crop_start(hu.shape, size, None)
    crop = np.asarray(hu[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))])
    return model_input(pad_to(crop, size, pad_hu(window)), window)


def window_batch(window: AnyWindow, hu: Any) -> Any:
    """Window an HU batch [B, 1, D, H, W] (torch) into the model's input [B, C, D, H, W] float32:
    one channel per window of a stack. The same float32 math as `Window.__call__` on the host."""
    import torch

    if hu.ndim != 5 or hu.shape[1] != 1:
        raise ValueError(f'an HU image must be [B, 1, D, H, W], not shape {list(hu.shape)}')
    windows = window.windows if isinstance(window, WindowStack) else [window]
    if len(windows) == 1:
        return windows[0](hu)
    return torch.cat([w(hu) for w in windows], dim=1)


def build_augment(spec: Mapping | None) -> Any:
    """Optional TorchIO augmentations from config, e.g. `{affine: {scales: 0.1, degrees: 10}, noise: {std: 0.02}}`.

    Applied to the windowed [1, D, H, W] tensor; the sample's own seed drives them.
    """
    if not spec:
        return None
    import torchio as tio

    known = {
        'flip': tio.RandomFlip,
        'affine': tio.RandomAffine,
        'noise': tio.RandomNoise,
        'gamma': tio.RandomGamma,
        'blur': tio.RandomBlur,
        'anisotropy': tio.RandomAnisotropy,
    }
    check_keys(spec, known, 'data.augment')
    transforms = []
    for name, kwargs in spec.items():
        if kwargs is False or kwargs is None:
            continue
        transforms.append(known[name](**(kwargs if isinstance(kwargs, Mapping) else {})))
    return tio.Compose(transforms) if transforms else None
