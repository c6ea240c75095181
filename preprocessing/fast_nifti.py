"""The fast path for the common case: an int16 NIfTI decoded straight into a SimpleITK image.

`sitk.ReadImage` on a .nii.gz holds the volume twice at its peak and decodes with zlib. Here the
geometry comes from ITK's own header reader (so it is identical to `ReadImage`), and the voxels
are decompressed with python-isal (about 2x zlib) directly into the image's buffer. Anything
unusual (other data types, byte order, 4D, scaling that does not fit int16) returns None and the
caller falls back to `ReadImage`.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from preprocessing.errors import PreprocessError
from preprocessing.itk_buffer import writable_array

_logger = logging.getLogger(__name__)

_BLOCK = 1 << 23


def _open(path: Path):
    if not path.name.lower().endswith('.gz'):
        return path.open('rb')
    try:
        from isal import igzip

        return igzip.open(path, 'rb')
    except ImportError:
        return gzip.open(path, 'rb')


def _fill(stream, target: memoryview, path: Path) -> None:
    done = 0
    try:
        while done < len(target):
            n = stream.readinto(target[done : done + _BLOCK])  # bounded: decoders buffer each call
            if not n:
                break
            done += n
    except (EOFError, OSError, zlib.error) as exc:
        raise PreprocessError(
            'read', f'{str(path)!r} is a truncated or corrupt gzip file: {exc}'
        ) from exc
    if done < len(target):
        raise PreprocessError(
            'read', f'{str(path)!r} is truncated: {done} of {len(target)} voxel bytes'
        )


def _scaling(nib_image) -> tuple[float, float]:
    """The file's scl_slope/scl_inter (nibabel moves them from the header to the data proxy)."""
    slope = float(getattr(nib_image.dataobj, 'slope', 1.0))
    inter = float(getattr(nib_image.dataobj, 'inter', 0.0))
    return (1.0 if not np.isfinite(slope) or slope == 0 else slope), (
        inter if np.isfinite(inter) else 0.0
    )


def read_int16_nifti(path: Path, nib_image) -> sitk.Image | None:
    """The image, or None when the file is not a plain little-endian 3D int16 NIfTI."""
    header = nib_image.header
    dtype = header.get_data_dtype()
    shape = tuple(int(s) for s in header.get_data_shape())
    if dtype != np.dtype('<i2') or len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 1):
        return None
    slope, inter = _scaling(nib_image)
    if slope != 1.0 or inter != round(inter):
        return None
    info = sitk.ImageFileReader()
    info.SetFileName(str(path))
    try:
        info.ReadImageInformation()
    except RuntimeError:  # `sitk.ReadImage` in the caller reports it in its own words
        return None
    if info.GetDimension() != 3 and not (info.GetDimension() == 4 and info.GetSize()[3] == 1):
        return None
    image = sitk.Image(shape[:3], sitk.sitkInt16)
    image.SetSpacing(info.GetSpacing()[:3])
    image.SetOrigin(info.GetOrigin()[:3])
    direction = np.asarray(info.GetDirection()).reshape(info.GetDimension(), -1)[:3, :3]
    image.SetDirection(direction.flatten().tolist())
    array = writable_array(image)
    offset = max(int(header.get_data_offset()), int(header.sizeof_hdr) + 4)
    with _open(path) as stream:
        stream.read(offset)
        _fill(stream, memoryview(array).cast('B'), path)
    if inter:
        lo, hi = int(array.min()) + int(inter), int(array.max()) + int(inter)
        if lo < -32768 or hi > 32767:
            return None
        array += np.int16(inter)
    return image
