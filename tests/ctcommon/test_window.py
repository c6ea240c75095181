"""ctcommon.window: one HU window for the model input path, the TorchIO transform and the LUT."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from ctcommon.window import Window

CODES = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)


def model_input_formula(hu: np.ndarray, lo: float, hi: float, a: float, b: float) -> np.ndarray:
    """What `ctclip.data.transforms.Window` computed before the move (the trained models' input)."""
    scale = (b - a) / (hi - lo)
    return (np.clip(hu.astype(np.float32), lo, hi) - lo) * scale + a


@pytest.mark.parametrize(
    'spec', [(-1000, 200, -1, 1), (-160, 240, -1, 1), (-500, 1500, 0, 1), (-1000.5, 200.25, 1, -1)]
)
def test_every_path_gives_the_model_input_bit_for_bit(spec):
    window = Window(*spec)
    expected = model_input_formula(CODES, *spec).view(np.uint32)
    assert window(CODES).dtype == np.float32
    assert np.array_equal(window(CODES).view(np.uint32), expected)
    as_tensor = window(torch.from_numpy(CODES)).numpy()
    assert np.array_equal(as_tensor.view(np.uint32), expected)
    from_lut = window.lut().take(CODES.view(np.uint16))
    assert np.array_equal(from_lut.view(np.uint32), expected)


def test_outputs_are_pinned():
    window = Window(-1000, 200)
    assert window(np.array([-2048, -1000, -400, 200, 3000], np.int16)).tolist() == [
        -1.0,
        -1.0,
        0.0,
        1.0,
        1.0,
    ]
    # sha256 of the li2025 table, taken from the model input path before the windows were merged
    digest = hashlib.sha256(window.lut().tobytes()).hexdigest()
    assert digest == 'ea7b7ea000f155fdff06913bbbb9c47471fe81151e08f2c9ab53a813ca497ae3'


def test_the_transforms_use_it():
    torchio = pytest.importorskip('torchio')
    from preprocessing.transforms import WindowHU
    from preprocessing.window import HUWindow

    spec = (-160.0, 240.0, -1.0, 1.0)
    expected = model_input_formula(CODES, *spec)
    image = torchio.ScalarImage(tensor=torch.from_numpy(CODES).float().view(1, -1, 1, 1))
    windowed = WindowHU(spec[:2], spec[2:])(image).data.flatten().numpy()
    assert np.array_equal(windowed.view(np.uint32), expected.view(np.uint32))
    lut = HUWindow(spec[:2], spec[2:])(CODES)
    assert np.array_equal(lut.view(np.uint32), expected.view(np.uint32))


def test_one_parser_for_every_setting():
    assert Window.parse([-1000, 200]) == Window(-1000, 200, -1, 1)
    assert Window.parse([-160, 240, 0, 1]).spec == [-160.0, 240.0, 0.0, 1.0]
    assert Window.parse({'hu_min': -1000, 'hu_max': 1000, 'out_min': 0, 'out_max': 1})(
        np.array([0], np.int16)
    ).tolist() == [0.5]
    window = Window(-1000, 200)
    assert Window.parse(window.spec) == window and Window.parse(window) is window


def test_bad_windows_fail_naming_the_problem():
    with pytest.raises(ValueError, match='hu_max must be greater than hu_min'):
        Window(200, -1000)
    with pytest.raises(ValueError, match='two different values'):
        Window(-1000, 200, 1, 1)
    with pytest.raises(ValueError, match="Unknown setting 'window.a_min'"):
        Window.parse({'a_min': -1000, 'hu_max': 200})
    with pytest.raises(ValueError, match='must give hu_min and hu_max'):
        Window.parse({'hu_max': 200})
    with pytest.raises(ValueError, match='Window must be'):
        Window.parse('soft tissue')
    with pytest.raises(ValueError, match='Window must be'):
        Window.parse([-1000, 200, 1])
