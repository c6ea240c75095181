"""What the optimizer steps: parameter groups, frozen towers, and DeepSpeed-safe parameter shapes."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

_logger = logging.getLogger(__name__)


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


def freeze_unused_text(model: torch.nn.Module, loss_cfg: Mapping) -> bool:
    """Leave the text tower out of the optimizer when no loss term runs it (stage 1).

    Otherwise AdamW still steps its ~22M zero-gradient weights every step: a large share of a
    small image model's step time on CPU, and weight decay would shrink weights nothing trains.
    """
    from ctclip.losses import uses_text

    if uses_text(loss_cfg):
        return False
    for module in (model.text, model.text_proj):
        module.requires_grad_(False)
    return True


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
