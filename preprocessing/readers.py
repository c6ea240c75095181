"""Readers for NIfTI, DICOM series and RAD-ChestCT `.npz`: each returns a SimpleITK image in LPS world.

Readers only decode files and place the voxel grid in space. HU calibration of CT-RATE files and
plausibility checks happen later (`ctrate.py`, `checks.py`), so each step can fail with its own stage.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from preprocessing.errors import PreprocessError

_logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = ('.nii.gz', '.nii')
RADCHEST_SPACING_MM = 0.8
_TAG_POSITION = '0020|0032'
_TAG_ORIENTATION = '0020|0037'
_TAG_PIXEL_SPACING = '0028|0030'
# The series key (and manifest `series_uid`) of slices whose SeriesInstanceUID is empty or missing;
# real UIDs hold only digits and dots, so it never clashes with one.
EMPTY_SERIES_UID = 'no-series-uid'
# Deflate cannot compress better than about 1032:1, so a .gz file of N bytes decodes to at most
# about 1032 * N bytes: a header declaring more is corrupt or forged, whatever the stream says.
GZIP_MAX_RATIO = 1032
MAX_VOXELS = 1024 * 1024 * 2048
_GZIP_MAGIC = b'\x1f\x8b'
_PIXEL_DATA_TAG = b'\xe0\x7f\x10\x00'


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise PreprocessError('read', f'{str(path)!r} does not exist')
    if path.is_file() and path.stat().st_size == 0:
        raise PreprocessError('read', f'{str(path)!r} is an empty file')


def _squeeze_to_3d(image: sitk.Image, path: Path) -> sitk.Image:
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        return image[:, :, :, 0]
    if dim != 3:
        size = 'x'.join(map(str, image.GetSize()))
        raise PreprocessError(
            'read', f'{str(path)!r} is a {dim}D image ({size}); a CT volume must be 3D'
        )
    return image


def read_nifti(path: str | Path, max_voxels: int = MAX_VOXELS) -> sitk.Image:
    """A NIfTI file as stored (scl_slope/scl_inter applied, geometry from the header).

    The header's declared size is checked against the file before anything is allocated, so a
    small file with a forged header costs no memory.
    """
    path = Path(path)
    _check_file(path)
    gzipped = path.name.lower().endswith('.gz')
    if not gzipped and _starts_with(path, _GZIP_MAGIC):
        raise PreprocessError(
            'read', f'{str(path)!r} is named .nii but holds gzip data: rename it to .nii.gz'
        )
    nib_image = _nifti_image(path)
    _check_declared_size(path, nib_image, max_voxels)
    if gzipped:
        _check_gzip(path, nib_image)
    else:
        expected = _expected_nifti_bytes(nib_image)
        if expected is not None and path.stat().st_size < expected:
            raise PreprocessError(
                'read',
                f'{str(path)!r} is truncated: {path.stat().st_size} bytes, header needs {expected}',
            )
    _check_affine(path, nib_image)
    _check_spacing(path)
    _check_finite(nib_image, path)
    if nib_image is not None:
        from preprocessing.fast_nifti import read_int16_nifti

        image = read_int16_nifti(path, nib_image)
        if image is not None:
            return image
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        if 'orthonormal' in str(exc):
            raise PreprocessError('read', _SHEARED.format(path=str(path), detail='')) from exc
        raise PreprocessError(
            'read', f'{str(path)!r} is not a readable NIfTI image: {_first_line(exc)}'
        ) from exc
    return _squeeze_to_3d(image, path)


_SHEARED = (
    '{path!r} has a sheared or non-orthogonal affine{detail}; a CT grid must have orthogonal axes '
    '(resample it onto one first)'
)


def _starts_with(path: Path, magic: bytes) -> bool:
    with path.open('rb') as f:
        return f.read(len(magic)) == magic


def _check_declared_size(path: Path, nib_image, max_voxels: int) -> None:
    """Refuse a header whose dimensions the file cannot hold, before allocating them."""
    if nib_image is None:
        return
    shape = tuple(int(s) for s in nib_image.header.get_data_shape())
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > max_voxels:
        raise PreprocessError(
            'check',
            f'{str(path)!r} declares {voxels} voxels {shape}, above checks.max_voxels={max_voxels}',
        )
    if path.name.lower().endswith('.gz'):
        expected = _expected_nifti_bytes(nib_image) or 0
        size = path.stat().st_size
        if expected > GZIP_MAX_RATIO * size + 4096:
            raise PreprocessError(
                'read',
                f'{str(path)!r} declares {shape} voxels ({expected} bytes) but a gzip file of '
                f'{size} bytes holds at most {GZIP_MAX_RATIO * size} bytes: a corrupt header',
            )


def _check_affine(path: Path, nib_image) -> None:
    """ITK refuses sheared affines with a multi-line error; say what is wrong in one line."""
    if nib_image is None:
        return
    header = nib_image.header
    if int(header['sform_code']) > 0:
        matrix = np.asarray(header.get_sform())[:3, :3]
    elif int(header['qform_code']) > 0:
        return  # a quaternion is orthogonal by construction
    else:
        return
    norms = np.linalg.norm(matrix, axis=0)
    if not np.all(norms > 0):
        return  # zero spacing: `_check_spacing` words it
    unit = matrix / norms
    gram = unit.T @ unit
    if not np.allclose(gram, np.eye(3), atol=1e-4):
        off = float(np.max(np.abs(gram - np.eye(3))))
        if int(header['qform_code']) > 0:
            _logger.warning('%s: sheared sform ignored, using the qform', path)
            return
        raise PreprocessError(
            'read', _SHEARED.format(path=str(path), detail=f' (axis cosines off by {off:.3f})')
        )


def _nifti_image(path: Path):  # -> nibabel image | None
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception:  # an unparsable header is reported by the ITK reader with its own message
        return None


def _raw_pixdim(path: Path) -> list[float] | None:
    """pixdim[1:4] as stored (nibabel and ITK both replace zeros by 1 when they load)."""
    try:
        with _gzip_open(path) if path.name.lower().endswith('.gz') else path.open('rb') as f:
            head = f.read(540)
    except (OSError, EOFError, zlib.error):
        return None
    for order in ('<', '>'):
        size = int(np.frombuffer(head[:4], f'{order}i4')[0]) if len(head) >= 4 else 0
        if size == 348 and len(head) >= 108:
            return np.frombuffer(head[76:108], f'{order}f4')[1:4].astype(float).tolist()
        if size == 540 and len(head) >= 168:
            return np.frombuffer(head[104:168], f'{order}f8')[1:4].astype(float).tolist()
    return None


def _expected_nifti_bytes(image) -> int | None:
    """Header offset plus voxel bytes: the size of a whole NIfTI file."""
    if image is None:
        return None
    header = image.header
    voxels = int(np.prod(header.get_data_shape(), dtype=np.int64))
    minimum = (
        int(header.sizeof_hdr) + 4
    )  # header + 4-byte extension flag; ITK may store vox_offset 0
    offset = max(int(header.get_data_offset()), minimum)
    return offset + voxels * header.get_data_dtype().itemsize


def _check_spacing(path: Path) -> None:
    """ITK silently turns a zero or missing pixdim into 1 mm; refuse that instead."""
    zooms = _raw_pixdim(path)
    if zooms is not None and not all(np.isfinite(z) and z > 0 for z in zooms):
        raise PreprocessError('check', f'{str(path)!r} has missing spacing (pixdim {zooms})')


def _check_finite(image, path: Path) -> None:
    """ITK's NIfTI reader turns NaN into 0, so float files are checked on nibabel's data."""
    if image is None or image.header.get_data_dtype().kind != 'f':
        return
    data = np.asanyarray(image.dataobj)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise PreprocessError('check', f'{str(path)!r} has {bad} NaN or infinite voxels')


def _check_gzip(path: Path, nib_image) -> None:
    """ITK reads a truncated .gz silently (the missing end becomes zeros), so check it here.

    The gzip trailer holds the uncompressed size (mod 2**32); if it disagrees with the size the
    NIfTI header implies, the stream is decoded once to find out whether it is really whole.
    """
    with path.open('rb') as f:
        if f.read(2) != b'\x1f\x8b':
            raise PreprocessError('read', f'{str(path)!r} ends in .gz but is not gzip data')
        f.seek(-4, 2)
        trailer_size = int.from_bytes(f.read(4), 'little')
    expected = _expected_nifti_bytes(nib_image)
    if expected is not None and trailer_size != expected % 2**32:
        length = verify_gzip_stream(path, stop_after=expected)
        if length < expected:
            raise PreprocessError(
                'read',
                f'{str(path)!r} is truncated: its gzip stream holds {length} bytes, '
                f'the header needs {expected}',
            )


def verify_gzip_stream(path: str | Path, stop_after: int | None = None) -> int:
    """Decode a .gz in bounded blocks to prove it is complete; returns the decoded length.

    With `stop_after`, decoding stops once that many bytes have come out (the rest cannot make
    the stream too short), so memory and time stay bounded whatever the header declares.
    """
    length = 0
    try:
        with _gzip_open(path) as f:
            while block := f.read(1 << 22):
                length += len(block)
                if stop_after is not None and length >= stop_after:
                    break
    except (EOFError, OSError, zlib.error) as exc:
        raise PreprocessError(
            'read', f'{str(path)!r} is a truncated or corrupt gzip file: {exc}'
        ) from exc
    return length


def _gzip_open(path: str | Path):
    try:
        from isal import igzip  # 2-3x faster than zlib; optional (`pip install ctclip[fast]`)

        return igzip.open(path, 'rb')
    except ImportError:
        return gzip.open(path, 'rb')


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if 'Description' in ln or 'ERROR' in ln.upper()]
    return (useful or lines or [type(exc).__name__])[-1][:300]


def _float_list(text: str) -> list[float]:
    return [float(v) for v in text.replace('\\', ' ').replace(',', ' ').split()]


def _slice_geometry(files: list[str]) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Per-file position and the shared orientation, read from the headers only."""
    reader = sitk.ImageFileReader()
    positions, orientations, sizes = [], [], set()
    for name in files:
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise PreprocessError(
                'read', f'{name!r} is not a readable DICOM file: {_first_line(exc)}'
            ) from exc
        keys = set(reader.GetMetaDataKeys())
        if _TAG_POSITION not in keys:
            raise PreprocessError('read', f'{name!r} has no ImagePositionPatient (0020,0032)')
        positions.append(_float_list(reader.GetMetaData(_TAG_POSITION)))
        iop = (
            reader.GetMetaData(_TAG_ORIENTATION) if _TAG_ORIENTATION in keys else '1\\0\\0\\0\\1\\0'
        )
        orientations.append(tuple(round(v, 4) for v in _float_list(iop)))
        sizes.add(tuple(reader.GetSize()[:2]))
        if _TAG_PIXEL_SPACING not in keys:  # GDCM would silently use 1 mm
            raise PreprocessError(
                'check', f'{name!r} has missing spacing (no PixelSpacing (0028,0030))'
            )
    if len(set(orientations)) > 1:
        raise PreprocessError(
            'check',
            f'inconsistent DICOM series: {len(set(orientations))} different slice orientations',
        )
    if len(sizes) > 1:
        raise PreprocessError(
            'check', f'inconsistent DICOM series: slices of different sizes {sorted(sizes)}'
        )
    return np.asarray(positions, float), np.asarray(orientations[0], float), sizes.pop()


