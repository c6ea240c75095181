"""The one exception type of the pipeline: it names the stage, so the failures report can group them."""

from __future__ import annotations

STAGES = ('read', 'calibrate', 'check', 'resample', 'write')


class PreprocessError(Exception):
    """A volume that cannot be turned into a cache entry, with the stage where that was found."""

    def __init__(self, stage: str, reason: str):
        if stage not in STAGES:
            raise ValueError(f'stage must be one of {STAGES}, not {stage!r}')
        super().__init__(f'{stage}: {reason}')
        self.stage = stage
        self.reason = reason
