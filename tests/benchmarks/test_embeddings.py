"""The embedding store resumes after a crash and never reuses another model's embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.embeddings import EmbeddingStore, model_fingerprint


def test_resume_after_failure_and_fingerprint(tmp_path):
    ids = [f'v{i}' for i in range(10)]
    calls = []

    def embed(chunk):
        calls.append(list(chunk))
        if len(calls) == 3 and not getattr(embed, 'recovered', False):
            raise RuntimeError('killed')
        return np.array([[float(i[1:]), 1.0] for i in chunk])

    store = EmbeddingStore(tmp_path / 'emb', 'model-a', chunk_size=4)
    with pytest.raises(RuntimeError):
        store.compute(ids, embed)
    embed.recovered = True
    calls.clear()
    out = store.compute(ids, embed)
    assert out[:, 0].tolist() == list(range(10))
    assert calls == [ids[8:]]  # only the chunk that never finished
    calls.clear()
    EmbeddingStore(tmp_path / 'emb', 'model-b', chunk_size=4).compute(ids, embed)
    assert len(calls) == 3  # another model: everything recomputed


def test_fingerprint_changes_with_files(tmp_path):
    (tmp_path / 'config.json').write_text('{}', encoding='utf-8')
    before = model_fingerprint(tmp_path)
    (tmp_path / 'model.safetensors').write_bytes(b'x')
    assert model_fingerprint(tmp_path) != before


def _write_cache(path, seed: int, ids=('v0', 'v1', 'v2', 'v3', 'v4')):
    from preprocessing.cache import CacheWriter
    from preprocessing.recipes import get_recipe

    recipe = get_recipe('small').replace(
        shape_zyx=(8, 16, 16), train_crop_zyx=None, chunks_zyx=(8, 16, 16)
    )
    rng = np.random.default_rng(seed)
    with CacheWriter(path, recipe) as writer:
        for vid in ids:
            volume = (rng.normal(size=(8, 16, 16)) * 300 - 500).astype(np.int16)
            writer.write(vid, volume, {'source_sha256': 'same-source'})
    return path


def _counting_embed(calls):
    def embed(chunk):
        calls.extend(chunk)
        return np.ones((len(chunk), 2))

    return embed


def test_another_cache_with_the_same_ids_is_recomputed(tmp_path):
    """Item 3 of issue 16: the data is part of the key, not only the model."""
    from benchmarks.embeddings import volume_keys
    from preprocessing.cache import open_cache

    first = open_cache(_write_cache(tmp_path / 'a.h5', seed=0))
    other = open_cache(_write_cache(tmp_path / 'b.h5', seed=1))
    ids, calls = first.ids(), []
    store = EmbeddingStore(tmp_path / 'emb', 'model-a', chunk_size=2)
    store.compute(ids, _counting_embed(calls), keys=lambda c: volume_keys(first, c))
    assert calls == ids
    calls.clear()
    store.compute(ids, _counting_embed(calls), keys=lambda c: volume_keys(first, c))
    assert calls == []  # same model, same data: every chunk reused
    store.compute(ids, _counting_embed(calls), keys=lambda c: volume_keys(other, c))
    assert calls == ids  # same ids, other voxels: everything recomputed


def test_another_crop_or_window_is_recomputed(tmp_path):
    from benchmarks.runner import embedding_store
    from benchmarks.settings import with_defaults
    from preprocessing.cache import open_cache

    model = tmp_path / 'model'
    model.mkdir()
    (model / 'config.json').write_text('{"embed_dim": 2}', encoding='utf-8')
    cache = open_cache(_write_cache(tmp_path / 'a.h5', seed=0))
    ids, calls = cache.ids(), []

    def run(crop, window='w1'):
        cfg = with_defaults({'model': str(model), 'embed': {'chunk_size': 2, 'crop_zyx': crop}})
        embedding_store(cfg, cache, window, tmp_path / 'out').compute(ids, _counting_embed(calls))
        done = list(calls)
        calls.clear()
        return done

    assert run([8, 16, 16]) == ids
    assert run([8, 16, 16]) == []
    assert run([8, 8, 8]) == ids  # another crop
    assert run([8, 8, 8], window='w2') == ids  # another window


def test_volume_key_without_checksum_hashes_the_voxels(tmp_path):
    """Caches written before per-volume checksums are still keyed on their content."""
    import h5py

    from benchmarks.embeddings import volume_key
    from preprocessing.cache import open_cache

    path = _write_cache(tmp_path / 'a.h5', seed=0, ids=('v0',))
    with h5py.File(path, 'r+') as f:
        for ds in f['volumes'].values():
            if 'checksum' in ds.attrs:
                del ds.attrs['checksum']
    with open_cache(path) as cache:
        before = volume_key(cache, 'v0')
    with h5py.File(path, 'r+') as f:
        f['volumes/v0'][0, 0, 0] += 1  # the same source hash and recipe, one voxel changed
    with open_cache(path) as cache:
        assert volume_key(cache, 'v0') != before


def test_model_fingerprint_is_the_content(tmp_path):
    import os
    import shutil

    a = tmp_path / 'a'
    a.mkdir()
    (a / 'config.json').write_text('{}', encoding='utf-8')
    weights = a / 'model.safetensors'
    weights.write_bytes(b'1234')
    shutil.copytree(a, tmp_path / 'copy')  # a copy elsewhere is the same model
    assert model_fingerprint(tmp_path / 'copy') == model_fingerprint(a)
    stat = weights.stat()
    before = model_fingerprint(a)
    weights.write_bytes(b'4321')  # same size, same mtime: new weights all the same
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert model_fingerprint(a) != before