def sort_slices(files: list[str], gap_tolerance: float = 0.25) -> tuple[list[str], float]:
    """Sort by position along the slice normal; return the files and the z-step measured from them.

    SliceThickness is not the spacing (it can be larger or smaller), so only positions count.
    Duplicate positions and gaps (a step more than `gap_tolerance` off the median) are errors.
    """
    positions, iop, _ = _slice_geometry(files)
    normal = np.cross(iop[:3], iop[3:])
    along = positions @ normal
    order = np.argsort(along, kind='stable')
    along = along[order]
    steps = np.diff(along)
    if len(steps) == 0:
        return [files[i] for i in order], 0.0
    if np.any(steps < 1e-3):
        dup = int(np.argmin(steps))
        raise PreprocessError(
            'check',
            f'inconsistent DICOM series: duplicate slice position {along[dup]:.3f} mm '
            f'({files[order[dup]]!r} and {files[order[dup + 1]]!r})',
        )
    step = float(np.median(steps))
    bad = np.abs(steps - step) > gap_tolerance * step
    if np.any(bad):
        i = int(np.argmax(bad))
        raise PreprocessError(
            'check',
            f'inconsistent DICOM series: slice step {steps[i]:.3f} mm between positions '
            f'{along[i]:.3f} and {along[i + 1]:.3f} differs from the median step {step:.3f} mm (a gap)',
        )
    return [files[i] for i in order], step


