"""A writable NumPy view of a SimpleITK image's own pixel buffer.

SimpleITK only hands out read-only views, so every NumPy edit of a volume would cost a full copy
(150 MiB for a CT-RATE volume). Writing through the image's buffer lets the reader decode straight
into ITK's memory and lets calibration and padding work in place: one volume in memory, not two.
"""

from __future__ import annotations

import ctypes

import numpy as np
import SimpleITK as sitk


def writable_array(image: sitk.Image) -> np.ndarray:
    """(z, y, x) view of `image`'s pixels that writes through; keep `image` alive while using it."""
    view = sitk.GetArrayViewFromImage(image)  # also makes the buffer unique to this image
    address = view.__array_interface__['data'][0]
    raw = (ctypes.c_char * view.nbytes).from_address(address)
    return np.frombuffer(raw, dtype=view.dtype).reshape(view.shape)
