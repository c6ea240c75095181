"""The learning-rate schedule and the per-step seeding that make a run resumable bit for bit."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

_logger = logging.getLogger(__name__)


def lr_lambda(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up to the base rate, then cosine decay to `min_ratio` of it at `total`."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def reseed(seed: int, step: int, micro: int, rank: int) -> None:
    """Dropout and other in-model randomness depend only on (seed, step, micro-batch, rank)."""
    torch.manual_seed((seed * 1_000_003 + step * 1_009 + micro * 101 + rank) % (2**63 - 1))
