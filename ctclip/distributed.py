"""Rank and world size from torchrun or SLURM, the process group, and the autograd-aware gather.

Contrastive losses need the negatives of every rank. A plain `all_gather` cuts the graph, so the
gradient of a rank's features would only see its own loss; `all_gather_with_grad` sends the
gradient back (summed over ranks), which is what makes a 2-rank run equal a 1-rank run.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorldInfo:
    rank: int
    world_size: int
    local_rank: int


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ''):
            try:
                return int(value)
            except ValueError as error:
                raise ValueError(f'{name} must be an integer, not {value!r}') from error
    return default


def world_info() -> WorldInfo:
    """Rank, world size and local rank: the process group if one is up, else torchrun or SLURM env.

    torchrun's variables win over SLURM's: under `srun torchrun`, SLURM describes the node
    tasks while torchrun describes the worker processes.
    """
    if dist.is_available() and dist.is_initialized():
        local = _env_int('LOCAL_RANK', 'SLURM_LOCALID', default=0)
        return WorldInfo(dist.get_rank(), dist.get_world_size(), local)
    rank = _env_int('RANK', 'SLURM_PROCID', default=0)
    world_size = _env_int('WORLD_SIZE', 'SLURM_NTASKS', default=1)
    local_rank = _env_int('LOCAL_RANK', 'SLURM_LOCALID', default=0)
    if not 0 <= rank < world_size:
        raise ValueError(f'rank must be in [0, world_size={world_size}), not {rank}')
    return WorldInfo(rank, world_size, local_rank)


def init_distributed() -> tuple[int, int, int]:
    """Start the process group (gloo on CPU, nccl on GPU) from torchrun, SLURM or nothing.

    A lone process gets RANK=0/WORLD_SIZE=1 and a free local port, so DeepSpeed does not go
    looking for MPI. Returns (rank, world size, local rank).
    """
    if not torch.cuda.is_available():
        os.environ.setdefault('DS_ACCELERATOR', 'cpu')
    info = world_info()
    os.environ.setdefault('RANK', str(info.rank))
    os.environ.setdefault('WORLD_SIZE', str(info.world_size))
    os.environ.setdefault('LOCAL_RANK', str(info.local_rank))
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    global _chosen_port
    own_port = 'MASTER_PORT' not in os.environ or os.environ['MASTER_PORT'] == _chosen_port
    if own_port and info.world_size > 1:
        raise RuntimeError('MASTER_PORT must be set for a multi-process run (torchrun sets it)')
    if not dist.is_initialized():
        import deepspeed

        backend = 'nccl' if torch.cuda.is_available() else 'gloo'
        for attempt in range(_PORT_TRIES):
            if own_port:  # chosen right before the bind; another process can still take it
                _chosen_port = os.environ['MASTER_PORT'] = str(_free_port())
            try:
                deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
                break
            except _DistNetworkError as exc:
                if not own_port or 'EADDRINUSE' not in str(exc) or attempt == _PORT_TRIES - 1:
                    raise
                _logger.warning('port %s was taken before the bind; trying another', _chosen_port)
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    return dist.get_rank(), dist.get_world_size(), info.local_rank


_PORT_TRIES = 5
_chosen_port: str | None = None  # the MASTER_PORT this process picked for itself, if any
_DistNetworkError = getattr(dist, 'DistNetworkError', RuntimeError)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def is_distributed() -> bool:
    """Whether collectives are needed (a process group with more than one rank)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _all_gather_padded(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """All-gather along dim 0 when ranks hold different row counts (pad, gather, strip)."""
    longest = max(sizes)
    padded = tensor
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, pad])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])


class _GatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's rows. Backward: sum the gradients over ranks, keep ours.

    The sum is an all-reduce rather than a reduce-scatter because gloo has no reduce-scatter.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        sizes = _gather_sizes(tensor.shape[0], tensor.device)
        rank = dist.get_rank()
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        return _all_gather_padded(tensor, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` over ranks along dim 0, keeping the autograd graph to every rank's rows.

    Every rank must call it (it is a collective). Ranks may hold different row counts.
    Without a multi-rank process group it returns the input unchanged.
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (labels, masks) over ranks along dim 0; no gradient."""
    if not is_distributed():
        return tensor
    with torch.no_grad():
        flag = tensor.dtype == torch.bool
        work = tensor.to(torch.uint8) if flag else tensor
        sizes = _gather_sizes(work.shape[0], work.device)
        out = _all_gather_padded(work, sizes)
    return out.bool() if flag else out