def dicom_series(folder: str | Path) -> dict[str, list[str]]:
    """Series instance UID -> file names, for one folder (not recursive).

    Slices with an empty or missing SeriesInstanceUID form one series of their own, keyed
    `EMPTY_SERIES_UID`.
    """
    folder = str(folder)
    out = {}
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder):
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
        out[uid.strip() or EMPTY_SERIES_UID] = files
    return out


def unplaced_dicom_files(folder: str | Path, series: dict[str, list[str]]) -> list[Path]:
    """Files with a DICOM preamble that GDCM left out of every series: broken slices.

    GDCM silently skips a slice it cannot parse (a truncated first or last slice just vanishes),
    so a series is only trusted when every DICOM file of its folder was placed in some series.
    """
    placed = {os.path.realpath(f) for files in series.values() for f in files}
    out = []
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file() or path.name.startswith('.'):
            continue
        if os.path.realpath(path) in placed:
            continue
        with path.open('rb') as f:
            head = f.read(132)
        if head[128:132] == b'DICM':
            out.append(path)
    return out


def _encapsulated_reason(path: Path, data: bytes, at: int) -> str:
    """Walk the items of compressed (encapsulated) pixel data to the one the file cuts short."""
    size = len(data)
    while at + 8 <= size:
        tag, length = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], 'little')
        if tag == b'\xfe\xff\xdd\xe0':  # sequence delimiter: the pixel data is whole
            break
        if tag != b'\xfe\xff\x00\xe0':
            return f'{str(path)!r}: corrupt DICOM slice (bad item in the compressed pixel data)'
        if at + 8 + length > size:
            return (
                f'{str(path)!r}: truncated DICOM slice (compressed pixel data fragment '
                f'{size - at - 8} bytes, expected {length})'
            )
        at += 8 + length
    else:
        return (
            f'{str(path)!r}: truncated DICOM slice (compressed pixel data ends without delimiter)'
        )
    return f'{str(path)!r}: unreadable DICOM slice ({size} bytes; a corrupt header)'


