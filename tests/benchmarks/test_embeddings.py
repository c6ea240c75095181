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
