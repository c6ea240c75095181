"""YAML run configs with `base:` inheritance and dotted command-line overrides.

Every verb reads its settings the same way, so a SLURM job, a test and a user at a shell all
describe a run with the same file plus a few `key.sub=value` overrides.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

_OVERRIDE = re.compile(r'^[A-Za-z_][\w\-]*(\.[\w\-]+)*=')


def is_override(token: str) -> bool:
    """Whether a command-line token is a dotted override such as `train.lr=1e-4`."""
    return bool(_OVERRIDE.match(token))


def parse_value(text: str) -> Any:
    """Turn an override's right-hand side into a Python value.

    YAML 1.1 reads `1e-5` as a string, so numbers are tried first.
    """
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    value = yaml.safe_load(text) if text else None
    return text if value is None and text not in ('null', '~', '') else value


def set_dotted(cfg: dict, dotted: str, value: Any) -> None:
    """Set `cfg['a']['b'] = value` for `dotted='a.b'`, creating levels as needed."""
    node = cfg
    *parents, leaf = dotted.split('.')
    for key in parents:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ValueError(f"Override '{dotted}': '{key}' is a value, not a section ({child!r})")
        node = child
    node[leaf] = value


def get_dotted(cfg: dict, dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for key in dotted.split('.'):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def merge(base: dict, update: dict) -> dict:
    """Deep-merge `update` into a copy of `base`; dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | Path) -> dict:
    """Read a YAML config; a top-level `base: other.yaml` (relative to this file) is merged under it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'Config file {str(path)!r} does not exist')
    with path.open(encoding='utf-8') as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f'Config file {str(path)!r} must hold a mapping, not {type(cfg).__name__}')
    base = cfg.pop('base', None)
    if base:
        bases = [base] if isinstance(base, str) else list(base)
        merged: dict = {}
        for name in bases:
            merged = merge(merged, load_config(path.parent / name))
        cfg = merge(merged, cfg)
    return cfg


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` tokens in order to a copy of `cfg`."""
    out = copy.deepcopy(cfg)
    for token in overrides:
        if not is_override(token):
            raise ValueError(f"Override must look like 'key.sub=value', not {token!r}")
        key, _, text = token.partition('=')
        set_dotted(out, key, parse_value(text))
    return out


def apply_flags(cfg: dict, flags: dict[str, Any]) -> dict:
    """Copy explicit command-line flags (dotted keys, None meaning 'not given') into a config."""
    out = copy.deepcopy(cfg)
    for key, value in flags.items():
        if value is not None:
            set_dotted(out, key, value)
    return out


def resolve(
    defaults: dict | None = None,
    config_path: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Defaults < `--config` file < explicit flags < dotted overrides."""
    cfg = copy.deepcopy(defaults or {})
    if config_path:
        cfg = merge(cfg, load_config(config_path))
    cfg = apply_flags(cfg, flags or {})
    return apply_overrides(cfg, overrides or [])


def dump_config(cfg: dict, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False), encoding='utf-8')


def configs_dir() -> Path:
    """The packaged `ctclip/configs/` folder."""
    return Path(__file__).resolve().parent / 'configs'
