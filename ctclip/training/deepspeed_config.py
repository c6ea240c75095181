"""The DeepSpeed JSON of a run: a named or given base, filled from the typed run config."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ctclip.config import list_configs, packaged_text
from ctclip.training.settings import PRECISIONS

if TYPE_CHECKING:
    from ctclip.training.settings import TrainConfig

_logger = logging.getLogger(__name__)


# The settings when `deepspeed.config` is not given: ZeRO stage 0 (plain data parallel), with
# batch sizes, optimizer and precision filled in from the run config. A dict, not a file, so a
# run needs nothing from disk; it equals the packaged `zero0` preset.
DEFAULT_DEEPSPEED: dict[str, Any] = {
    'zero_optimization': {'stage': 0},
    'steps_per_print': 10**9,
    'wall_clock_breakdown': False,
}


def deepspeed_presets() -> list[str]:
    """Names of the packaged DeepSpeed JSONs (`zero0`..`zero3`, `zero2-bf16`)."""
    return [name.split('/', 1)[1] for name in list_configs('deepspeed')]


def load_deepspeed_json(spec: Any) -> dict:
    """A DeepSpeed JSON: None (the default), a mapping, a JSON file, or a preset name (`zero2`)."""
    if spec is None or spec == '':
        return copy.deepcopy(DEFAULT_DEEPSPEED)
    if isinstance(spec, Mapping):
        return copy.deepcopy(dict(spec))
    path = Path(str(spec))
    if path.is_file():
        return json.loads(path.read_text(encoding='utf-8'))
    presets = deepspeed_presets()
    name = path.name[: -len('.json')] if path.name.endswith('.json') else path.name
    if name not in presets:
        from ctcommon.settings import closest

        near = closest(name, presets)
        ordered = ([near] if near else []) + [p for p in presets if p != near]
        raise FileNotFoundError(
            f'deepspeed.config must be a JSON file or one of {", ".join(ordered)}, not {spec!r}'
        )
    return json.loads(packaged_text(f'deepspeed/{name}'))


def one_rank_stage(out: Mapping, explicit: int | None, resume_stage: int | None) -> int:
    """The ZeRO stage for a run on one rank.

    ZeRO shards optimizer state, gradients and weights across ranks; one rank has nothing to
    shard, and stages 1-3 only add host work per step (ZeRO-2 ran at 0.71 of a bare loop on an
    H100, ZeRO-0 at 0.93: benchmarks/perf/RESULTS.md). So stage 0 wins, except where the stage
    is asked for by name (`deepspeed.zero_stage`), where the JSON offloads to CPU or NVMe (which
    needs ZeRO), or where the checkpoint being resumed holds another stage's optimizer state.
    """
    zero = out.get('zero_optimization') or {}
    stage = int(zero.get('stage', 0))
    if explicit is not None or stage == 0:
        return stage
    if zero.get('offload_optimizer') or zero.get('offload_param'):
        return stage
    if resume_stage is not None and resume_stage != 0:
        return stage if resume_stage < 0 else resume_stage
    return 0


def deepspeed_config(
    cfg: TrainConfig, world_size: int, batchnorm: bool = False, resume_stage: int | None = None
) -> dict:
    """The DeepSpeed JSON with batch sizes, optimizer, clipping and precision filled from the run config.

    `bf16` means DeepSpeed's bf16 weights on a GPU, except for models with BatchNorm (the 3D
    ResNets): bf16 BatchNorm fails in backward on CUDA ("Expected running_mean to have type
    BFloat16") and would keep its running statistics in 8 mantissa bits, so those run under
    autocast (fp32 weights, bf16 compute), as every model does on a CPU.
    """
    ds_cfg, optim = cfg.deepspeed, cfg.optim
    out = load_deepspeed_json(ds_cfg.config)
    micro, accum = cfg.data.batch_size, cfg.train.grad_accum
    out['train_micro_batch_size_per_gpu'] = micro
    out['gradient_accumulation_steps'] = accum
    out['train_batch_size'] = micro * accum * world_size
    if optim.grad_clip is not None:
        out['gradient_clipping'] = optim.grad_clip
    out.setdefault('optimizer', {'type': 'AdamW', 'params': {}})
    params = out['optimizer'].setdefault('params', {})
    params.update(
        lr=optim.lr, betas=list(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay
    )
    if out['optimizer']['type'].lower() in ('adam', 'adamw'):
        params.setdefault('torch_adam', True)  # DeepSpeed's CPU Adam compiles for ~40 s
        if params['torch_adam'] and torch.cuda.is_available():
            # one kernel for all tensors: the per-tensor loop cost ~28 ms of host time per step
            # for ResNet-18 + BERT-base on an H100 (benchmarks/perf/RESULTS.md)
            params.setdefault('fused', True)
    if ds_cfg.zero_stage is not None:
        out.setdefault('zero_optimization', {})['stage'] = ds_cfg.zero_stage
    if world_size == 1:
        asked = int((out.get('zero_optimization') or {}).get('stage', 0))
        stage = one_rank_stage(out, ds_cfg.zero_stage, resume_stage)
        if stage != asked:
            why = (
                'the resumed checkpoint holds its optimizer state' if stage else 'nothing to shard'
            )
            _logger.info(
                "One rank: ZeRO-%d instead of the config's ZeRO-%d (%s; deepspeed.zero_stage=%d "
                'keeps it)',
                stage,
                asked,
                why,
                asked,
            )
            out['zero_optimization'] = {'stage': stage}
    precision = ds_cfg.precision
    if precision not in PRECISIONS:
        raise ValueError(f'deepspeed.precision must be one of {PRECISIONS}, not {precision!r}')
    if precision == 'bf16' and torch.cuda.is_available():
        out['bf16'] = {'enabled': True}
    elif precision != 'fp32':  # bf16 weights + BatchNorm fail on CPU; autocast works
        out['torch_autocast'] = {'enabled': True, 'dtype': 'bfloat16'}
    if batchnorm and out.get('bf16', {}).get('enabled'):  # from precision or the JSON itself
        _logger.info('bf16 weights do not work with BatchNorm: using autocast (fp32 weights)')
        del out['bf16']
        out['torch_autocast'] = {'enabled': True, 'dtype': 'bfloat16'}
    out.setdefault('steps_per_print', 10**9)
    out.setdefault('wall_clock_breakdown', False)
    return out
