"""From a collated batch to the model's inputs: only the towers the stage's loss needs run."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

_logger = logging.getLogger(__name__)


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
    batch: Mapping, loss_cfg: Mapping, device: torch.device
) -> dict[str, torch.Tensor]:
    """Only the towers a stage's loss needs run (stage 1 never touches the text tower).

    The image goes as it comes (int16 HU from the loader, pinned where CUDA is): the model windows
    it, casts it to its weights' dtype and lays it out (`CTClip.prepare_image`) on the device.
    """
    from ctclip.losses import QUOTE_TERMS, active_term_names, uses_text

    keys = ['image']
    active = active_term_names(loss_cfg)
    if uses_text(loss_cfg, active):
        keys += ['input_ids', 'attention_mask']
    if active & set(QUOTE_TERMS):
        keys += ['evidence_input_ids', 'evidence_attention_mask']
    return {k: batch[k].to(device, non_blocking=True) for k in keys}


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
