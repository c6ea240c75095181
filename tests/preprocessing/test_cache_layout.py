"""Cache layouts: the default (blosc-lz4 slabs of 8 slices), raw chunks, and older or foreign
layouts all give the same crops, copies and checksums."""

import h5py
import hdf5plugin
import numpy as np
import pytest

from ctclip.cli import main
from preprocessing.cache import (
    CacheWriter,
    _DirectLayout,
    merge_caches,
    open_cache,
    verify_cache,
)
from preprocessing.errors import CacheCorruptError
from preprocessing.recipes import Recipe, get_recipe

RECIPE = get_recipe('small')  # 56 x 112 x 112, crop 48 x 96 x 96
SHAPE = RECIPE.shape_zyx

# name -> create_dataset options replacing the writer's (None: the writer's own layout)
LAYOUTS = {
    'default': None,
    'raw': 'none',
    'format-2 slabs (14 slices, blosc-lz4)': dict(
        chunks=(14, 112, 112), **hdf5plugin.Blosc('lz4', 5, hdf5plugin.Blosc.SHUFFLE)
    ),
    'blocks 16x32x48 blosc-lz4': dict(
        chunks=(16, 32, 48), **hdf5plugin.Blosc('lz4', 5, hdf5plugin.Blosc.SHUFFLE)
    ),
    'blocks 8x40x40 raw': dict(chunks=(8, 40, 40)),
    'slabs lz4 filter': dict(chunks=(8, 112, 112), **hdf5plugin.LZ4()),
    'slabs gzip': dict(chunks=(8, 112, 112), compression='gzip'),
    'contiguous': dict(chunks=None),
}


