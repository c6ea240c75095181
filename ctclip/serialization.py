"""The exported model folder: JSON configs, safetensors weights and tokenizer files, no pickle.

Layout of a model dir:
    config.json          the CTClip config (embed_dim, vision_cfg, text_cfg, head_cfg, evidence_cfg)
    model.safetensors    every weight, text encoder included
    text_config.json     the text encoder's transformers config (rebuilds it without its folder)
    tokenizer/           the tokenizer files
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch

import ctclip
from ctcommon.atomic import atomic_path, write_json

_logger = logging.getLogger(__name__)

CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
TEXT_CONFIG_NAME = 'text_config.json'
TOKENIZER_DIR = 'tokenizer'
FORMAT = 'ctclip-model'
FORMAT_VERSION = 1


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    write_json(path, payload, sort_keys=True)


def _check_weights(names: set[str]) -> Callable[[Path], None]:
    """A `verify` that re-reads the safetensors header: every tensor is there, the file whole."""

    def verify(tmp: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(tmp), framework='pt') as f:
            found = set(f.keys())
        if found != names:
            raise OSError(f'{tmp}: wrote {len(found)} of {len(names)} tensors')

    return verify


def _check_tokenizer(tmp: Path) -> None:
    if not any(tmp.iterdir()):
        raise OSError(f'{tmp}: the tokenizer wrote no files')


def _plain_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two entries sharing storage (safetensors refuses shared tensors)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, value in state.items():
        tensor = value.detach().cpu().contiguous()
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.numel() and ident in seen:
            tensor = tensor.clone()
        seen.add(ident)
        out[key] = tensor
    return out


def save_model_dir(
    directory: Path,
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    text_config: dict,
    tokenizer,
) -> Path:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    plain = _plain_state(state)
    with atomic_path(directory / WEIGHTS_NAME, verify=_check_weights(set(plain))) as tmp:
        save_file(plain, str(tmp), metadata={'format': 'pt'})
    _write_json(directory / TEXT_CONFIG_NAME, text_config)
    with atomic_path(directory / TOKENIZER_DIR, verify=_check_tokenizer) as tmp:
        tokenizer.save_pretrained(str(tmp))
    meta = {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'ctclip_version': ctclip.__version__,
    }
    _write_json(directory / CONFIG_NAME, {**config, '_meta': meta})  # written last: marks complete
    return directory


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f'{directory} is not a ctclip model folder: {CONFIG_NAME} is missing'
        )
    with open(path, encoding='utf-8') as handle:
        config = json.load(handle)
    meta = config.pop('_meta', {})
    if meta.get('format') != FORMAT:
        raise ValueError(
            f"{path} is not a ctclip model config (format {meta.get('format')!r}, expected '{FORMAT}')"
        )
    if meta.get('format_version', 0) > FORMAT_VERSION:
        raise ValueError(
            f'{path} has format_version {meta["format_version"]}; this ctclip reads <= {FORMAT_VERSION}'
        )
    return config


def read_model_dir(directory: Path, map_location: str | torch.device = 'cpu'):
    """(config, text encoder config, state dict) of a saved model folder."""
    from safetensors.torch import load_file

    config = read_config(directory)
    for name in (WEIGHTS_NAME, TEXT_CONFIG_NAME, TOKENIZER_DIR):
        if not (directory / name).exists():
            raise FileNotFoundError(
                f'{directory} is an incomplete ctclip model folder: {name} is missing'
            )
    with open(directory / TEXT_CONFIG_NAME, encoding='utf-8') as handle:
        text_config = json.load(handle)
    state = load_file(str(directory / WEIGHTS_NAME), device=str(map_location))
    return config, text_config, state


def load_state(source: Path) -> dict[str, torch.Tensor]:
    """Weights from a model folder or a .safetensors file."""
    from safetensors.torch import load_file

    path = source / WEIGHTS_NAME if source.is_dir() else source
    if not path.is_file():
        raise FileNotFoundError(
            f'init_from needs a model folder or a .safetensors file, not {source}'
        )
    if path.suffix != '.safetensors':
        raise ValueError(f'init_from reads .safetensors only (no pickle), not {path}')
    return load_file(str(path))
