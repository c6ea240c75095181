"""Resumable embedding of many volumes: chunks are saved as they finish, a rerun skips them.

Embedding 3,039 CT volumes is the slow part of a benchmark (minutes on a GPU, hours on a CPU);
a killed job restarts where it stopped. A chunk is reused only when the model fingerprint and its
volume ids match, so a retrained model never silently reuses old embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

_logger = logging.getLogger(__name__)


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """Hash of the model folder's file names, sizes and modification times (cheap, no reading)."""
    root = Path(model_dir)
    digest = hashlib.sha256(str(root.resolve()).encode())
    for path in sorted(p for p in root.rglob('*') if p.is_file()):
        stat = path.stat()
        digest.update(f'{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}'.encode())
    return digest.hexdigest()[:16]


def _save_npy(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f'.{path.stem}.tmp.npy')
    np.save(tmp, array)
    os.replace(tmp, path)


class EmbeddingStore:
    """Chunks `part_XXXXX.npy` + `part_XXXXX.json` (ids, fingerprint) under one folder."""

    def __init__(self, folder: str | os.PathLike, fingerprint: str, chunk_size: int = 64):
        if chunk_size < 1:
            raise ValueError(f'embedding chunk_size must be >= 1, not {chunk_size}')
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.chunk_size = chunk_size

    def _done(self, k: int, ids: Sequence[str]) -> np.ndarray | None:
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
            or len(array) != len(ids)
        ):
            return None
        return array

    def compute(
        self,
        ids: Sequence[str],
        embed: Callable[[list[str]], np.ndarray],
        desc: str = 'embedding',
    ) -> np.ndarray:
        """Embeddings of `ids` in order; `embed(chunk_ids) -> (len(chunk), E)` runs only for missing chunks."""
        from tqdm.auto import tqdm

        self.folder.mkdir(parents=True, exist_ok=True)
        parts, reused = [], 0
        starts = range(0, len(ids), self.chunk_size)
        for k, start in enumerate(tqdm(starts, desc=desc, unit='chunk')):
            chunk = list(ids[start : start + self.chunk_size])
            array = self._done(k, chunk)
            if array is None:
                array = np.asarray(embed(chunk), dtype=np.float32)
                if array.ndim != 2 or len(array) != len(chunk):
                    raise ValueError(
                        f'embedding must return ({len(chunk)}, E), not shape {array.shape}'
                    )
                _save_npy(array, self.folder / f'part_{k:05d}.npy')
                meta = {'fingerprint': self.fingerprint, 'ids': chunk}
                tmp = self.folder / f'.part_{k:05d}.json.tmp'
                tmp.write_text(json.dumps(meta), encoding='utf-8')
                os.replace(tmp, self.folder / f'part_{k:05d}.json')
            else:
                reused += 1
            parts.append(array)
        if reused:
            _logger.info('%s: reused %d of %d saved chunks', desc, reused, len(parts))
        if not parts:
            raise ValueError('nothing to embed: the id list is empty')
        return np.concatenate(parts)
