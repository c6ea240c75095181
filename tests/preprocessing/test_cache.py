import multiprocessing
import pickle

import h5py
import numpy as np
import pytest

from ctclip.cli import main
from preprocessing.cache import (
    FORMAT_VERSION,
    CacheWriter,
    array_checksum,
    merge_caches,
    open_cache,
    verify_cache,
    write_single_volume,
)
from preprocessing.errors import CacheCorruptError
from preprocessing.recipes import get_recipe

RECIPE = get_recipe('small')


def _volume(seed):
    return np.random.default_rng(seed).integers(-1000, 1500, RECIPE.shape_zyx).astype(np.int16)


def _attrs(i):
    return {
        'spacing_zyx': RECIPE.spacing_zyx,
        'orientation': 'LPS',
        'original_shape_zyx': (10, 20, 30),
        'split': 'train',
        'patient_id': f'p{i}',
    }


@pytest.fixture
def cache_path(tmp_path):
    path = tmp_path / 'cache.h5'
    with CacheWriter(path, RECIPE) as writer:
        for i in range(3):
            writer.write(f'vol{i}.nii.gz', _volume(i), _attrs(i))
    return path


def test_read_volume_crop_and_attrs(cache_path):
    cache = open_cache(cache_path)
    assert cache.ids() == ['vol0.nii.gz', 'vol1.nii.gz', 'vol2.nii.gz'] and len(cache) == 3
    assert 'vol1.nii.gz' in cache and 'nope' not in cache
    vol = cache.read('vol1.nii.gz')
    np.testing.assert_array_equal(vol.array, _volume(1))
    assert vol.spacing_zyx == RECIPE.spacing_zyx and vol.orientation == 'LPS'
    assert vol.attrs['patient_id'] == 'p1' and vol.attrs['original_shape_zyx'] == (10, 20, 30)
    crop = cache.read_crop('vol2.nii.gz', (3, 5, 7), (48, 96, 96))
    np.testing.assert_array_equal(crop, _volume(2)[3:51, 5:101, 7:103])
    assert cache.recipe == RECIPE and cache.recipe_hash == RECIPE.hash


def test_chunks_are_compressed_and_crop_sized(cache_path):
    with h5py.File(cache_path) as f:
        ds = f['volumes/vol0.nii.gz']
        assert ds.dtype == np.int16 and ds.chunks == (8, 112, 112)
        assert '32001' in ds._filters  # blosc


def test_bad_reads_name_the_problem(cache_path, tmp_path):
    cache = open_cache(cache_path)
    with pytest.raises(KeyError, match="'missing' is not in cache"):
        cache.read('missing')
    with pytest.raises(ValueError, match='outside volume'):
        cache.read_crop('vol0.nii.gz', (10, 0, 0), (48, 96, 96))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        open_cache(tmp_path / 'none.h5')
    with h5py.File(tmp_path / 'other.h5', 'w') as f:
        f['x'] = 1
    with pytest.raises(ValueError, match='not a ctclip volume cache'):
        open_cache(tmp_path / 'other.h5')


def test_writer_rejects_bad_volumes(tmp_path):
    with CacheWriter(tmp_path / 'c.h5', RECIPE) as writer:
        with pytest.raises(ValueError, match='3D int16'):
            writer.write('a', np.zeros((4, 4, 4), np.float32), {})
        with pytest.raises(ValueError, match='without "/"'):
            writer.write('a/b', _volume(0), {})
        writer.write('a', _volume(0), {})
        with pytest.raises(ValueError, match='appears twice'):
            writer.write('a', _volume(0), {})


def test_aborted_writer_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with CacheWriter(tmp_path / 'c.h5', RECIPE) as writer:
            writer.write('a', _volume(0), {})
            raise RuntimeError('killed')
    assert list(tmp_path.iterdir()) == []


def test_identical_content_gives_identical_bytes(tmp_path):
    for name in ('a.h5', 'b.h5'):
        write_single_volume(tmp_path / name, RECIPE, 'v', _volume(0), _attrs(0))
    assert (tmp_path / 'a.h5').read_bytes() == (tmp_path / 'b.h5').read_bytes()


def test_merge_exposes_shards_without_copying(tmp_path):
    for i in range(3):
        write_single_volume(
            tmp_path / 'shards' / f's{i}.h5', RECIPE, f'v{i}', _volume(i), _attrs(i)
        )
    merged = merge_caches(
        tmp_path / 'out' / 'merged.h5', sorted((tmp_path / 'shards').glob('*.h5'))
    )
    assert merged.stat().st_size < 50_000
    cache = open_cache(merged)
    assert cache.kind == 'merged' and cache.ids() == ['v0', 'v1', 'v2']
    for i in range(3):
        np.testing.assert_array_equal(cache.read(f'v{i}').array, _volume(i))
    with h5py.File(merged) as f:  # plain h5py sees the volumes through external links
        np.testing.assert_array_equal(f['volumes/v2'][()], _volume(2))
    assert verify_cache(merged) == []  # checksums are checked through the links


def test_merge_refuses_mixed_recipes_and_duplicates(tmp_path):
    write_single_volume(tmp_path / 'a.h5', RECIPE, 'v', _volume(0), {})
    write_single_volume(tmp_path / 'b.h5', RECIPE, 'v', _volume(0), {})
    write_single_volume(tmp_path / 'c.h5', get_recipe('li2025'), 'w', _volume(0), {})
    with pytest.raises(ValueError, match="'v' is in both"):
        merge_caches(tmp_path / 'm.h5', [tmp_path / 'a.h5', tmp_path / 'b.h5'])
    with pytest.raises(ValueError, match='share one recipe'):
        merge_caches(tmp_path / 'm.h5', [tmp_path / 'a.h5', tmp_path / 'c.h5'])


