"""Resumable embedding of many volumes: chunks are saved as they finish, a rerun skips them.

Embedding 3,039 CT volumes is the slow part of a benchmark (minutes on a GPU, hours on a CPU);
a killed job restarts where it stopped. A chunk is reused only when everything that decides its
numbers is unchanged, each keyed on content: the model (a hash of its files), the crop and window
(`embedding_fingerprint`), and the volumes (their ids and per-volume checksums, `volume_keys`). So
a retrained model, another cache or another crop written into the same folder is recomputed, never
silently reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ctcommon.atomic import atomic_open, write_json

_logger = logging.getLogger(__name__)


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """Hash of the model folder's file names and bytes (weights and config).

    Content, not modification times: a copied model still matches, and weights rewritten within
    one clock tick do not. Reading the weights costs about a second per GB, little next to
    embedding a cohort.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError(f'Model folder {str(root)!r} does not exist')
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob('*') if p.is_file()):
        digest.update(f'{path.relative_to(root).as_posix()}\0'.encode())
        with path.open('rb') as f:
            digest.update(hashlib.file_digest(f, 'sha256').digest())
    return digest.hexdigest()[:16]


def embedding_fingerprint(model: str, crop_zyx: Sequence[int], window: object) -> str:
    """Everything but the volumes that decides an embedding: model hash, crop and input window."""
    spec = {'model': model, 'crop_zyx': [int(v) for v in crop_zyx], 'window': window}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def volume_key(cache, volume_id: str) -> str:
    """The content key of one cached volume: its `checksum` attribute, written at cache time.

    A cache written before checksums existed falls back to its source hash, recipe hash, shape
    and the array's bytes (a full read, so only such caches pay for it).
    """
    attrs = cache.attrs(volume_id)
    checksum = attrs.get('checksum')
    if checksum:
        return str(checksum)
    shape = cache.shape(volume_id)
    array = np.ascontiguousarray(cache.read_crop(volume_id, (0, 0, 0), shape))
    digest = hashlib.sha256()
    for name in ('source_sha256', 'recipe_hash'):
        digest.update(f'{name}={attrs.get(name, "")}\0'.encode())
    digest.update(f'{array.dtype.str}{array.shape}\0'.encode())
    digest.update(array.tobytes())
    return 'sha256-data:' + digest.hexdigest()


def volume_keys(cache, volume_ids: Sequence[str]) -> list[str]:
    return [volume_key(cache, v) for v in volume_ids]


def _save_npy(array: np.ndarray, path: Path) -> None:
    def verify(tmp: Path) -> None:
        if np.load(tmp, mmap_mode='r').shape != array.shape:
            raise OSError(f'{tmp}: the saved array is not {array.shape}')

    with atomic_open(path, 'wb', verify=verify) as f:
        np.save(f, array)


class EmbeddingStore:
    """Chunks `part_XXXXX.npy` + `part_XXXXX.json` (ids, volume keys, fingerprint) under one folder.

    `keys(chunk_ids)`, when given, returns a content key per volume; a chunk is reused only when
    its saved keys are the same, so another cache with the same ids is recomputed.
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: str, chunk_size: int = 64):
        if chunk_size < 1:
            raise ValueError(f'embedding chunk_size must be >= 1, not {chunk_size}')
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.chunk_size = chunk_size

    def _done(self, k: int, ids: Sequence[str], keys: list[str] | None = None) -> np.ndarray | None:
        meta, data = self.folder / f'part_{k:05d}.json', self.folder / f'part_{k:05d}.npy'
        if not (meta.is_file() and data.is_file()):
            return None
        try:
            info = json.loads(meta.read_text(encoding='utf-8'))
            array = np.load(data)
        except (OSError, ValueError):
            return None
        if (
            info.get('fingerprint') != self.fingerprint
            or info.get('ids') != list(ids)
            or info.get('keys') != keys
            or len(array) != len(ids)
        ):
            return None
        return array

    def compute(
        self,
        ids: Sequence[str],
        embed: Callable[[list[str]], np.ndarray],
        desc: str = 'embedding',
        keys: Callable[[list[str]], list[str]] | None = None,
    ) -> np.ndarray:
        """Embeddings of `ids` in order; `embed(chunk_ids) -> (len(chunk), E)` runs only for
        missing or stale chunks (`keys(chunk_ids)`: a content key per volume)."""
        from tqdm.auto import tqdm

        self.folder.mkdir(parents=True, exist_ok=True)
        parts, reused = [], 0
        starts = range(0, len(ids), self.chunk_size)
        for k, start in enumerate(tqdm(starts, desc=desc, unit='chunk')):
            chunk = list(ids[start : start + self.chunk_size])
            chunk_keys = [str(v) for v in keys(chunk)] if keys is not None else None
            array = self._done(k, chunk, chunk_keys)
            if array is None:
                array = np.asarray(embed(chunk), dtype=np.float32)
                if array.ndim != 2 or len(array) != len(chunk):
                    raise ValueError(
                        f'embedding must return ({len(chunk)}, E), not shape {array.shape}'
                    )
                # the old record goes first: a crash between the two writes must not pair the
                # new array with the old keys
                (self.folder / f'part_{k:05d}.json').unlink(missing_ok=True)
                _save_npy(array, self.folder / f'part_{k:05d}.npy')
                meta = {'fingerprint': self.fingerprint, 'ids': chunk, 'keys': chunk_keys}
                write_json(self.folder / f'part_{k:05d}.json', meta, newline=False, indent=None)
            else:
                reused += 1
            parts.append(array)
        if reused:
            _logger.info('%s: reused %d of %d saved chunks', desc, reused, len(parts))
        if not parts:
            raise ValueError('nothing to embed: the id list is empty')
        return np.concatenate(parts)
