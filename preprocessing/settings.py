"""The typed `ctclip preprocess` settings: one dataclass per section, validated before any work.

A misspelt key (`chekcs.min_slices=8`, `checks.min_slice=8`) fails in one line naming the key, its
section and the closest valid name, instead of being ignored or ending in a TypeError traceback.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ctcommon.settings import FailureBudget, check_keys, from_mapping
from preprocessing.checks import CheckLimits
from preprocessing.recipes import Recipe

_logger = logging.getLogger(__name__)

VERSIONS = ('v2', 'v1')


@dataclass
class QcSettings:
    """The QC figure: how many volumes it shows."""

    samples: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 0:
            raise ValueError(f'qc.samples must be a non-negative integer, not {self.samples!r}')


@dataclass
class PreprocessSettings:
    """Everything a preprocess run reads (keys of the packaged `preprocess/default`)."""

    input: str | None = None
    out: str | None = None
    recipe: Any = 'li2025'
    recipe_overrides: dict = field(default_factory=dict)
    metadata: list = field(default_factory=list)
    prefer_version: str = 'v2'
    drop_no_chest: bool = True
    workers: int = 1
    shard: str | None = None
    failures: FailureBudget = field(default_factory=FailureBudget)
    limit: int | None = None
    radchest_spacing: float | None = None
    checks: CheckLimits = field(default_factory=CheckLimits)
    qc: QcSettings = field(default_factory=QcSettings)
    keep_parts: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.prefer_version not in VERSIONS:
            raise ValueError(
                f'prefer_version must be one of {VERSIONS}, not {self.prefer_version!r}'
            )
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f'workers must be a positive integer, not {self.workers!r}')
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 0
        ):
            raise ValueError(f'limit must be a non-negative integer or null, not {self.limit!r}')
        if not isinstance(self.recipe_overrides, Mapping):
            raise ValueError(
                f'recipe_overrides must be a mapping, not {type(self.recipe_overrides).__name__}'
            )
        valid = [f.name for f in dataclasses.fields(Recipe) if f.name != 'name']
        check_keys(self.recipe_overrides, valid, 'recipe_overrides')
        if isinstance(self.metadata, str):
            self.metadata = [self.metadata]


def load_settings(cfg: Mapping[str, Any]) -> PreprocessSettings:
    """Validate a resolved preprocess config; raises `ValueError` naming the first bad key."""
    return from_mapping(PreprocessSettings, cfg)
