"""DeepSpeed training for every stage: `train(cfg) -> exported model folder`.

The library never imports the CLI; `ctclip train` resolves a YAML config and calls `train`.
The config is typed and validated first (`ctclip.training.settings.TrainConfig`), before any work.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from ctclip.training.settings import TRAIN_DEFAULTS, TrainConfig, train_config

_logger = logging.getLogger(__name__)

__all__ = ['TRAIN_DEFAULTS', 'TrainConfig', 'train', 'train_config', 'with_defaults']


def with_defaults(cfg: Mapping | TrainConfig) -> TrainConfig:
    """The typed config of `cfg` with every default filled in (unknown keys raise)."""
    return train_config(cfg)


def train(cfg: Mapping | TrainConfig) -> Path:
    """Run (or resume) one training stage and return its exported `final/` model folder.

    Resumes from `output_dir/checkpoints/latest` when present. Raises
    `ctclip.training.trainer.Interrupted` after checkpointing on SIGTERM/SIGUSR1.
    """
    from ctclip.training.trainer import Trainer

    return Trainer(train_config(cfg)).fit()
