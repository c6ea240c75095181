"""DeepSpeed checkpoints for exact resume, signal-triggered saves, and the consolidated export.

A checkpoint holds DeepSpeed's own state (module, optimizer, scheduler, ZeRO shards) plus the
step and the settings that fix the data order; everything random in a run is a function of
(seed, step), so restoring the step restores the data order, crops, pairing and dropout too.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ctcommon.atomic import atomic_path, write_text

_logger = logging.getLogger(__name__)

LATEST = 'latest'
TAG_PREFIX = 'step_'
STAGE_FILE = 'ctclip_zero.json'  # the ZeRO stage a checkpoint's optimizer state was written with
# Settings that must not change across a resume: they define which samples each step sees.
ORDER_KEYS = ('seed', 'global_batch', 'train_size', 'total_steps')


def latest_tag(ckpt_dir: str | Path) -> str | None:
    """The tag named by `checkpoints/latest` when it exists and its folder is complete."""
    path = Path(ckpt_dir) / LATEST
    if not path.is_file():
        return None
    tag = path.read_text(encoding='utf-8').strip()
    return tag if tag and (Path(ckpt_dir) / tag).is_dir() else None


def checkpoint_zero_stage(ckpt_dir: str | Path) -> int | None:
    """The ZeRO stage the latest checkpoint was written with (its optimizer state only loads
    into an engine of that stage), or None when there is nothing to resume.

    Checkpoints from before `STAGE_FILE` existed: ZeRO shard files mean some stage >= 1, which
    this cannot tell apart, so it answers -1 (keep whatever the config asks for).
    """
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None
    folder = Path(ckpt_dir) / tag
    if (folder / STAGE_FILE).is_file():
        return int(json.loads((folder / STAGE_FILE).read_text(encoding='utf-8'))['zero_stage'])
    return -1 if any(folder.glob('*zero_pp_rank_*')) else 0


def save_checkpoint(engine: Any, ckpt_dir: Path, step: int, order: dict, keep: int = 2) -> Path:
    """Collective: every rank writes its shards; `latest` moves only after all of them finished."""
    tag = f'{TAG_PREFIX}{step:08d}'
    client_state = {'step': step, 'order': order}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    if dist.is_initialized():
        dist.barrier()
    if engine.global_rank == 0:
        stage = {'zero_stage': int(engine.zero_optimization_stage())}
        write_text(ckpt_dir / tag / STAGE_FILE, json.dumps(stage))
        write_text(ckpt_dir / LATEST, tag)
        _prune(ckpt_dir, keep, tag)
    if dist.is_initialized():
        dist.barrier()
    _logger.info('Saved checkpoint %s at step %d', ckpt_dir / tag, step)
    return ckpt_dir / tag


def _prune(ckpt_dir: Path, keep: int, current: str) -> None:
    if keep <= 0:
        return
    tags = sorted(p for p in ckpt_dir.glob(f'{TAG_PREFIX}*') if p.is_dir())
    for old in tags[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(engine: Any, ckpt_dir: Path, order: dict) -> int:
    """Restore the latest checkpoint into `engine`; returns its step (0 when there is none)."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return 0
    path, client_state = engine.load_checkpoint(
        str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise RuntimeError(f'DeepSpeed could not load checkpoint {ckpt_dir / tag}')
    saved = (client_state or {}).get('order', {})
    changed = {
        k: (saved.get(k), order.get(k))
        for k in ORDER_KEYS
        if k in saved and saved.get(k) != order.get(k)
    }
    if changed:
        raise ValueError(
            f'Cannot resume {ckpt_dir / tag} exactly: settings that fix the data order changed '
            f'(saved, now): {changed}. Use a new train.output_dir or restore the settings.'
        )
    step = int(client_state['step'])
    _logger.info('Resumed from %s at step %d', ckpt_dir / tag, step)
    return step


class StopSignal:
    """Remembers SIGTERM/SIGUSR1 so the loop can checkpoint and exit at the next step boundary.

    Ranks may receive the signal at different moments (or only one of them may), so the decision
    is all-reduced: every rank stops after the same step.
    """

    SIGNALS = ('SIGTERM', 'SIGUSR1')

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> StopSignal:
        for name in self.SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: Any) -> None:
        self.received = signal.Signals(number).name
        _logger.warning('Received %s: will checkpoint and exit after this step', self.received)

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def should_stop(self) -> bool:
        flag = torch.tensor([1 if self.received else 0], dtype=torch.int32)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def export_model(
    engine: Any, module: Any, out_dir: Path, scalar_names: tuple[str, ...] = ()
) -> Path:
    """Write one consolidated `save_pretrained` folder, gathering ZeRO-3 shards first.

    Written to a temporary folder next to `out_dir` and renamed, so a killed export never
    leaves a half-written model behind.
    """
    rank = engine.global_rank
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            if rank == 0:
                _save(module, out_dir, scalar_names)
    elif rank == 0:
        _save(module, out_dir, scalar_names)
    if dist.is_initialized():
        dist.barrier()
    return out_dir


def _save(module: Any, out_dir: Path, scalar_names: tuple[str, ...]) -> None:
    from ctclip.serialization import read_config

    state = {
        k: v.detach().clone().reshape(()) if k in scalar_names else v.detach().clone()
        for k, v in module.state_dict().items()
    }
    # config.json is written last, so reading it back proves the folder complete
    with atomic_path(out_dir, verify=read_config) as tmp:
        module.save_pretrained(tmp, state_dict=state)
    _logger.info('Exported the model to %s', out_dir)
