"""Periodic validation during training: zero-shot and classifier-head AUROC on held-out patients."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ctclip.data.dataset import collate
from ctclip.data.sampling import shard
from ctclip.prompts import resolve_templates
from ctcommon import metrics
from llm_labeling.schema import FINDINGS

_logger = logging.getLogger(__name__)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of labels >= 0 (cut at 0.5; -1 and NaN rows are ignored); NaN with one class only."""
    labels = np.asarray(labels, dtype=np.float64)
    binary = np.where(labels >= 0, (labels > 0.5).astype(np.float64), np.nan)
    return metrics.auroc(scores, binary)


def macro_auroc(labels: np.ndarray, scores: np.ndarray) -> tuple[float, list[float]]:
    """Unweighted mean over the classes that have both positives and negatives."""
    per_class = [auroc(labels[:, c], scores[:, c]) for c in range(labels.shape[1])]
    valid = [v for v in per_class if not np.isnan(v)]
    return (float(np.mean(valid)) if valid else float('nan')), per_class


@torch.no_grad()
def _embed(
    module: Any, dataset: Any, rows: Sequence[int], batch_size: int, autocast: bool, n_batches: int
) -> dict[str, np.ndarray]:
    """Every rank runs `n_batches` forwards (ZeRO-3 gathers parameters collectively per forward);
    a rank whose shard is shorter repeats a row and drops the result."""
    feats, logits, index = [], [], []
    for b in range(n_batches):
        chunk = rows[b * batch_size : (b + 1) * batch_size]
        batch = collate([dataset[int(i)] for i in (chunk if len(chunk) else [0])])
        device_type = 'cuda' if torch.cuda.is_available() else 'cpu'
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            out = module(image=batch['image'].to(_device(module)))
        if not len(chunk):
            continue
        feats.append(out['image_features'].float().cpu().numpy())
        if out.get('image_logits') is not None:
            logits.append(out['image_logits'].float().cpu().numpy())
        index.append(batch['index'].numpy())
    return {
        'features': np.concatenate(feats) if feats else np.zeros((0, 0), np.float32),
        'logits': np.concatenate(logits) if logits else None,
        'index': np.concatenate(index) if index else np.zeros(0, np.int64),
    }


def _device(module: Any) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device('cpu')


def _gather(part: dict[str, Any]) -> list[dict[str, Any]]:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [part]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return parts


def _use_rank0_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), which the export saves.

    Each rank updates its running statistics from its own part of the batch; without this, the
    ranks would embed their shards with different models, and none of them the exported one.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def evaluate(
    module: Any,
    dataset: Any,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 4,
    templates: Any = 'ctclip',
    autocast: bool = False,
) -> dict[str, float]:
    """Zero-shot macro AUROC (and the classifier head's, when the model has one) on `dataset`.

    Collective: every rank embeds its shard and takes part in the text-tower forward, which
    ZeRO-3 needs; every rank returns the same numbers.
    """
    from ctclip.inference import zero_shot_scores

    was_training = module.training
    _use_rank0_buffers(module)
    module.eval()
    try:
        longest = -(-len(dataset) // world_size)
        rows = shard(len(dataset), rank, world_size)
        part = _embed(module, dataset, rows, batch_size, autocast, -(-longest // batch_size))
        parts = [p for p in _gather(part) if len(p['index'])]
        features = np.concatenate([p['features'] for p in parts])
        index = np.concatenate([p['index'] for p in parts])
        labels = dataset.table.labels[index]
        scores = np.asarray(
            zero_shot_scores(module, features, list(FINDINGS), resolve_templates(templates))
        )
        metrics: dict[str, float] = {}
        metrics['val/zero_shot_auroc'], per_class = macro_auroc(labels, scores)
        for name, value in zip(FINDINGS, per_class, strict=False):
            metrics[f'val/zero_shot_auroc/{name}'] = value
        if all(p['logits'] is not None for p in parts):
            logits = np.concatenate([p['logits'] for p in parts])
            metrics['val/head_auroc'], _ = macro_auroc(labels, logits)
    finally:
        module.train(was_training)
    return metrics
