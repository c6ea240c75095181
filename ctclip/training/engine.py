"""The DeepSpeed training engine shared by every stage.

One loop serves stage 1 (supervised) and stage 2 (CLIP / evidence-aligned): the stage is the
model, the loss terms and the data pairing named in the config. DeepSpeed owns the optimizer,
ZeRO partitioning, gradient accumulation, clipping and precision; this module owns the data
order, the schedule, checkpoint/resume, evaluation and logging.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ctclip.config import configs_dir

_logger = logging.getLogger(__name__)

PRECISIONS = ('fp32', 'bf16', 'bf16-autocast')
TEXT_TERMS = ('clip', 'multi_positive', 'evidence', 'text_bce', 'prompt')


def init_distributed() -> tuple[int, int, int]:
    """Start the process group (gloo on CPU, nccl on GPU) from torchrun, SLURM or nothing.

    A lone process gets RANK=0/WORLD_SIZE=1 and a free local port, so DeepSpeed does not go
    looking for MPI.
    """
    import torch.distributed as dist

    if not torch.cuda.is_available():
        os.environ.setdefault('DS_ACCELERATOR', 'cpu')
    from ctclip.distributed import world_info

    info = world_info()
    os.environ.setdefault('RANK', str(info.rank))
    os.environ.setdefault('WORLD_SIZE', str(info.world_size))
    os.environ.setdefault('LOCAL_RANK', str(info.local_rank))
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    if 'MASTER_PORT' not in os.environ:
        if info.world_size > 1:
            raise RuntimeError('MASTER_PORT must be set for a multi-process run (torchrun sets it)')
        os.environ['MASTER_PORT'] = str(_free_port())
    if not dist.is_initialized():
        import deepspeed

        backend = 'nccl' if torch.cuda.is_available() else 'gloo'
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    return dist.get_rank(), dist.get_world_size(), info.local_rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def active_term_names(loss_cfg: Mapping) -> set[str]:
    """The terms `create_loss` switches on (an evidence term with weight 0 but an entropy weight
    still runs, and still needs the evidence inputs)."""
    from ctclip.losses import active_terms

    return {term.name for term in active_terms(dict(loss_cfg))}


def uses_text(loss_cfg: Mapping, active: set[str] | None = None) -> bool:
    """Whether any enabled loss term needs the text tower."""
    active = active_term_names(loss_cfg) if active is None else active
    bce = loss_cfg.get('bce')
    return bool(active & set(TEXT_TERMS)) or bool(isinstance(bce, Mapping) and bce.get('text'))


def freeze_unused_text(model: torch.nn.Module, loss_cfg: Mapping) -> bool:
    """Leave the text tower out of the optimizer when no loss term runs it (stage 1).

    Otherwise AdamW still steps its ~22M zero-gradient weights every step: a large share of a
    small image model's step time on CPU, and weight decay would shrink weights nothing trains.
    """
    if uses_text(loss_cfg):
        return False
    for module in (model.text, model.text_proj):
        module.requires_grad_(False)
    return True


def prompt_inputs(loss_fn: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The `prompt` term's zero-shot prompts, tokenized once for the whole run ({} without it)."""
    from llm_labeling.schema import FINDINGS

    term = next((t for t in loss_fn.terms if t.name == 'prompt'), None)
    if term is None:
        return {}
    tokens = model.tokenize(term.texts(list(FINDINGS)))
    return {
        'prompt_input_ids': tokens['input_ids'],
        'prompt_attention_mask': tokens['attention_mask'],
    }


def model_inputs(
    batch: Mapping,
    loss_cfg: Mapping,
    device: torch.device,
    image_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format | None = None,
) -> dict[str, torch.Tensor]:
    """Only the towers a stage's loss needs run (stage 1 never touches the text tower).

    With DeepSpeed's own bf16 (GPU) the weights are bf16, so the image is cast to match; with
    `model.channels_last` the image is laid out NDHWC and the convolutions follow it.
    """
    keys = ['image']
    active = active_term_names(loss_cfg)
    if uses_text(loss_cfg, active):
        keys += ['input_ids', 'attention_mask']
    if 'evidence' in active:
        keys += ['evidence_input_ids', 'evidence_attention_mask']
    out = {k: batch[k].to(device, non_blocking=True) for k in keys}
    if image_dtype is not None:
        out['image'] = out['image'].to(image_dtype)
    if memory_format is not None:
        out['image'] = out['image'].contiguous(memory_format=memory_format)
    return out


