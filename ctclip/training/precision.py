"""What a DeepSpeed JSON means for the weights and the forward: bf16 weights, autocast, or fp32."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from ctclip.training.settings import PRECISIONS

_logger = logging.getLogger(__name__)

__all__ = ['PRECISIONS', 'has_batchnorm', 'uses_autocast', 'weight_dtype']


def uses_autocast(ds_json: Mapping) -> bool:
    return bool(ds_json.get('torch_autocast', {}).get('enabled'))


def weight_dtype(ds_json: Mapping) -> torch.dtype | None:
    """bf16 when DeepSpeed keeps bf16 weights (its `bf16` mode), else None (fp32 weights)."""
    return torch.bfloat16 if ds_json.get('bf16', {}).get('enabled') else None


def has_batchnorm(model: torch.nn.Module) -> bool:
    """BatchNorm models cannot take bf16 weights (see `deepspeed_config.deepspeed_config`)."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