def _volume(seed: int) -> np.ndarray:
    """CT-like: smooth anatomy plus noise, so blosc compresses it (random voxels do not)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing='ij')
    body = np.where(x**2 + y**2 < 0.8, 40.0, -1000.0) + 300 * np.sin(5 * z + seed)
    return (body + rng.normal(0, 20, SHAPE)).astype(np.int16)


def _write(path, layout: str, seed: int = 0, volume_id: str = 'v') -> np.ndarray:
    """A one-volume cache in `layout`: older and foreign layouts are the writer's file with the
    dataset rewritten, as an older writer left it."""
    array = _volume(seed)
    options = LAYOUTS[layout]
    recipe = RECIPE.replace(cache_codec=options) if isinstance(options, str) else RECIPE
    with CacheWriter(path, recipe) as writer:
        writer.write(volume_id, array, {'spacing_zyx': RECIPE.spacing_zyx, 'orientation': 'LPS'})
    if isinstance(options, dict):
        with h5py.File(path, 'r+') as f:
            group = f['volumes']
            attrs = dict(group[volume_id].attrs)
            del group[volume_id]
            ds = group.create_dataset(volume_id, data=array, **options)
            ds.attrs.update(attrs)
    return array


def _boxes():
    """Edge crops, crops across chunk borders, thin and whole-volume boxes."""
    crop = RECIPE.crop_zyx
    yield (0, 0, 0), crop
    yield tuple(s - c for s, c in zip(SHAPE, crop, strict=True)), crop  # the far corner
    yield (7, 15, 9), crop  # every axis across a chunk border
    yield (3, 41, 77), (1, 1, 35)
    yield (0, 0, 0), SHAPE
    yield (55, 111, 111), (1, 1, 1)
    rng = np.random.default_rng(1)
    for _ in range(5):
        yield tuple(int(rng.integers(0, s - c + 1)) for s, c in zip(SHAPE, crop, strict=True)), crop


def test_default_layout_is_blosc_slabs_of_eight_slices_read_directly(tmp_path):
    _write(tmp_path / 'c.h5', 'default')
    with h5py.File(tmp_path / 'c.h5') as f:
        ds = f['volumes/v']
        assert ds.chunks == (8, 112, 112) and list(ds._filters) == ['32001']
        assert _DirectLayout.of(ds).codec == 'blosc-lz4'
    _write(tmp_path / 'raw.h5', 'raw')
    with h5py.File(tmp_path / 'raw.h5') as f:
        ds = f['volumes/v']
        assert ds.chunks == (8, 112, 112) and not ds._filters
        assert _DirectLayout.of(ds).codec == 'none'
    assert RECIPE.replace(cache_codec='none').hash == RECIPE.hash  # same voxels, same hash
    assert 'cache_codec' not in RECIPE.to_dict()  # older code reads default caches' recipes
    assert Recipe.from_dict(RECIPE.replace(cache_codec='none').to_dict()).cache_codec == 'none'
    assert RECIPE.replace(chunks_zyx=(4, 8, 8)).hash == RECIPE.hash
    with pytest.raises(ValueError, match="cache_codec must be one of .* not 'zstd'"):
        Recipe('x', (1.0, 1.0, 1.0), (8, 8, 8), cache_codec='zstd')


@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_crops_equal_the_volume_in_every_layout(tmp_path, layout):
    path = tmp_path / 'cache.h5'
    array = _write(path, layout)
    cache = open_cache(path, verify=True)  # the checksum covers the voxels in any layout
    whole = cache.read('v').array
    np.testing.assert_array_equal(whole, array)
    for start, size in _boxes():
        box = tuple(slice(a, a + n) for a, n in zip(start, size, strict=True))
        crop = cache.read_crop('v', start, size)
        assert crop.dtype == np.int16 and crop.flags.c_contiguous and crop.shape == tuple(size)
        np.testing.assert_array_equal(crop, whole[box], err_msg=f'{layout} {start} {size}')
    assert verify_cache(path) == []


def test_old_layout_caches_merge_copy_and_verify_with_new_ones(tmp_path, capsys):
    """A rerun or a merge mixes volumes of several layouts: each keeps its own chunks and filters
    (a raw copy of blosc bytes under another filter would decode to garbage)."""
    arrays, shards = {}, []
    for i, layout in enumerate(['default', 'raw', 'format-2 slabs (14 slices, blosc-lz4)']):
        shard = tmp_path / f'shard{i}.h5'
        arrays[f'v{i}'] = _write(shard, layout, seed=i, volume_id=f'v{i}')
        shards.append(shard)
    merged = merge_caches(tmp_path / 'merged.h5', shards)
    copied = tmp_path / 'copied.h5'
    with CacheWriter(copied, RECIPE) as writer:  # what the runner does with parts and reuse
        for i, shard in enumerate(shards):
            with h5py.File(shard) as f:
                writer.copy_from(f, f'v{i}')
    with h5py.File(copied) as f:
        assert f['volumes/v0'].chunks == (8, 112, 112) and '32001' in f['volumes/v0']._filters
        assert f['volumes/v1'].chunks == (8, 112, 112) and not f['volumes/v1']._filters
        assert f['volumes/v2'].chunks == (14, 112, 112) and '32001' in f['volumes/v2']._filters
    for path in (merged, copied):
        cache = open_cache(path, verify=True)
        for vid, array in arrays.items():
            np.testing.assert_array_equal(
                cache.read_crop(vid, (5, 9, 13), (48, 96, 96)), array[5:53, 9:105, 13:109]
            )
        assert verify_cache(path) == []
        assert main(['preprocess', 'verify', str(path), '--no-progress']) == 0
        assert '3 of 3 volumes verified, 0 bad' in capsys.readouterr().out


def _flip(path, corner, at, byte=0xFF):
    with h5py.File(path) as f:
        info = f['volumes/v'].id.get_chunk_info_by_coord(corner)
    with open(path, 'r+b') as f:
        f.seek(info.byte_offset + at)
        value = f.read(1)[0]
        f.seek(info.byte_offset + at)
        f.write(bytes([value ^ byte]))


@pytest.mark.parametrize('at', [12, 13])
def test_a_damaged_blosc_header_is_named_by_crops_and_verify(tmp_path, capsys, at):
    """A wrong compressed size in a chunk's blosc header: HDF5's filter decodes past it, the
    direct reader checks it against the stored size, and verify uses the same decoder."""
    path = tmp_path / 'cache.h5'
    array = _write(path, 'default')
    _flip(path, (16, 0, 0), at)
    cache = open_cache(path)
    np.testing.assert_array_equal(cache.read_crop('v', (0, 0, 0), (16, 112, 112)), array[:16])
    with pytest.raises(CacheCorruptError, match=r"volume 'v': unreadable voxels \(chunk at"):
        cache.read_crop('v', (10, 0, 0), (20, 20, 20))
    assert main(['preprocess', 'verify', str(path), '--no-progress']) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "volume 'v'" in err and 'blosc chunk header' in err


def test_without_the_direct_decoder_h5py_reads_the_same_crops(tmp_path, monkeypatch):
    """Where hdf5plugin's c-blosc cannot be loaded (another build), h5py decodes instead."""
    import preprocessing.cache as cache_module

    array = _write(tmp_path / 'cache.h5', 'default')
    monkeypatch.setattr(cache_module, '_blosc', lambda: None)
    cache = open_cache(tmp_path / 'cache.h5')
    np.testing.assert_array_equal(
        cache.read_crop('v', (7, 15, 9), (48, 96, 96)), array[7:55, 15:111, 9:105]
    )
    assert cache._layouts == {'v': None} and verify_cache(tmp_path / 'cache.h5') == []


def test_an_incompressible_volume_reads_back_through_the_direct_decoder(tmp_path):
    """Blosc cannot shrink noise: HDF5 then stores the chunk raw and sets its filter-mask bit."""
    from preprocessing.cache import _DirectLayout, compression_options

    noise = np.random.default_rng(0).integers(-32768, 32767, (16, 64, 64), dtype=np.int16)
    with h5py.File(tmp_path / 'noise.h5', 'w') as f:
        ds = f.create_dataset('v', data=noise, chunks=(8, 64, 64), **compression_options())
        assert ds.id.get_chunk_info(0).filter_mask == 1
        layout = _DirectLayout.of(ds)
        assert layout is not None and layout.codec == 'blosc-lz4'
        np.testing.assert_array_equal(
            layout.read(ds, (3, 5, 7), (10, 40, 50)), noise[3:13, 5:45, 7:57]
        )
