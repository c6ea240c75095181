"""Speed of the scoring layer at CT-RATE validation size, against naive per-draw loops.

Target (issue 6): 3,039 volumes x 18 classes with 1,000 bootstrap draws, plus both retrievals
over 3,039 volumes, in under 30 s. The baselines are what the reference scripts do: one sklearn
call per draw and class, and one similarity sort per query; they run on a subset of draws or
queries and are extrapolated linearly (stated in the notes).
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.perf.common import Row

N_VOLUMES, N_SCANS, N_CLASSES, EMBED_DIM = 3039, 1564, 18, 512
TARGET_S = 30.0


def _data(n_volumes: int, n_scans: int, seed: int = 0):
    """CT-RATE-shaped data: ~2 reconstructions per scan sharing labels; informative scores."""
    rng = np.random.default_rng(seed)
    scan_of = np.sort(np.r_[np.arange(n_scans), rng.integers(0, n_scans, n_volumes - n_scans)])
    recon = np.zeros(n_volumes, dtype=int)
    for k in range(1, n_volumes):
        recon[k] = recon[k - 1] + 1 if scan_of[k] == scan_of[k - 1] else 0
    ids = [f'valid_{s}_a_{r + 1}.nii.gz' for s, r in zip(scan_of, recon, strict=True)]
    prevalence = rng.uniform(0.07, 0.45, N_CLASSES)
    labels = (rng.random((n_scans, N_CLASSES)) < prevalence).astype(float)[scan_of]
    scores = np.clip(0.25 * labels + 0.75 * rng.random(labels.shape), 0, 1)
    image = rng.normal(size=(n_volumes, EMBED_DIM)).astype(np.float32)
    image += labels @ rng.normal(size=(N_CLASSES, EMBED_DIM)).astype(np.float32)
    text = image + 2.0 * rng.normal(size=image.shape).astype(np.float32)
    return ids, scan_of, labels, scores, image, text


def _ours(ids, labels, scores, image, text, n_draws: int) -> tuple[float, float]:
    from benchmarks.bootstrap import BootstrapConfig
    from benchmarks.scoring import score, score_retrieval
    from benchmarks.tables import Table

    cols = [f'c{j}' for j in range(N_CLASSES)]
    boot = BootstrapConfig(n_draws=n_draws)
    start = time.perf_counter()
    score(Table(ids, cols, scores), Table(ids, cols, labels), bootstrap=boot)
    t_cls = time.perf_counter() - start
    start = time.perf_counter()
    score_retrieval(image, text, labels, ids, bootstrap=boot)
    return t_cls, time.perf_counter() - start


def _naive_bootstrap(scan_of, labels, scores, n_draws: int) -> float:
    """Per draw and class: resample scans, sklearn AUROC, the threshold rule, sklearn metrics."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    n_scans = scan_of.max() + 1
    rows_of = [np.flatnonzero(scan_of == s) for s in range(n_scans)]
    grid = np.linspace(0, 1, 100)
    start = time.perf_counter()
    for _ in range(n_draws):
        rows = np.concatenate([rows_of[s] for s in rng.integers(0, n_scans, n_scans)])
        for c in range(N_CLASSES):
            y, s = labels[rows, c], scores[rows, c]
            roc_auc_score(y, s)
            pred = s[None] > grid[:, None]
            tpr = (pred & (y == 1)).sum(1) / max((y == 1).sum(), 1)
            fpr = (pred & (y == 0)).sum(1) / max((y == 0).sum(), 1)
            dist = np.sqrt((1 - tpr) ** 2 + fpr**2)
            t = grid[len(grid) - 1 - np.argmin(dist[::-1])]
            p = (s > t).astype(float)
            f1_score(y, p, average='weighted')
            f1_score(y, p, zero_division=0)
            accuracy_score(y, p)
            precision_score(y, p, zero_division=0)
    return time.perf_counter() - start


def _naive_retrieval(labels, image, text, n_queries: int) -> float:
    """Per query: cosine to every volume, a full sort, Jaccard of each top-50 hit in a loop."""
    norm = image / np.linalg.norm(image, axis=1, keepdims=True)
    tnorm = text / np.linalg.norm(text, axis=1, keepdims=True)
    cand = np.flatnonzero(labels.sum(1) > 0)
    start = time.perf_counter()
    for i in range(n_queries):
        order = np.argsort(-(tnorm[i] @ norm.T), kind='stable')
        _ = i in order[:100]
        top = cand[np.argsort(-(norm[i] @ norm[cand].T), kind='stable')[:50]]
        for j in top:
            both = np.sum((labels[i] == 1) & (labels[j] == 1))
            one = np.sum(labels[i] != labels[j])
            _ = both / max(both + one, 1)
    return time.perf_counter() - start


def run(quick: bool = False) -> list[Row]:
    n_volumes, n_scans = (600, 310) if quick else (N_VOLUMES, N_SCANS)
    n_draws = 100 if quick else 1000
    ids, scan_of, labels, scores, image, text = _data(n_volumes, n_scans)
    t_cls, t_ret = _ours(ids, labels, scores, image, text, n_draws)
    sub_draws, sub_queries = (5, 50) if quick else (20, 200)
    base_cls = _naive_bootstrap(scan_of, labels, scores, sub_draws) * n_draws / sub_draws
    base_ret = _naive_retrieval(labels, image, text, sub_queries) * n_volumes / sub_queries
    size = f'{n_volumes} vols x {N_CLASSES} classes, {n_draws} draws'
    total = t_cls + t_ret
    return [
        Row(
            'scoring',
            f'classification + bootstrap ({size})',
            t_cls,
            's',
            base_cls,
            'per-draw sklearn loop',
            base_cls / t_cls,
            notes=f'baseline timed on {sub_draws} draws, scaled to {n_draws}',
        ),
        Row(
            'scoring',
            f'both retrievals + bootstrap ({n_volumes} vols)',
            t_ret,
            's',
            base_ret,
            'per-query sort loop',
            base_ret / t_ret,
            notes=f'baseline timed on {sub_queries} queries, scaled to {n_volumes}',
        ),
        Row(
            'scoring',
            f'total ({size} + retrievals)',
            total,
            's',
            TARGET_S,
            'issue target',
            TARGET_S / total,
            target='< 30 s',
            target_ratio=1.0,
        ),
    ]
