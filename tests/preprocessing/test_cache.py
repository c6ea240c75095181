import multiprocessing
import pickle

import h5py
import numpy as np
import pytest

from preprocessing.cache import CacheWriter, merge_caches, open_cache, write_single_volume
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
        assert ds.dtype == np.int16 and ds.chunks == (14, 112, 112)
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
