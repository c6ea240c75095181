"""Cluster bootstrap over scans: real resampling, a fixed seed, 95% percentile intervals.

CT-CLIP's published script seeds a resampler and then never uses the resampled rows, so its
intervals collapse onto the point estimate. Here every draw picks scans with replacement (the
reconstructions of one scan share a report and labels, so they travel together), and each
metric is recomputed on the draw. A draw is stored as multiplicities (B, S): how many times
scan s was picked, which turns every metric into a weighted sum that numpy evaluates for all
draws at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BootstrapConfig:
    """How the intervals are drawn; stored in metrics.json so a reader can redo them."""

    n_draws: int = 1000
    seed: int = 0
    level: float = 0.95
    unit: str = 'scan'  # resample scans (the protocol) or single volumes

    def __post_init__(self) -> None:
        if self.n_draws < 0:
            raise ValueError(f'bootstrap n_draws must be >= 0, not {self.n_draws}')
        if not 0 < self.level < 1:
            raise ValueError(f'bootstrap level must be in (0, 1), not {self.level}')
        if self.unit not in ('scan', 'volume'):
            raise ValueError(f"bootstrap unit must be 'scan' or 'volume', not {self.unit!r}")

    def as_dict(self) -> dict:
        return {
            'n_draws': self.n_draws,
            'seed': self.seed,
            'level': self.level,
            'unit': self.unit,
            'interval': 'percentile',
        }


def unit_index(unit_ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Map each row to the index of its resampling unit (first-seen order)."""
    where: dict[str, int] = {}
    index = np.array([where.setdefault(u, len(where)) for u in unit_ids], dtype=np.int64)
    return index, list(where)


def draw_counts(n_units: int, n_draws: int, seed: int) -> np.ndarray:
    """(n_draws, n_units) multiplicities of `n_units` picks with replacement per draw."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_units, size=(n_draws, n_units))
    offsets = (np.arange(n_draws) * n_units)[:, None]
    counts = np.bincount((picks + offsets).ravel(), minlength=n_draws * n_units)
    return counts.reshape(n_draws, n_units).astype(np.float64)


def interval(draws: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, ignoring draws where the metric was undefined (NaN)."""
    alpha = (1.0 - level) / 2.0
    draws = np.asarray(draws, dtype=np.float64)
    shape = draws.shape[1:]
    flat = draws.reshape(draws.shape[0], int(np.prod(shape)))  # n_draws may be 0: no interval
    lo = np.full(flat.shape[1], np.nan)
    hi = np.full(flat.shape[1], np.nan)
    has = (~np.isnan(flat)).any(axis=0)
    if np.any(has):
        q = np.nanpercentile(flat[:, has], [100 * alpha, 100 * (1 - alpha)], axis=0)
        lo[has], hi[has] = q[0], q[1]
    return lo.reshape(shape), hi.reshape(shape)


def weighted_mean_draws(
    values: np.ndarray, valid: np.ndarray, index: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Per-draw mean of per-row `values` over `valid` rows, rows weighted by their unit's count."""
    n_units = counts.shape[1]
    sums = np.bincount(index, weights=np.where(valid, values, 0.0), minlength=n_units)
    num = np.bincount(index, weights=valid.astype(np.float64), minlength=n_units)
    den = counts @ num
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(den > 0, (counts @ sums) / np.where(den > 0, den, 1), np.nan)


def summarise(point: float, draws: np.ndarray, level: float) -> dict:
    """One headline number: the estimate, its interval and how many draws defined it."""
    lo, hi = interval(np.asarray(draws, dtype=np.float64).reshape(-1, 1), level)
    return {
        'value': _clean(point),
        'ci_low': _clean(lo[0]),
        'ci_high': _clean(hi[0]),
        'n_draws_defined': int(np.sum(~np.isnan(draws))),
    }


def _clean(x: float) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x
