"""The HDF5 volume cache: the one file format between preprocessing and training.

Layout of a cache file (see docs/architecture.md, section 2):

    /                 attrs: format_version, kind ('single' | 'merged'), recipe (JSON), recipe_hash
    /ids              utf-8 strings, the volume ids in manifest order
    /volumes/<id>     int16 HU, (D, H, W) = (z, y, x), chunked (the recipe's `chunk_shape`, slabs
                      of whole slices) and blosc-lz4 compressed (or raw: `cache_codec='none'`),
                      per-volume attrs, among them `checksum` (blake2b of the int16 C-order bytes,
                      format_version >= 2)

Readers accept any chunking and any codec h5py can read (older caches used 16-slice slabs):
`read_crop` reads the chunks of the two layouts this code writes directly and decodes them itself
(`_DirectLayout`), and hands anything else to h5py.

A merged cache (`merge_caches`) holds no voxels: `/shards` lists the shard files (relative to the
merged file), `/shard_of` gives each id's shard, and `/volumes/<id>` are HDF5 external links, so plain
h5py users see every volume too. Handles are opened lazily and per process, so a cache object can be
handed to forked or spawned DataLoader workers.

Writers never let HDF5 see a failed write: HDF5 cannot recover from one (h5py swallows it in
`__dealloc__` and the process may segfault on close), so the file goes through `_NoFailFile`, which
records the first OS error and lets HDF5 finish. The writer then raises that error, and every file
is re-read and checksummed before it is renamed into place.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import hdf5plugin
import numpy as np

from ctcommon.atomic import commit as atomic_commit
from ctcommon.atomic import temp_path_for
from preprocessing.errors import CacheCorruptError
from preprocessing.recipes import Recipe

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
CHECKSUM_SINCE = 2  # the first format_version whose volumes carry a `checksum` attribute
VOLUMES = 'volumes'
_STR = h5py.string_dtype('utf-8')


BLOSC_FILTER = 32001


def compression_options(codec: str = 'blosc-lz4') -> dict[str, Any]:
    """Blosc-LZ4 with byte shuffle: of the codecs measured for int16 CT (blosc zstd, bitshuffle,
    blosc2, LZ4 alone; benchmarks/perf/cache_layout.md) the fastest crops at 2.2x smaller than raw.
    `codec='none'` stores raw chunks."""
    if codec == 'none':
        return {}
    if codec != 'blosc-lz4':
        raise ValueError(f"Cache codec must be 'blosc-lz4' or 'none', not {codec!r}")
    return dict(hdf5plugin.Blosc(cname='lz4', clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))


@functools.cache
def _blosc() -> Any:
    """hdf5plugin's own c-blosc (its HDF5 filter library exports the c-blosc API), or None."""
    try:
        path = hdf5plugin.get_config().registered_filters['blosc']  # .so, .dylib or .dll
        lib = ctypes.CDLL(path)
        lib.blosc_cbuffer_validate.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_size_t),
        ]
        lib.blosc_decompress_ctx.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
        ]
    except (OSError, AttributeError, KeyError) as exc:  # another build: h5py reads instead
        _logger.debug('direct blosc decoding unavailable (%s); h5py decodes crops', exc)
        return None
    return lib


