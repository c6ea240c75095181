"""Report->volume Recall@K and CT-CLIP's volume->volume "MAP@K", chunked and vectorised.

The reference scripts loop in Python over every pair (hours for 3,039 volumes); here one chunk of
queries at a time is a matrix product, so memory stays at chunk x N.

Our default is the corrected protocol. `RetrievalOptions.reference()` reproduces CT-CLIP's
scripts exactly, quirk by quirk, for comparison with published tables:
- `exclude='none'`: the query volume stays among the candidates and retrieves itself first;
- `negative_queries='zero'`: a query with no positive label scores 0 instead of being skipped
  (its Jaccard overlap with any candidate is 0 by construction, so it only lowers the mean);
- `cumulative_k=True`: the reference appends every K's per-query values to one list, so its
  MAP@K is the running mean over all K up to this one;
- `ties='index'`: equal similarities rank by position (Python's stable sort); our default counts
  ties against the query (the pessimistic rank), so a constant model cannot look good. This
  applies to Recall@K; MAP@K's top K always breaks ties by position, as the reference does.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace

import numpy as np

_logger = logging.getLogger(__name__)

RECALL_KS = (5, 10, 50, 100)
MAP_KS = (1, 5, 10, 50)
_CHOICES = {
    'exclude': ('self', 'scan', 'none'),
    'negative_queries': ('skip', 'zero'),
    'ties': ('pessimistic', 'index'),
    'report_match': ('volume', 'scan'),
}


@dataclass(frozen=True)
class RetrievalOptions:
    """Retrieval conventions; every field is written to metrics.json."""

    recall_ks: tuple[int, ...] = RECALL_KS
    map_ks: tuple[int, ...] = MAP_KS
    exclude: str = 'self'
    negative_queries: str = 'skip'
    cumulative_k: bool = False
    ties: str = 'pessimistic'
    report_match: str = 'volume'  # 'scan': any reconstruction of the report's scan is a hit
    chunk_size: int = 512

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f'retrieval {name} must be one of {choices}, not {value!r}')
        for name in ('recall_ks', 'map_ks'):
            ks = tuple(getattr(self, name))
            if not ks or any(int(k) < 1 for k in ks) or list(ks) != sorted(ks):
                raise ValueError(f'retrieval {name} must be increasing positive integers, not {ks}')
            object.__setattr__(self, name, tuple(int(k) for k in ks))
        if self.chunk_size < 1:
            raise ValueError(f'retrieval chunk_size must be >= 1, not {self.chunk_size}')

    @classmethod
    def reference(cls, **overrides) -> RetrievalOptions:
        """CT-CLIP's scripts, quirks included."""
        base = cls(exclude='none', negative_queries='zero', cumulative_k=True, ties='index')
        return replace(base, **overrides)

    @property
    def is_reference(self) -> bool:
        ref = RetrievalOptions.reference()
        keys = ('exclude', 'negative_queries', 'cumulative_k', 'ties', 'report_match')
        return all(getattr(self, k) == getattr(ref, k) for k in keys)

    def as_dict(self) -> dict:
        out = asdict(self)
        out['protocol'] = 'ctclip-reference' if self.is_reference else 'corrected'
        return out


def l2_normalise(x: np.ndarray, what: str = 'embeddings') -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f'{what} must be a 2-D array (N, E), not shape {x.shape}')
    if not np.all(np.isfinite(x)):
        raise ValueError(f'{what} must be finite; found NaN or inf')
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _positive_rank(sim: np.ndarray, pos: np.ndarray, ties: str) -> np.ndarray:
    """0-based rank of the best-ranked positive among the negatives of each row."""
    best = np.max(np.where(pos, sim, -np.inf), axis=1, keepdims=True)
    neg = ~pos
    if ties == 'pessimistic':
        return np.sum(neg & (sim >= best), axis=1)
    first = np.argmax(pos & (sim == best), axis=1)[:, None]
    cols = np.arange(sim.shape[1])[None]
    return np.sum(neg & (sim > best), axis=1) + np.sum(neg & (sim == best) & (cols < first), axis=1)


