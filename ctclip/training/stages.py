"""What differs between the stages: where the weights start and what unpaired images learn from.

Stage 1 trains the image tower and classifier on silver labels. Stage 2 starts from a stage-1
export (`train.init_from`) and, with `train.pseudo_labels: true`, gives every unpaired image the
stage-1 model's probabilities as its labels (computed once, saved next to the run, reused on resume).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ctclip.data.dataset import collate
from ctclip.data.sampling import shard
from ctcommon.atomic import atomic_open

_logger = logging.getLogger(__name__)

PSEUDO_FILE = 'pseudo_labels.npz'


def build_model(model_cfg: dict, init_from: str | None) -> torch.nn.Module:
    """The factory model, optionally initialised from an exported model folder (stage 1 -> 2)."""
    from ctclip.factory import create_model
    from ctclip.model import check_window
    from ctclip.serialization import read_config

    name = model_cfg.get('name')
    if not name:
        raise ValueError('model.name must name a model config (see ctclip.factory.list_models())')
    model = create_model(name, **(model_cfg.get('overrides') or {}))
    if init_from:
        path = Path(init_from)
        if not path.exists():
            raise FileNotFoundError(
                f'train.init_from {str(path)!r} does not exist (a stage-1 final/ folder)'
            )
        report = model.init_from(str(path), strict=False)
        saved_window = read_config(path).get('window')
        if saved_window and not model.config.get('window'):
            # stage 2 sees what stage 1 was trained on unless its config says otherwise
            check_window(saved_window, model.config)
            model.config['window'] = saved_window
        _logger.info(
            'Initialised from %s: %d tensors loaded, new: %s',
            path,
            len(report['loaded']),
            report['missing'][:10],
        )
    if model_cfg.get('grad_checkpointing'):
        setter = getattr(model, 'set_grad_checkpointing', None)
        if setter is None:
            raise ValueError(
                f'model.grad_checkpointing is on but {type(model).__name__} has no set_grad_checkpointing()'
            )
        setter(True)
    return model


@torch.no_grad()
def predict_labels(
    model: torch.nn.Module, dataset: Any, rows: np.ndarray, batch_size: int = 4
) -> np.ndarray:
    """sigmoid(image_logits) of the centre crops of `rows` of a training dataset."""
    was_training, train_flag = model.training, dataset.train
    device = (
        torch.device('cuda', torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device('cpu')
    )
    model.to(device).eval()  # DeepSpeed moves it to the same device afterwards
    dataset.train = False  # centre crops, no augmentation
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = collate([dataset[int(i)] for i in rows[start : start + batch_size]])
            logits = model(image=batch['image'].to(device))['image_logits']
            out.append(torch.sigmoid(logits.float()).cpu().numpy())
    finally:
        dataset.train = train_flag
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, dataset.table.labels.shape[1]), np.float32)


def _check_pseudo_labels(n_rows: int):
    """A `verify` that re-reads the saved pseudo-labels: both arrays, one row per image."""

    def verify(tmp: Path) -> None:
        with np.load(tmp) as saved:
            found = (len(saved['volume_id']), len(saved['probabilities']))
        if found != (n_rows, n_rows):
            raise OSError(f'{tmp}: wrote {found} rows of pseudo-labels, not {n_rows}')

    return verify


def attach_pseudo_labels(
    model: torch.nn.Module, dataset: Any, output_dir: Path, rank: int, world: int
) -> None:
    """Give the unpaired training images stage-1 pseudo-labels (collective over ranks)."""
    path = output_dir / PSEUDO_FILE
    unpaired = np.flatnonzero(~dataset.paired)
    n_labels = dataset.table.labels.shape[1]
    if not path.exists():
        mine = shard(len(unpaired), rank, world)
        part = (unpaired[mine], predict_labels(model, dataset, unpaired[mine]))
        parts = [part]
        if dist.is_initialized() and world > 1:
            parts = [None] * world
            dist.all_gather_object(parts, part)
        if rank == 0:
            rows = np.concatenate([p[0] for p in parts]).astype(np.int64)
            probs = np.concatenate([p[1] for p in parts]).astype(np.float32).reshape(-1, n_labels)
            ids = np.array([dataset.volume_ids[r] for r in rows], dtype=str)
            with atomic_open(path, 'wb', verify=_check_pseudo_labels(len(rows))) as f:
                np.savez(f, volume_id=ids, probabilities=probs)
            _logger.info(
                'Pseudo-labelled %d unpaired images with the stage-1 model -> %s', len(rows), path
            )
        if dist.is_initialized():
            dist.barrier()
    saved = np.load(path)
    lookup = dict(zip(saved['volume_id'].tolist(), saved['probabilities'], strict=False))
    pseudo = np.full((len(dataset), n_labels), -1.0, np.float32)
    for r in unpaired:
        if dataset.volume_ids[r] in lookup:
            pseudo[r] = lookup[dataset.volume_ids[r]]
    dataset.pseudo_labels = pseudo