class _DirectLayout:
    """Reads a crop chunk by chunk, bypassing HDF5's filter pipeline and chunk cache.

    For raw chunks and for blosc chunks (decoded with `blosc_decompress_ctx`, which releases
    the GIL) crops measured 1.2-1.5x faster than h5py slicing of the same file (benchmarks/perf/
    cache_layout.md): HDF5 decodes each chunk into a fresh buffer and scatters it through its
    hyperslab machinery. Each chunk is decoded once per crop.
    Every blosc header is validated against the stored size before decoding, so damage raises
    instead of reading past the chunk.
    """

    def __init__(self, ds: h5py.Dataset, codec: str):
        self.codec = codec
        self.chunks = tuple(int(c) for c in ds.chunks)
        self.nbytes = int(np.prod(self.chunks)) * 2

    @classmethod
    def of(cls, ds: h5py.Dataset) -> _DirectLayout | None:
        """The direct reader for `ds`, or None when only h5py can read it."""
        if ds.chunks is None or ds.dtype != np.dtype('<i2') or ds.ndim != 3:
            return None
        dcpl = ds.id.get_create_plist()
        filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
        grid = np.prod([-(-s // c) for s, c in zip(ds.shape, ds.chunks, strict=False)])
        if ds.id.get_num_chunks() != grid:  # unwritten chunks read as fill values: h5py's job
            return None
        if not filters:
            return cls(ds, 'none')
        if filters == [BLOSC_FILTER] and _blosc() is not None:
            return cls(ds, 'blosc-lz4')
        return None

    def _decode(self, raw: bytes, buffer: np.ndarray) -> str | None:
        """Decode one blosc chunk into `buffer`; why it cannot be decoded, or None."""
        nbytes = ctypes.c_size_t()
        if _blosc().blosc_cbuffer_validate(raw, len(raw), ctypes.byref(nbytes)) < 0:
            return 'a blosc chunk header does not match its stored size'
        if nbytes.value != self.nbytes:
            return f'a blosc chunk decodes to {nbytes.value} bytes, not {self.nbytes}'
        done = _blosc().blosc_decompress_ctx(raw, buffer.ctypes.data, self.nbytes, 1)
        if done != self.nbytes:
            return f'a blosc chunk does not decompress (blosc error {done})'
        return None

    def _raw_size_problem(self, raw: Any) -> str | None:
        if len(raw) != self.nbytes:
            return f'a raw chunk holds {len(raw)} bytes, not {self.nbytes}'
        return None

    def _copy_raw(self, raw: bytes, flat: np.ndarray) -> str | None:
        problem = self._raw_size_problem(raw)
        if problem is None:
            flat[:] = np.frombuffer(raw, np.uint8)
        return problem

    def read(self, ds: h5py.Dataset, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
        out = np.empty(tuple(size), dtype=np.int16)
        buffer = np.empty(self.chunks, dtype=np.int16)
        flat = buffer.reshape(-1).view(np.uint8)
        stop = [a + n for a, n in zip(start, size, strict=False)]
        axes = [range(a // c * c, b, c) for a, b, c in zip(start, stop, self.chunks, strict=False)]
        for z in axes[0]:
            for y in axes[1]:
                for x in axes[2]:
                    corner = (z, y, x)
                    if self.codec == 'none':  # straight into the buffer
                        mask, raw = ds.id.read_direct_chunk(corner, out=flat)
                        problem = self._raw_size_problem(raw)
                    else:
                        mask, raw = ds.id.read_direct_chunk(corner)
                        if mask & 1:  # blosc could not shrink it: HDF5 stored the chunk raw
                            problem = self._copy_raw(raw, flat)
                            mask &= ~1
                        else:
                            problem = self._decode(raw, buffer)
                    if mask:
                        problem = f'filter mask {mask}'
                    if problem is not None:
                        raise OSError(f'chunk at {corner}: {problem}')
                    src, dst = [], []
                    for o, a, b, c in zip(corner, start, stop, self.chunks, strict=False):
                        lo, hi = max(o, a), min(o + c, b)
                        src.append(slice(lo - o, hi - o))
                        dst.append(slice(lo - a, hi - a))
                    out[tuple(dst)] = buffer[tuple(src)]
        return out


@dataclass
class CachedVolume:
    """One volume read from a cache: int16 HU (z, y, x) plus its geometry and provenance."""

    volume_id: str
    array: np.ndarray
    spacing_zyx: tuple[float, float, float]
    orientation: str
    attrs: dict[str, Any] = field(default_factory=dict)


def check_volume_id(volume_id: str) -> str:
    if (
        not isinstance(volume_id, str)
        or not volume_id
        or '/' in volume_id
        or volume_id in ('.', '..')
    ):
        raise ValueError(f'Volume id must be a non-empty string without "/", not {volume_id!r}')
    return volume_id


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_decode(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _attrs_dict(attrs: h5py.AttributeManager) -> dict[str, Any]:
    out = {k: _decode(v) for k, v in attrs.items()}
    for key in ('spacing_zyx', 'original_spacing_zyx', 'original_shape_zyx'):
        if key in out and isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def _encode_attr(value: Any) -> Any:
    if value is None:
        return ''
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    return value


def array_checksum(array: np.ndarray) -> str:
    """A fast content hash of an int16 volume (little-endian, C order): 20 ms per 14 MB."""
    data = np.ascontiguousarray(array, dtype='<i2')
    return 'blake2b:' + hashlib.blake2b(memoryview(data).cast('B'), digest_size=16).hexdigest()


def _short(exc: BaseException) -> str:
    """The first line of an h5py error (its messages run over several lines)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def read_box(
    ds: h5py.Dataset,
    start: Sequence[int] = (0, 0, 0),
    size: Sequence[int] | None = None,
    layout: _DirectLayout | None = None,
) -> np.ndarray:
    """A (z, y, x) box of a cached volume (all of it by default): decoded directly when `layout`
    is given (`_DirectLayout.of`), else by h5py. Crops, `read` and `verify` all read here."""
    size = ds.shape if size is None else size
    if layout is not None:
        return layout.read(ds, start, size)
    return ds[tuple(slice(a, a + n) for a, n in zip(start, size, strict=True))]


def volume_problem(ds: h5py.Dataset) -> str | None:
    """Why a cached volume cannot be trusted (None when its voxels match its checksum)."""
    expected = _decode(ds.attrs.get('checksum', ''))
    if not expected:
        return f'no checksum (written before format_version {CHECKSUM_SINCE})'
    try:
        data = read_box(ds, layout=_DirectLayout.of(ds))
    except (OSError, RuntimeError) as exc:
        return f'unreadable voxels ({_short(exc)})'
    if ds.dtype != np.int16 or data.ndim != 3:
        return f'voxels must be 3D int16, not {data.ndim}D {ds.dtype}'
    if array_checksum(data) != expected:
        return 'checksum mismatch: the stored voxels differ from those written'
    return None


class VolumeCache:
    """Read access to a single or merged cache; cheap to create and to pickle.

    With `verify=True` every read checks the volume's checksum and raises `CacheCorruptError`
    naming the cache and the volume; `read_crop` then checks the whole volume once per process.
    """

    def __init__(self, path: str | Path, verify: bool = False):
        self.path = Path(path)
        self.verify = bool(verify)
        if not self.path.is_file():
            raise FileNotFoundError(f'Cache file {str(self.path)!r} does not exist')
        self._pid: int | None = None
        self._files: dict[int, h5py.File] = {}
        self._verified: set[str] = set()
        self._layouts: dict[str, _DirectLayout | None] = {}
        try:
            with h5py.File(self.path, 'r') as f:
                self._read_index(f)
        except (OSError, KeyError, RuntimeError) as exc:
            raise CacheCorruptError(
                self.path, None, f'cannot be read as a volume cache ({_short(exc)})'
            ) from exc

    def _read_index(self, f: h5py.File) -> None:
        if 'format_version' not in f.attrs or 'ids' not in f:
            raise ValueError(
                f'{str(self.path)!r} is not a ctclip volume cache (no format_version/ids)'
            )
        version = int(f.attrs['format_version'])
        if version > FORMAT_VERSION:
            raise ValueError(
                f'{str(self.path)!r} has cache format {version}; this code reads up to {FORMAT_VERSION}'
            )
        self.format_version = version
        self.kind = _decode(f.attrs.get('kind', 'single'))
        self.recipe_hash = _decode(f.attrs.get('recipe_hash', ''))
        self._recipe_json = _decode(f.attrs.get('recipe', '{}'))
        self._ids = [_decode(v) for v in f['ids'][()]]
        self._position = {vid: i for i, vid in enumerate(self._ids)}
        if self.kind == 'merged':
            self._shards = [self.path.parent / _decode(p) for p in f['shards'][()]]
            self._shard_of = f['shard_of'][()].astype(np.int64)
        else:
            self._shards = [self.path]
            self._shard_of = np.zeros(len(self._ids), dtype=np.int64)

    # -- pickling / fork safety -------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state['_files'] = {}
        state['_pid'] = None
        state['_verified'] = set()
        state['_layouts'] = {}
        return state

    def _file(self, shard: int) -> h5py.File:
        if self._pid != os.getpid():  # a forked child must not reuse the parent's handles
            self._files = {}
            self._layouts = {}
            self._pid = os.getpid()
        handle = self._files.get(shard)
        if handle is None:
            try:
                handle = h5py.File(self._shards[shard], 'r')
            except OSError as exc:
                raise CacheCorruptError(
                    self._shards[shard], None, f'cannot be read ({_short(exc)})'
                ) from exc
            self._files[shard] = handle
        return handle

    def _dataset(self, volume_id: str) -> h5py.Dataset:
        position = self._position.get(volume_id)
        if position is None:
            raise KeyError(
                f'Volume {volume_id!r} is not in cache {str(self.path)!r} ({len(self)} volumes)'
            )
        try:
            return self._file(int(self._shard_of[position]))[VOLUMES][volume_id]
        except (KeyError, OSError, RuntimeError) as exc:  # a broken external link or header
            raise CacheCorruptError(self.path, volume_id, f'unreadable ({_short(exc)})') from exc

    def problem(self, volume_id: str) -> str | None:
        """Why `volume_id` cannot be trusted, or None when its voxels match its checksum."""
        try:
            return volume_problem(self._dataset(volume_id))
        except CacheCorruptError as exc:
            return exc.reason

    def check(self, volume_id: str) -> None:
        """Raise `CacheCorruptError` unless the volume's voxels match its checksum."""
        reason = self.problem(volume_id)
        if reason is not None:
            raise CacheCorruptError(self.path, volume_id, reason)
        self._verified.add(volume_id)

    def _read(
        self,
        ds: h5py.Dataset,
        volume_id: str,
        start: Sequence[int] = (0, 0, 0),
        size: Sequence[int] | None = None,
    ) -> np.ndarray:
        if volume_id not in self._layouts:  # the chunk layout is read once per volume
            self._layouts[volume_id] = _DirectLayout.of(ds)
        try:
            return read_box(ds, start, size, self._layouts[volume_id])
        except (OSError, RuntimeError) as exc:  # a chunk that does not decompress
            raise CacheCorruptError(
                self.path, volume_id, f'unreadable voxels ({_short(exc)})'
            ) from exc

    def close(self) -> None:
        if self._pid == os.getpid():
            for handle in self._files.values():
                handle.close()
        self._files = {}
        self._layouts = {}

    def __enter__(self) -> VolumeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API -------------------------------------------------------------------------
    @property
    def recipe(self) -> Recipe:
        return Recipe.from_dict(json.loads(self._recipe_json))

    @property
    def recipe_dict(self) -> dict[str, Any]:
        return json.loads(self._recipe_json)

    def ids(self) -> list[str]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, volume_id: object) -> bool:
        return volume_id in self._position

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def shape(self, volume_id: str) -> tuple[int, int, int]:
        return tuple(self._dataset(volume_id).shape)  # type: ignore[return-value]

    def attrs(self, volume_id: str) -> dict[str, Any]:
        return _attrs_dict(self._dataset(volume_id).attrs)

    def read(self, volume_id: str, verify: bool | None = None) -> CachedVolume:
        """The whole volume; `verify` (default: the cache's setting) checks its checksum."""
        ds = self._dataset(volume_id)
        attrs = _attrs_dict(ds.attrs)
        array = self._read(ds, volume_id)
        if self.verify if verify is None else verify:
            expected = attrs.get('checksum') or ''
            if not expected:
                raise CacheCorruptError(
                    self.path,
                    volume_id,
                    f'no checksum (written before format_version {CHECKSUM_SINCE})',
                )
            if array_checksum(array) != expected:
                raise CacheCorruptError(
                    self.path,
                    volume_id,
                    'checksum mismatch: the stored voxels differ from those written',
                )
        return CachedVolume(
            volume_id=volume_id,
            array=array,
            spacing_zyx=tuple(float(s) for s in attrs['spacing_zyx']),  # type: ignore[arg-type]
            orientation=attrs.get('orientation', 'LPS'),
            attrs=attrs,
        )

    def read_crop(
        self,
        volume_id: str,
        start_zyx: Sequence[int],
        size_zyx: Sequence[int],
        verify: bool | None = None,
    ) -> np.ndarray:
        """A (z, y, x) box as a new C-contiguous int16 array; only the chunks it touches are read
        and decoded, each once.

        A checksum covers the whole volume, so `verify` reads all of it the first time this process
        crops the volume; later crops of a verified volume cost nothing extra.
        """
        if (self.verify if verify is None else verify) and volume_id not in self._verified:
            if self._pid != os.getpid():
                self._verified = set()
            self.check(volume_id)
        ds = self._dataset(volume_id)
        start = [int(s) for s in start_zyx]
        size = [int(s) for s in size_zyx]
        if len(start) != 3 or len(size) != 3:
            raise ValueError(
                f'start_zyx and size_zyx must have 3 values, not {start_zyx}, {size_zyx}'
            )
        for axis, (s, n, dim) in enumerate(zip(start, size, ds.shape, strict=False)):
            if s < 0 or n < 1 or s + n > dim:
                raise ValueError(
                    f'Crop start {start} size {size} lies outside volume {volume_id!r} of shape '
                    f'{ds.shape} (axis {axis})'
                )
        return self._read(ds, volume_id, start, size)

    def __repr__(self) -> str:
        return f'VolumeCache({str(self.path)!r}, kind={self.kind}, volumes={len(self)})'


def open_cache(path: str | Path, verify: bool = False) -> VolumeCache:
    """Open a single or merged cache for reading (lazily, per process); see `VolumeCache`."""
    return VolumeCache(path, verify=verify)


def verify_cache(path: str | Path, progress: bool = False) -> list[tuple[str, str]]:
    """(volume id, reason) for every volume of a cache whose voxels do not match its checksum."""
    from tqdm import tqdm

    cache = open_cache(path)
    bad = []
    with cache:
        for vid in tqdm(cache.ids(), unit='vol', desc='verify', disable=not progress):
            reason = cache.problem(vid)
            if reason is not None:
                bad.append((vid, reason))
    return bad


def is_volume_cache(path: str | Path) -> bool:
    """Whether `path` is a file this package wrote (so a run may replace it)."""
    try:
        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, 'r') as f:
            return 'format_version' in f.attrs and 'ids' in f
    except OSError:
        return False


def read_recipe_hash(path: str | Path) -> str:
    with h5py.File(path, 'r') as f:
        return _decode(f.attrs.get('recipe_hash', ''))


def _write_root(f: h5py.File, recipe: Recipe, kind: str) -> None:
    f.attrs['format_version'] = FORMAT_VERSION
    f.attrs['kind'] = kind
    f.attrs['recipe'] = recipe.to_json()
    f.attrs['recipe_hash'] = recipe.hash


def _chunks(shape: Sequence[int], chunks: Sequence[int]) -> tuple[int, ...]:
    return tuple(max(1, min(int(c), int(s))) for c, s in zip(chunks, shape, strict=False))


class _NoFailFile(io.FileIO):
    """A file for h5py's file-object driver that keeps the first write error instead of raising.

    HDF5 cannot recover from a failed write (a full disk): h5py then loses the error in
    `__dealloc__` and may segfault on close. Swallowing it here lets HDF5 close cleanly; the writer
    raises the recorded error afterwards and deletes the temporary file.
    """

    def __init__(self, path: str | Path):
        super().__init__(path, 'w+')
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast('B')
        if self.error is None:
            try:
                done = 0
                while done < len(view):  # a short write is followed by the real error
                    written = super().write(view[done:]) or 0
                    if written <= 0:
                        raise OSError(errno.EIO, 'a write made no progress')
                    done += written
            except OSError as exc:
                self.error = exc
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        try:
            return super().truncate(size)
        except OSError as exc:
            self.error = self.error or exc
            return int(size or 0)

    def finish(self) -> OSError | None:
        """Flush to disk and close; returns the first error of the whole write."""
        if self.error is None:
            try:
                os.fsync(self.fileno())
            except OSError as exc:
                self.error = exc
        self.close()
        return self.error


class CacheWriteError(OSError):
    """A failed cache write; its text is the message alone, with `errno` and `filename` set."""

    def __str__(self) -> str:
        return str(self.strerror)


def write_error(exc: OSError, path: str | Path) -> OSError:
    """An OSError whose message names the output and the cause ('disk full (ENOSPC) writing X')."""
    code = exc.errno
    if code is None and 'errno = 28' in str(exc):
        code = errno.ENOSPC
    if code == errno.ENOSPC:
        text = f'disk full (ENOSPC) writing {path}'
    elif code is not None:
        text = f'{os.strerror(code)} ({errno.errorcode.get(code, code)}) writing {path}'
    else:
        text = f'{_short(exc)} writing {path}'
    return CacheWriteError(code, text, str(path))


def _open_h5(tmp: Path) -> tuple[_NoFailFile, h5py.File]:
    raw = _NoFailFile(tmp)
    try:
        return raw, h5py.File(raw, 'w', libver='v110', track_order=False)
    except BaseException:
        raw.close()
        raise


def _close_h5(raw: _NoFailFile, f: h5py.File, path: Path) -> None:
    """Close an HDF5 file written through `_NoFailFile`, raising the first write error."""
    try:
        if f.id.valid:
            f.close()
    finally:
        error = raw.finish()
    if error is not None:
        raise write_error(error, path) from error


def check_written(path: str | Path, ids: Sequence[str], checksums: dict[str, str]) -> None:
    """Re-read a freshly written single cache: its index and every volume against its checksum."""
    path = Path(path)
    try:
        with h5py.File(path, 'r') as f:
            if int(f.attrs['format_version']) != FORMAT_VERSION:
                raise CacheCorruptError(path, None, 'format_version was not written')
            stored = [_decode(v) for v in f['ids'][()]]
            if stored != list(ids):
                raise CacheCorruptError(
                    path, None, f'ids read back as {stored[:3]}..., not {ids[:3]}'
                )
            for vid in ids:
                ds = f[VOLUMES][vid]
                reason = volume_problem(ds)
                if reason is None and _decode(ds.attrs['checksum']) != checksums[vid]:
                    reason = 'checksum differs from the voxels handed to the writer'
                if reason is not None:
                    raise CacheCorruptError(path, vid, reason)
    except (OSError, KeyError, RuntimeError) as exc:
        raise CacheCorruptError(path, None, f'unreadable after writing ({_short(exc)})') from exc


class CacheWriter:
    """Writes a cache to a temporary file in the target folder and renames it on `commit()`.

    `commit()` closes the file (write errors such as a full disk raise there, as an OSError
    naming the target), re-reads every volume against its checksum, and only then renames it into
    place. A run killed before that leaves the previous cache (if any) untouched and only a
    temporary file, which `ctcommon.atomic.remove_stale_temps` removes at the next start.
    """

    def __init__(self, path: str | Path, recipe: Recipe):
        self.path = Path(path)
        self.recipe = recipe
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = temp_path_for(self.path)
        self._raw, self._file = _open_h5(self.tmp_path)
        _write_root(self._file, recipe, 'single')
        self._volumes = self._file.create_group(VOLUMES)
        self._ids: list[str] = []
        self._checksums: dict[str, str] = {}

    def _check_io(self) -> None:
        """Stop at the first failed write rather than after the whole cache."""
        if self._raw.error is not None:
            raise write_error(self._raw.error, self.path) from self._raw.error

    def write(self, volume_id: str, array: np.ndarray, attrs: dict[str, Any]) -> None:
        """Add one volume (int16 HU, z-y-x) with its attributes; its checksum is added here."""
        check_volume_id(volume_id)
        if volume_id in self._volumes:
            raise ValueError(f'Volume id {volume_id!r} appears twice in {str(self.path)!r}')
        if array.ndim != 3 or array.dtype != np.int16:
            raise ValueError(f'Cache arrays must be 3D int16, not {array.ndim}D {array.dtype}')
        ds = self._volumes.create_dataset(
            volume_id,
            data=array,
            chunks=_chunks(array.shape, self.recipe.chunk_shape),
            track_times=False,
            **compression_options(self.recipe.cache_codec),
        )
        checksum = array_checksum(array)
        self._set_attrs(ds, {**attrs, 'checksum': checksum})
        self._ids.append(volume_id)
        self._checksums[volume_id] = checksum
        self._file.flush()
        self._check_io()

    def copy_from(self, source: h5py.File, volume_id: str) -> None:
        """Copy one volume from another cache file chunk by chunk, without recompressing.

        The copy keeps the source's chunk shape and filters (an older cache's layout stays as it
        was, and readers accept any layout). The source's checksum travels with it (computed here
        for a volume written before checksums), so `commit()` finds a chunk damaged in the source
        or in the copy.
        """
        check_volume_id(volume_id)
        src = source[VOLUMES][volume_id]
        attrs = _attrs_dict(src.attrs)
        if not attrs.get('checksum'):
            attrs['checksum'] = array_checksum(src[()])
        if src.chunks is None:  # not a layout this package writes: store it as new volumes are
            dst = self._volumes.create_dataset(
                volume_id,
                data=src[()],
                chunks=_chunks(src.shape, self.recipe.chunk_shape),
                track_times=False,
                **compression_options(self.recipe.cache_codec),
            )
        else:
            group = self._volumes
            dst = h5py.Dataset(
                h5py.h5d.create(
                    group.id,
                    group._e(volume_id),
                    src.id.get_type(),
                    src.id.get_space(),
                    dcpl=src.id.get_create_plist(),  # chunks, filters and their settings
                    lcpl=group._lcpl,
                )
            )
            for i in range(src.id.get_num_chunks()):
                offset = src.id.get_chunk_info(i).chunk_offset
                mask, data = src.id.read_direct_chunk(offset)
                dst.id.write_direct_chunk(offset, data, mask)
        self._set_attrs(dst, attrs)
        self._ids.append(volume_id)
        self._checksums[volume_id] = attrs['checksum']
        self._file.flush()
        self._check_io()

    @staticmethod
    def _set_attrs(ds: h5py.Dataset, attrs: dict[str, Any]) -> None:
        for key in sorted(attrs):
            ds.attrs[key] = _encode_attr(attrs[key])

    def commit(self) -> Path:
        try:
            self._file.create_dataset('ids', data=np.array(self._ids, dtype=object), dtype=_STR)
            _close_h5(self._raw, self._file, self.path)
            check_written(self.tmp_path, self._ids, self._checksums)
            atomic_commit(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        try:
            if self._file.id.valid:
                self._file.close()
        finally:
            if not self._raw.closed:
                self._raw.close()
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_single_volume(
    path: str | Path, recipe: Recipe, volume_id: str, array: np.ndarray, attrs: dict[str, Any]
) -> Path:
    """A one-volume cache file, written atomically (used for the resumable per-volume parts)."""
    with CacheWriter(path, recipe) as writer:
        writer.write(volume_id, array, attrs)
    return Path(path)


def _check_merged(path: Path, ids: list[str]) -> None:
    try:
        with h5py.File(path, 'r') as f:
            stored = [_decode(v) for v in f['ids'][()]]
            if stored != ids or len(f['shard_of']) != len(ids) or len(f[VOLUMES]) != len(ids):
                raise CacheCorruptError(path, None, 'index read back incomplete')
    except (OSError, KeyError, RuntimeError) as exc:
        raise CacheCorruptError(path, None, f'unreadable after writing ({_short(exc)})') from exc


def merge_caches(out: str | Path, shards: Sequence[str | Path]) -> Path:
    """Expose several shard caches as one, without copying voxels (an index plus external links)."""
    out = Path(out)
    if not shards:
        raise ValueError('merge needs at least one shard cache')
    recipe_json, recipe_hash = None, None
    ids: list[str] = []
    shard_of: list[int] = []
    seen: dict[str, str] = {}
    rel_paths = []
    for number, shard in enumerate(shards):
        shard = Path(shard)
        cache = open_cache(shard)
        if cache.kind != 'single':
            raise ValueError(
                f'Shard {str(shard)!r} is itself a merged cache; merge its shards instead'
            )
        if recipe_hash is None:
            recipe_json, recipe_hash = cache._recipe_json, cache.recipe_hash
        elif cache.recipe_hash != recipe_hash:
            raise ValueError(
                f'Shard {str(shard)!r} has recipe hash {cache.recipe_hash}, but {str(shards[0])!r} '
                f'has {recipe_hash}: shards of one cache must share one recipe'
            )
        for vid in cache.ids():
            if vid in seen:
                raise ValueError(f'Volume {vid!r} is in both {seen[vid]!r} and {str(shard)!r}')
            seen[vid] = str(shard)
            ids.append(vid)
            shard_of.append(number)
        rel_paths.append(os.path.relpath(shard.resolve(), out.resolve().parent))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(out)
    try:
        raw, f = _open_h5(tmp)
        try:
            f.attrs['format_version'] = FORMAT_VERSION
            f.attrs['kind'] = 'merged'
            f.attrs['recipe'] = recipe_json
            f.attrs['recipe_hash'] = recipe_hash
            f.create_dataset('ids', data=np.array(ids, dtype=object), dtype=_STR)
            f.create_dataset('shards', data=np.array(rel_paths, dtype=object), dtype=_STR)
            f.create_dataset('shard_of', data=np.asarray(shard_of, dtype=np.int32))
            group = f.create_group(VOLUMES)
            for vid, number in zip(ids, shard_of, strict=False):
                group[vid] = h5py.ExternalLink(rel_paths[number], f'/{VOLUMES}/{vid}')
        finally:
            _close_h5(raw, f, out)
        _check_merged(tmp, ids)
        atomic_commit(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _logger.info('merged %d shards (%d volumes) into %s', len(shards), len(ids), out)
    return out