def report_ranks(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    options: RetrievalOptions = RetrievalOptions(),
    units: np.ndarray | None = None,
) -> np.ndarray:
    """Rank of each report's own volume among all volumes (row i of text belongs to row i of image).

    Args:
        units: (N,) scan index of each row, needed when `report_match='scan'`.
    """
    img = l2_normalise(image_emb, 'image embeddings')
    txt = l2_normalise(text_emb, 'text embeddings')
    if img.shape != txt.shape:
        raise ValueError(
            f'image and text embeddings must have the same shape, not {img.shape} and {txt.shape}'
        )
    if options.report_match == 'scan' and units is None:
        raise ValueError("report_match='scan' needs the scan of every row (units)")
    ranks = np.empty(len(txt), dtype=np.int64)
    cols = np.arange(len(img))
    for sl in _chunks(len(txt), options.chunk_size):
        sim = txt[sl] @ img.T
        rows = cols[sl]
        if options.report_match == 'scan':
            pos = units[rows][:, None] == units[None, :]
        else:
            pos = rows[:, None] == cols[None, :]
        ranks[sl] = _positive_rank(sim, pos, options.ties)
    return ranks


def recall_at_k(ranks: np.ndarray, ks: tuple[int, ...] = RECALL_KS) -> dict[int, float]:
    return {k: float(np.mean(ranks < k)) for k in ks}


def _jaccard(lab_q: np.ndarray, lab_c: np.ndarray) -> np.ndarray:
    """|both positive| / (|both| + |exactly one positive, other negative|) for every pair."""
    pq, zq = (lab_q == 1).astype(np.float32), (lab_q == 0).astype(np.float32)
    pc, zc = (lab_c == 1).astype(np.float32), (lab_c == 0).astype(np.float32)
    both = pq @ pc.T
    one = pq @ zc.T + zq @ pc.T
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(both + one > 0, both / np.where(both + one > 0, both + one, 1), 0.0)


def volume_map_values(
    image_emb: np.ndarray,
    labels: np.ndarray,
    options: RetrievalOptions = RetrievalOptions(),
    units: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query MAP@K values (N, len(map_ks)) and which queries count (N,).

    Candidates are the volumes with at least one positive label; each retrieved candidate scores
    its Jaccard overlap with the query's label set; a query's value is the mean over its top K.
    """
    img = l2_normalise(image_emb, 'image embeddings')
    labels = np.asarray(labels, dtype=np.float64)
    if labels.shape[0] != len(img):
        raise ValueError(f'labels must have one row per volume ({len(img)}), not {labels.shape[0]}')
    if options.exclude == 'scan' and units is None:
        raise ValueError("exclude='scan' needs the scan of every row (units)")
    cand = np.flatnonzero((labels == 1).any(axis=1))
    if len(cand) == 0:
        raise ValueError('volume->volume retrieval needs at least one volume with a positive label')
    ks = np.array(options.map_ks)
    values = np.zeros((len(img), len(ks)))
    for sl in _chunks(len(img), options.chunk_size):
        rows = np.arange(len(img))[sl]
        sim = img[sl] @ img[cand].T
        if options.exclude == 'self':
            sim[rows[:, None] == cand[None, :]] = -np.inf
        elif options.exclude == 'scan':
            sim[units[rows][:, None] == units[cand][None, :]] = -np.inf
        order = np.argsort(-sim, axis=1, kind='stable')[:, : ks[-1]]
        usable = np.isfinite(np.take_along_axis(sim, order, axis=1))
        jac = np.take_along_axis(_jaccard(labels[sl], labels[cand]), order, axis=1) * usable
        csum, cnt = np.cumsum(jac, axis=1), np.cumsum(usable, axis=1)
        at = np.minimum(ks, order.shape[1]) - 1
        with np.errstate(invalid='ignore', divide='ignore'):
            values[sl] = np.where(cnt[:, at] > 0, csum[:, at] / np.maximum(cnt[:, at], 1), 0.0)
    if options.cumulative_k:
        values = np.cumsum(values, axis=1) / np.arange(1, len(ks) + 1)
    valid = np.ones(len(img), dtype=bool)
    if options.negative_queries == 'skip':
        valid = (labels == 1).any(axis=1)
    return values, valid


def volume_map_at_k(
    image_emb: np.ndarray,
    labels: np.ndarray,
    options: RetrievalOptions = RetrievalOptions(),
    units: np.ndarray | None = None,
) -> dict[int, float]:
    values, valid = volume_map_values(image_emb, labels, options, units)
    if not valid.any():
        return {k: float('nan') for k in options.map_ks}
    return {k: float(values[valid, j].mean()) for j, k in enumerate(options.map_ks)}
