"""Patient-level splits, limited-pairing plans and a step-addressable batch sampler.

Every random choice here is a pure function of (seed, epoch, index), so a run resumed at step s
sees exactly the batches, pairings and crops an uninterrupted run sees, on any number of ranks.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

_logger = logging.getLogger(__name__)


def patient_fraction_split(patients: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask holding out about `fraction` of the PATIENTS (stable under reordering)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f'Held-out fraction must be in [0, 1), not {fraction}')
    threshold = int(fraction * 2**32)
    return np.array([zlib.crc32(f'{seed}:{p}'.encode()) < threshold for p in patients], dtype=bool)


def select_split(
    splits: Sequence[str], patients: Sequence[str], values: Sequence[str] | str
) -> np.ndarray:
    """Mask of volumes whose split is in `values`; refuses a patient that spans two splits."""
    wanted = {values} if isinstance(values, str) else set(values)
    mask = np.array([s in wanted for s in splits], dtype=bool)
    inside = {p for p, m in zip(patients, mask, strict=False) if m}
    leaked = sorted(p for p, m in zip(patients, mask, strict=False) if not m and p in inside)
    if leaked:
        raise ValueError(
            f'Patients {leaked[:5]} have volumes both inside and outside split {sorted(wanted)}'
        )
    return mask


def paired_plan(patients: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Which studies keep their image-report pairing (a fixed set, chosen by patient).

    Limited pairing means the same studies stay paired for the whole run; the others contribute
    images and reports only separately.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f'data.paired_fraction must be in [0, 1], not {fraction}')
    if fraction >= 1.0:
        return np.ones(len(patients), dtype=bool)
    unique = sorted(set(patients))
    rng = np.random.default_rng([seed, 7919])
    chosen = set(np.asarray(unique)[rng.permutation(len(unique))[: round(fraction * len(unique))]])
    if fraction > 0 and not chosen and unique:
        chosen = {unique[0]}
    return np.array([p in chosen for p in patients], dtype=bool)


def sample_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator for one sample's crop, augmentation and unpaired partner."""
    return np.random.default_rng([seed, epoch, index, stream])


class StepSampler:
    """Yields this rank's micro-batches of `(epoch, index)` keys, step by step, from `start_step`.

    Global step s covers `world * micro * accum` samples of one epoch permutation; micro-batch a
    of rank r takes slot `(a * world + r)`, so 1 rank with accumulation A sees the same samples
    per step as A ranks without it.
    """

    def __init__(
        self,
        n: int,
        micro_batch: int,
        world_size: int = 1,
        rank: int = 0,
        grad_accum: int = 1,
        seed: int = 0,
        total_steps: int = 1,
        start_step: int = 0,
    ):
        self.n, self.micro, self.world, self.rank = n, micro_batch, world_size, rank
        self.accum, self.seed, self.total_steps, self.start_step = (
            grad_accum,
            seed,
            total_steps,
            start_step,
        )
        if self.steps_per_epoch < 1:
            raise ValueError(
                f'The training set ({n} volumes) must hold at least one global batch of '
                f'{self.global_batch} (micro {micro_batch} x accumulation {grad_accum} x {world_size} ranks)'
            )

    @property
    def global_batch(self) -> int:
        return self.micro * self.accum * self.world

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 104729]).permutation(self.n)

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0) * self.accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm, perm_epoch = None, -1
        for step in range(self.start_step, self.total_steps):
            epoch, within = divmod(step, self.steps_per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = self.permutation(epoch), epoch
            base = within * self.global_batch
            for a in range(self.accum):
                start = base + (a * self.world + self.rank) * self.micro
                yield [(epoch, int(i)) for i in perm[start : start + self.micro]]


def shard(n: int, rank: int, world_size: int) -> np.ndarray:
    """Contiguous evaluation shard of range(n) for one rank (ranks may differ by one item)."""
    return np.array_split(np.arange(n), world_size)[rank]
