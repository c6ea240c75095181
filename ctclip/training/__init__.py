"""DeepSpeed training for every stage: `train(cfg) -> exported model folder`.

The library never imports the CLI; `ctclip train` resolves a YAML config and calls `train`.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from ctclip.config import merge

_logger = logging.getLogger(__name__)

TRAIN_DEFAULTS: dict[str, Any] = {
    # channels_last: the image enters in NDHWC layout and the 3D convolutions follow it (cuDNN's
    # tensor-core kernels may prefer it on GPUs; measured in benchmarks/perf/bench_gpu.py)
    'model': {'name': None, 'overrides': {}, 'grad_checkpointing': False, 'channels_last': False},
    'data': {'batch_size': 2, 'num_workers': 0},
    'loss': {'bce': {'weight': 1.0}},
    'optim': {
        'lr': 1e-3,
        'weight_decay': 0.01,
        'betas': [0.9, 0.999],
        'eps': 1e-8,
        'grad_clip': 1.0,
    },
    'schedule': {'warmup_steps': 0, 'min_lr_ratio': 0.0},
    'deepspeed': {'config': 'zero0', 'zero_stage': None, 'precision': 'fp32'},
    'train': {
        'steps': None,
        'epochs': None,
        'grad_accum': 1,
        'log_every': 10,
        'ckpt_every': 100,
        'keep_checkpoints': 2,
        'eval_every': 0,
        'eval_batch_size': 4,
        'zero_shot_templates': 'ctclip',
        'output_dir': None,
        'init_from': None,
        'pseudo_labels': False,
        'seed': 0,
        'resume': True,
        'stop_after': None,
        'progress': True,
        # cuDNN times its convolution algorithms on the first step and keeps the fastest; crops
        # have one fixed shape, so this pays off from the second step (GPU only)
        'cudnn_benchmark': True,
    },
}


def with_defaults(cfg: dict) -> dict:
    return merge(copy.deepcopy(TRAIN_DEFAULTS), cfg)


def train(cfg: dict) -> Path:
    """Run (or resume) one training stage and return its exported `final/` model folder.

    Resumes from `output_dir/checkpoints/latest` when present. Raises
    `ctclip.training.trainer.Interrupted` after checkpointing on SIGTERM/SIGUSR1.
    """
    from ctclip.training.trainer import Trainer

    return Trainer(with_defaults(cfg)).fit()
