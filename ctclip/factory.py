"""Models are data: every JSON file in `ctclip/model_configs/` is a model, named by its stem.

`create_model(name, **overrides)` builds one; `add_model_config(path)` registers a user's file
or folder of files, so a new architecture never needs a copied script.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

from ctclip.model import CTClip
from ctcommon.mapping import deep_merge

_logger = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).parent / 'model_configs'
_MODEL_CONFIGS: dict[str, dict[str, Any]] = {}


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding='utf-8') as handle:
            config = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f'{path} is not valid JSON: {error}') from error
    if not isinstance(config, dict) or not all(
        k in config for k in ('embed_dim', 'vision_cfg', 'text_cfg')
    ):
        raise ValueError(f'{path} must be a JSON object with embed_dim, vision_cfg and text_cfg')
    return config


def add_model_config(path: str | os.PathLike) -> list[str]:
    """Register a model JSON file, or every *.json in a folder. Returns the names added."""
    path = Path(path)
    files = sorted(path.glob('*.json')) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(
            f'add_model_config needs a .json file or a folder of them, not {path}'
        )
    names = []
    for file in files:
        _MODEL_CONFIGS[file.stem] = _load_json(file)
        names.append(file.stem)
    return names


def list_models() -> list[str]:
    """Names of the registered model configs, sorted."""
    return sorted(_MODEL_CONFIGS)


def get_model_config(name: str) -> dict[str, Any]:
    """A deep copy of the registered config `name`."""
    if name not in _MODEL_CONFIGS:
        raise ValueError(f"Unknown model '{name}'. Available: {', '.join(list_models())}")
    return copy.deepcopy(_MODEL_CONFIGS[name])


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge nested (`vision_cfg={'layers': [...]}`) and dotted (`'vision_cfg.layers'`) overrides."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split('.')
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(
                    f"Override '{key}': '{part}' is a value, not a section ({child!r})"
                )
            node = child
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = deep_merge(node[leaf], value)
        else:
            node[leaf] = copy.deepcopy(value)
    return config


def create_model(
    name: str, pretrained: str | os.PathLike | None = None, **overrides: Any
) -> CTClip:
    """Build a registered model.

    Args:
        name: a config name from `list_models()`.
        pretrained: an exported model folder (or .safetensors file) whose weights must all fit.
        **overrides: nested or dotted config changes, e.g. `vision_cfg={'block_inplanes': [4, 8, 16, 32]}`
            or `**{'text_cfg.path': '/models/CXR-BERT'}`.

    Example:
        >>> model = create_model('resnet3d-tiny-tinybert', embed_dim=32)
    """
    config = apply_overrides(get_model_config(name), overrides)
    config['name'] = name
    model = CTClip(config)
    if pretrained is not None:
        model.init_from(pretrained, strict=True)
    _logger.info(
        'created %s: %.2fM parameters', name, sum(p.numel() for p in model.parameters()) / 1e6
    )
    return model


add_model_config(_CONFIG_DIR)