def to_device(batch: Mapping, device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def as_float(outputs: Mapping) -> dict[str, Any]:
    """Losses run in fp32 even when the forward ran under bf16 autocast."""
    return {
        k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in outputs.items()
    }


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warm-up to the base rate, then cosine decay to `min_ratio` of it at `total`."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, the temperature and prototypes (1-D or scalar tensors)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{'params': decay, 'weight_decay': weight_decay}]
    if no_decay:
        groups.append({'params': no_decay, 'weight_decay': 0.0})
    return groups


def load_deepspeed_json(spec: Any) -> dict:
    """A DeepSpeed JSON: a mapping, a path, or a name in configs/deepspeed/ (e.g. `zero2`)."""
    if isinstance(spec, Mapping):
        return dict(spec)
    path = Path(str(spec))
    if not path.is_file():
        name = path.name if path.suffix == '.json' else f'{path.name}.json'
        path = configs_dir() / 'deepspeed' / name
    if not path.is_file():
        choices = sorted(p.stem for p in (configs_dir() / 'deepspeed').glob('*.json'))
        raise FileNotFoundError(
            f'deepspeed.config must be a JSON file or one of {choices}, not {spec!r}'
        )
    return json.loads(path.read_text(encoding='utf-8'))


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def deepspeed_config(cfg: Mapping, world_size: int, batchnorm: bool = False) -> dict:
    """The DeepSpeed JSON with batch sizes, optimizer, clipping and precision filled from the run config.

    `bf16` means DeepSpeed's bf16 weights on a GPU, except for models with BatchNorm (the 3D
    ResNets): bf16 BatchNorm fails in backward on CUDA ("Expected running_mean to have type
    BFloat16") and would keep its running statistics in 8 mantissa bits, so those run under
    autocast (fp32 weights, bf16 compute), as every model does on a CPU.
    """
    ds_cfg, optim, train = cfg['deepspeed'], cfg['optim'], cfg['train']
    out = load_deepspeed_json(ds_cfg.get('config') or 'zero0')
    micro, accum = int(cfg['data']['batch_size']), int(train['grad_accum'])
    out['train_micro_batch_size_per_gpu'] = micro
    out['gradient_accumulation_steps'] = accum
    out['train_batch_size'] = micro * accum * world_size
    if optim.get('grad_clip') is not None:
        out['gradient_clipping'] = float(optim['grad_clip'])
    out.setdefault('optimizer', {'type': 'AdamW', 'params': {}})
    params = out['optimizer'].setdefault('params', {})
    params.update(
        lr=float(optim['lr']),
        betas=list(optim['betas']),
        eps=float(optim['eps']),
        weight_decay=float(optim['weight_decay']),
    )
    if out['optimizer']['type'].lower() in ('adam', 'adamw'):
        params.setdefault('torch_adam', True)  # DeepSpeed's CPU Adam compiles for ~40 s
        if params['torch_adam'] and torch.cuda.is_available():
            # one kernel for all tensors: the per-tensor loop cost ~28 ms of host time per step
            # for ResNet-18 + BERT-base on an H100 (benchmarks/perf/RESULTS.md)
            params.setdefault('fused', True)
    if ds_cfg.get('zero_stage') is not None:
        out.setdefault('zero_optimization', {})['stage'] = int(ds_cfg['zero_stage'])
    precision = ds_cfg.get('precision', 'fp32')
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


def lift_scalar_parameters(model: torch.nn.Module) -> tuple[str, ...]:
    """Give 0-dim parameters shape [1] for the whole run; returns their names for the export.

    DeepSpeed 0.19.8 cannot handle 0-dim parameters such as a scalar temperature: its broadcast
    views them as bytes and its gradient clipping broadcasts a [1] coefficient into them. The
    export reshapes them back, so the saved model has the shapes its config declares.
    """
    names = []
    for name, p in model.named_parameters():
        if p.dim() == 0:
            p.data = p.data.reshape(1)
            names.append(name)
    return tuple(names)


def uses_autocast(ds_json: Mapping) -> bool:
    return bool(ds_json.get('torch_autocast', {}).get('enabled'))


def weight_dtype(ds_json: Mapping) -> torch.dtype | None:
    """bf16 when DeepSpeed keeps bf16 weights (its `bf16` mode), else None (fp32 weights)."""
    return torch.bfloat16 if ds_json.get('bf16', {}).get('enabled') else None


def reseed(seed: int, step: int, micro: int, rank: int) -> None:
    """Dropout and other in-model randomness depend only on (seed, step, micro-batch, rank)."""
    torch.manual_seed((seed * 1_000_003 + step * 1_009 + micro * 101 + rank) % (2**63 - 1))


class StepTimer:
    """Wall time spent waiting for data versus computing, for the log and the loader benchmark."""

    def __init__(self) -> None:
        self.data = self.compute = 0.0
        self._mark = time.perf_counter()

    def lap(self, kind: str) -> None:
        now = time.perf_counter()
        setattr(self, kind, getattr(self, kind) + now - self._mark)
        self._mark = now

    def pop(self) -> dict[str, float]:
        out = {'time/data_s': self.data, 'time/compute_s': self.compute}
        self.data = self.compute = 0.0
        return out
