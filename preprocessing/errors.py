"""The one exception type of the pipeline: it names the stage, so the failures report can group them."""

from __future__ import annotations

from pathlib import Path

STAGES = ('read', 'calibrate', 'check', 'resample', 'write')


class PreprocessError(Exception):
    """A volume that cannot be turned into a cache entry, with the stage where that was found."""

    def __init__(self, stage: str, reason: str):
        if stage not in STAGES:
            raise ValueError(f'stage must be one of {STAGES}, not {stage!r}')
        super().__init__(f'{stage}: {reason}')
        self.stage = stage
        self.reason = reason


class CacheCorruptError(ValueError):
    """A cache file or one of its volumes that cannot be trusted: readers show it as one line.

    ``volume_id`` is None when the file as a whole is unreadable (truncated, not HDF5). A
    ValueError, so callers that refuse bad caches with `except ValueError` keep doing so.
    """

    def __init__(self, path: str | Path, volume_id: str | None, reason: str):
        self.path = Path(path)
        self.volume_id = volume_id
        self.reason = reason
        where = f'{self.path}' if volume_id is None else f'{self.path}: volume {volume_id!r}'
        super().__init__(f'{where}: {reason}')

    def __reduce__(self):
        return (type(self), (self.path, self.volume_id, self.reason))