def broken_dicom_reason(path: Path) -> str:
    """What is wrong with a DICOM file that GDCM could not read, in one line."""
    with path.open('rb') as f:
        data = f.read(1 << 26)
    size = len(data)
    at = data.find(_PIXEL_DATA_TAG, 132)
    if at >= 0 and at + 12 <= size:
        if data[at + 4 : at + 6] in (b'OW', b'OB'):  # explicit VR: 2 reserved bytes, 4-byte length
            length, start = int.from_bytes(data[at + 8 : at + 12], 'little'), at + 12
        else:
            length, start = int.from_bytes(data[at + 4 : at + 8], 'little'), at + 8
        if length == 0xFFFFFFFF:
            return _encapsulated_reason(path, data, start)
        if size - start < length:
            return (
                f'{str(path)!r}: truncated DICOM slice (pixel data {size - start} bytes, '
                f'expected {length})'
            )
    return f'{str(path)!r}: unreadable DICOM slice ({size} bytes; a truncated or corrupt header)'


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> sitk.Image:
    """One DICOM series as a volume, sorted by position and spaced by the measured z-step."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PreprocessError('read', f'DICOM input {str(folder)!r} is not a folder')
    series = dicom_series(folder)
    broken = unplaced_dicom_files(folder, series)
    if broken:  # which series it belonged to is unknowable: never cache one with a slice missing
        more = f' (and {len(broken) - 1} more broken files)' if len(broken) > 1 else ''
        raise PreprocessError('read', broken_dicom_reason(broken[0]) + more)
    if not series:
        raise PreprocessError('read', f'{str(folder)!r} holds no DICOM series')
    if series_uid is None:
        if len(series) > 1:
            raise PreprocessError(
                'read',
                f'{str(folder)!r} holds {len(series)} DICOM series; name one: {sorted(series)}',
            )
        series_uid = next(iter(series))
    if series_uid not in series:
        raise PreprocessError(
            'read', f'series {series_uid!r} is not in {str(folder)!r}; found {sorted(series)}'
        )
    files, step = sort_slices(series[series_uid])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise PreprocessError(
            'read', f'cannot decode DICOM series in {str(folder)!r}: {_first_line(exc)}'
        ) from exc
    if step > 0:
        spacing = image.GetSpacing()
        image.SetSpacing((spacing[0], spacing[1], step))
    return _squeeze_to_3d(image, folder)


def radchest_spacing(
    path: str | Path, default: float = RADCHEST_SPACING_MM
) -> tuple[float, float, float]:
    """Isotropic 0.8 mm unless a `spacing.json` beside the file (or one level up) says otherwise."""
    path = Path(path)
    for folder in (path.parent, path.parent.parent):
        meta = folder / 'spacing.json'
        if meta.is_file():
            data = json.loads(meta.read_text(encoding='utf-8'))
            value = (
                data.get('spacing_zyx', data.get('spacing', data))
                if isinstance(data, dict)
                else data
            )
            if isinstance(value, (int, float)):
                return (float(value),) * 3  # type: ignore[return-value]
            values = [float(v) for v in value]
            if len(values) != 3:
                raise PreprocessError(
                    'read', f'{str(meta)!r} must give 1 or 3 spacings, not {value!r}'
                )
            return tuple(values)  # type: ignore[return-value]
    return (float(default),) * 3  # type: ignore[return-value]


def read_npz(path: str | Path, spacing_zyx: tuple[float, float, float] | None = None) -> sitk.Image:
    """A RAD-ChestCT `.npz`: key `ct`, HU, (z, y, x) already in LPS index order."""
    path = Path(path)
    _check_file(path)
    try:
        with np.load(path) as data:
            if 'ct' not in data.files:
                raise PreprocessError('read', f'{str(path)!r} has no key "ct" (keys: {data.files})')
            array = data['ct']
    except PreprocessError:
        raise
    except Exception as exc:  # zipfile/pickle/ValueError: anything that is not a readable npz
        raise PreprocessError('read', f'{str(path)!r} is not a readable .npz file: {exc}') from exc
    if array.ndim != 3:
        raise PreprocessError(
            'read',
            f'{str(path)!r} holds a {array.ndim}D array {array.shape}; expected 3D (z, y, x)',
        )
    if not (array.dtype.kind in 'iu' or array.dtype in (np.float32, np.float64)):
        raise PreprocessError(
            'read',
            f"{str(path)!r}: npz array 'ct' must be an integer or float32/64 HU array, "
            f'not {array.dtype}',
        )
    image = sitk.GetImageFromArray(array)
    spacing = spacing_zyx or radchest_spacing(path)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    return image


def read_volume(path: str | Path, fmt: str | None = None, **options: object) -> sitk.Image:
    """Dispatch on `fmt` ('nifti', 'dicom', 'npz') or on the path."""
    path = Path(path)
    fmt = fmt or guess_format(path)
    if fmt == 'nifti':
        return read_nifti(path)
    if fmt == 'dicom':
        if path.is_file():
            return _read_single_dicom(path)
        return read_dicom_series(path, options.get('series_uid') or None)  # type: ignore[arg-type]
    if fmt == 'npz':
        return read_npz(path, options.get('spacing_zyx'))  # type: ignore[arg-type]
    raise PreprocessError(
        'read', f'unknown input format {fmt!r} for {str(path)!r}; use nifti, dicom or npz'
    )


def _read_single_dicom(path: Path) -> sitk.Image:
    _check_file(path)
    try:
        return _squeeze_to_3d(sitk.ReadImage(str(path)), path)
    except RuntimeError as exc:
        raise PreprocessError(
            'read', f'{str(path)!r} is not a readable DICOM file: {_first_line(exc)}'
        ) from exc


def guess_format(path: Path) -> str:
    name = path.name.lower()
    if is_nifti(name):
        return 'nifti'
    if name.endswith('.npz'):
        return 'npz'
    if path.is_dir() or name.endswith('.dcm'):
        return 'dicom'
    raise PreprocessError(
        'read',
        f'cannot tell the format of {str(path)!r}: expected .nii(.gz), .npz, .dcm or a folder',
    )
