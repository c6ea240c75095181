"""The HDF5 volume cache: the one file format between preprocessing and training.

Layout of a cache file (see docs/architecture.md, section 2):

    /                 attrs: format_version, kind ('single' | 'merged'), recipe (JSON), recipe_hash
    /ids              utf-8 strings, the volume ids in manifest order
    /volumes/<id>     int16 HU, (D, H, W) = (z, y, x), blosc-compressed chunks, per-volume attrs

A merged cache (`merge_caches`) holds no voxels: `/shards` lists the shard files (relative to the
merged file), `/shard_of` gives each id's shard, and `/volumes/<id>` are HDF5 external links, so plain
h5py users see every volume too. Handles are opened lazily and per process, so a cache object can be
handed to forked or spawned DataLoader workers.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import hdf5plugin
import numpy as np

from preprocessing.recipes import Recipe

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
VOLUMES = 'volumes'
_STR = h5py.string_dtype('utf-8')


def compression_options() -> dict[str, Any]:
    """Blosc-LZ4 with byte shuffle: the fastest decode of the codecs measured for int16 CT."""
    return dict(hdf5plugin.Blosc(cname='lz4', clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))


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


class VolumeCache:
    """Read access to a single or merged cache; cheap to create and to pickle."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f'Cache file {str(self.path)!r} does not exist')
        self._pid: int | None = None
        self._files: dict[int, h5py.File] = {}
        with h5py.File(self.path, 'r') as f:
            self._read_index(f)

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
        return state

    def _file(self, shard: int) -> h5py.File:
        if self._pid != os.getpid():  # a forked child must not reuse the parent's handles
            self._files = {}
            self._pid = os.getpid()
        handle = self._files.get(shard)
        if handle is None:
            handle = h5py.File(self._shards[shard], 'r')
            self._files[shard] = handle
        return handle

    def _dataset(self, volume_id: str) -> h5py.Dataset:
        position = self._position.get(volume_id)
        if position is None:
            raise KeyError(
                f'Volume {volume_id!r} is not in cache {str(self.path)!r} ({len(self)} volumes)'
            )
        return self._file(int(self._shard_of[position]))[VOLUMES][volume_id]

    def close(self) -> None:
        if self._pid == os.getpid():
            for handle in self._files.values():
                handle.close()
        self._files = {}

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

    def read(self, volume_id: str) -> CachedVolume:
        ds = self._dataset(volume_id)
        attrs = _attrs_dict(ds.attrs)
        return CachedVolume(
            volume_id=volume_id,
            array=ds[()],
            spacing_zyx=tuple(float(s) for s in attrs['spacing_zyx']),  # type: ignore[arg-type]
            orientation=attrs.get('orientation', 'LPS'),
            attrs=attrs,
        )

    def read_crop(
        self, volume_id: str, start_zyx: Sequence[int], size_zyx: Sequence[int]
    ) -> np.ndarray:
        """A (z, y, x) box; only the chunks it touches are read and decompressed."""
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
        return ds[
            start[0] : start[0] + size[0],
            start[1] : start[1] + size[1],
            start[2] : start[2] + size[2],
        ]

    def __repr__(self) -> str:
        return f'VolumeCache({str(self.path)!r}, kind={self.kind}, volumes={len(self)})'


def open_cache(path: str | Path) -> VolumeCache:
    """Open a single or merged cache for reading (lazily, per process)."""
    return VolumeCache(path)


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


class CacheWriter:
    """Writes a cache to a temporary file in the target folder and renames it on `commit()`.

    A run killed before `commit()` leaves the previous cache (if any) untouched and only a
    `.tmp` file behind, which the next run overwrites.
    """

    def __init__(self, path: str | Path, recipe: Recipe):
        self.path = Path(path)
        self.recipe = recipe
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = self.path.with_name(f'.{self.path.name}.tmp{os.getpid()}')
        self._file = h5py.File(self.tmp_path, 'w', libver='v110', track_order=False)
        _write_root(self._file, recipe, 'single')
        self._volumes = self._file.create_group(VOLUMES)
        self._ids: list[str] = []

    def write(self, volume_id: str, array: np.ndarray, attrs: dict[str, Any]) -> None:
        """Add one volume (int16 HU, z-y-x) with its attributes."""
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
            **compression_options(),
        )
        self._set_attrs(ds, attrs)
        self._ids.append(volume_id)

    def copy_from(self, source: h5py.File, volume_id: str) -> None:
        """Copy one volume from another cache file chunk by chunk, without recompressing."""
        check_volume_id(volume_id)
        src = source[VOLUMES][volume_id]
        dst = self._volumes.create_dataset(
            volume_id,
            shape=src.shape,
            dtype=src.dtype,
            chunks=src.chunks,
            track_times=False,
            **compression_options(),
        )
        for i in range(src.id.get_num_chunks()):
            offset = src.id.get_chunk_info(i).chunk_offset
            mask, data = src.id.read_direct_chunk(offset)
            dst.id.write_direct_chunk(offset, data, mask)
        self._set_attrs(dst, _attrs_dict(src.attrs))
        self._ids.append(volume_id)

    @staticmethod
    def _set_attrs(ds: h5py.Dataset, attrs: dict[str, Any]) -> None:
        for key in sorted(attrs):
            ds.attrs[key] = _encode_attr(attrs[key])

    def commit(self) -> Path:
        self._file.create_dataset('ids', data=np.array(self._ids, dtype=object), dtype=_STR)
        self._file.close()
        os.replace(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        if self._file.id.valid:
            self._file.close()
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
    tmp = out.with_name(f'.{out.name}.tmp{os.getpid()}')
    with h5py.File(tmp, 'w', libver='v110') as f:
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
    os.replace(tmp, out)
    _logger.info('merged %d shards (%d volumes) into %s', len(shards), len(ids), out)
    return out