def _child_sum(cache, queue):
    queue.put(int(cache.read('vol2.nii.gz').array.sum()))


@pytest.mark.parametrize('method', ['fork', 'spawn'])
def test_cache_object_works_in_child_processes(cache_path, method):
    cache = open_cache(cache_path)
    cache.read('vol0.nii.gz')  # the parent holds an open handle
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_sum, args=(cache, queue))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0 and queue.get(timeout=5) == int(_volume(2).sum())
    assert pickle.loads(pickle.dumps(cache)).ids() == cache.ids()


def _flip(path, volume_id, chunk, at, byte=0xFF):
    """XOR one byte at `at` inside a stored (compressed) chunk; returns the chunk's (offset, size)."""
    with h5py.File(path) as f:
        info = f['volumes'][volume_id].id.get_chunk_info(chunk)
    position = info.byte_offset + (at if at >= 0 else info.size + at)
    with open(path, 'r+b') as f:
        f.seek(position)
        value = f.read(1)[0]
        f.seek(position)
        f.write(bytes([value ^ byte]))
    return info.byte_offset, info.size


def test_every_volume_carries_a_checksum_of_its_voxels(cache_path, capsys):
    with h5py.File(cache_path) as f:
        assert f.attrs['format_version'] == FORMAT_VERSION == 2
        stored = f['volumes/vol1.nii.gz'].attrs['checksum']
    assert stored == array_checksum(_volume(1)) and stored.startswith('blake2b:')
    assert verify_cache(cache_path) == []
    assert open_cache(cache_path, verify=True).read('vol1.nii.gz').attrs['checksum'] == stored
    assert main(['preprocess', 'verify', str(cache_path), '--no-progress']) == 0
    assert '3 of 3 volumes verified, 0 bad' in capsys.readouterr().out


@pytest.mark.parametrize('damage', ['undecodable', 'decodes_to_other_voxels'])
def test_flipped_bytes_in_a_chunk_are_found_and_named(cache_path, capsys, damage):
    if damage == 'undecodable':
        _flip(cache_path, 'vol1.nii.gz', 2, 4)  # blosc header: uncompressed size
    else:
        _flip(cache_path, 'vol1.nii.gz', 2, -100, 0x01)  # a voxel byte near the chunk's end
        data = open_cache(cache_path).read('vol1.nii.gz').array  # it decodes, silently wrong
        assert not np.array_equal(data, _volume(1))
    assert main(['preprocess', 'verify', str(cache_path), '--no-progress']) == 1
    captured = capsys.readouterr()
    assert captured.err.count('\n') == 1 and "volume 'vol1.nii.gz'" in captured.err
    assert str(cache_path) in captured.err and '2 of 3 volumes verified, 1 bad' in captured.out
    cache = open_cache(cache_path, verify=True)
    np.testing.assert_array_equal(cache.read('vol0.nii.gz').array, _volume(0))
    with pytest.raises(CacheCorruptError, match="volume 'vol1.nii.gz'") as caught:
        cache.read('vol1.nii.gz')
    assert caught.value.volume_id == 'vol1.nii.gz' and caught.value.path == cache_path
    with pytest.raises(CacheCorruptError, match="cache.h5: volume 'vol1.nii.gz'"):
        cache.read_crop('vol1.nii.gz', (0, 0, 0), (8, 8, 8))  # a box outside the damaged chunk
    if damage == 'undecodable':  # even without verify, a read names the volume, not just HDF5
        with pytest.raises(CacheCorruptError, match="volume 'vol1.nii.gz': unreadable voxels"):
            open_cache(cache_path).read('vol1.nii.gz')


def test_bench_reads_verify_checksums(cache_path, caplog):
    """Bench reads each volume whole once, so it checks every checksum: damage that still
    decodes stops the run naming the volume instead of scoring wrong voxels."""
    from benchmarks.runner import _open_cache

    np.testing.assert_array_equal(_open_cache(cache_path).read('vol1.nii.gz').array, _volume(1))
    _flip(cache_path, 'vol1.nii.gz', 2, -100, 0x01)
    with pytest.raises(CacheCorruptError, match="volume 'vol1.nii.gz': checksum mismatch"):
        _open_cache(cache_path).read('vol1.nii.gz')
    with h5py.File(cache_path, 'r+') as f:  # a format-1 cache: read, with a warning
        f.attrs['format_version'] = 1
    assert _open_cache(cache_path).read('vol0.nii.gz').array.shape == _volume(0).shape
    assert 'has no checksums (cache format 1)' in caplog.text


def test_a_cache_without_checksums_does_not_pass_verify(cache_path, capsys):
    with h5py.File(cache_path, 'r+') as f:  # what format_version 1 wrote
        f.attrs['format_version'] = 1
        for vid in f['ids'][()]:
            del f['volumes'][vid.decode()].attrs['checksum']
    np.testing.assert_array_equal(open_cache(cache_path).read('vol0.nii.gz').array, _volume(0))
    assert main(['preprocess', 'verify', str(cache_path), '--no-progress']) == 1
    err = capsys.readouterr().err
    assert err.count('no checksum (written before format_version 2)') == 3
    with pytest.raises(CacheCorruptError, match='no checksum'):
        open_cache(cache_path, verify=True).read('vol0.nii.gz')


def test_truncated_cache_file_is_named(cache_path):
    data = cache_path.read_bytes()
    cache_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheCorruptError, match='cache.h5: cannot be read as a volume cache') as e:
        open_cache(cache_path)
    assert e.value.volume_id is None
