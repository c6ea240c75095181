"""YAML run configs with `base:` inheritance and dotted command-line overrides.

Every verb reads its settings the same way, so a SLURM job, a test and a user at a shell all
describe a run with the same file plus a few `key.sub=value` overrides. The shipped configs live
inside the package (`ctclip/configs/<kind>/<name>`) and are read with importlib.resources, so an
installed wheel finds them by name (`train/stage1-small`) from any folder.
"""

from __future__ import annotations

import copy
import difflib
import importlib.resources
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ctcommon.atomic import write_bytes
from ctcommon.mapping import deep_merge as merge  # re-exported: callers use config.merge
from ctcommon.settings import closest

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

_logger = logging.getLogger(__name__)

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


_SUFFIXES = ('.yaml', '.yml', '.json')


def _packaged_root() -> Traversable:
    return importlib.resources.files('ctclip') / 'configs'


def configs_dir() -> Path:
    """The packaged configs folder as a path (tests, and installs that unpack to a folder)."""
    return Path(str(_packaged_root()))


def _normalise(name: str) -> str:
    """`configs/train/stage1-small.yaml` (the old in-repo path) -> `train/stage1-small.yaml`."""
    name = name.replace('\\', '/').strip('/')
    return name[len('configs/') :] if name.startswith('configs/') else name


def _packaged_file(name: str) -> Traversable | None:
    """The packaged file for `train/stage1-small` (a suffix, or a `configs/` prefix, is optional)."""
    name = _normalise(name)
    parts = [p for p in name.split('/') if p]
    if not parts or any(p in ('.', '..') for p in parts):
        return None
    stem = parts[-1]
    candidates = [stem] if stem.endswith(_SUFFIXES) else [stem + s for s in _SUFFIXES]
    folder = _packaged_root()
    for part in parts[:-1]:
        folder = folder / part
    for candidate in candidates:
        node = folder / candidate
        if node.is_file():
            return node
    return None


def list_configs(kind: str | None = None) -> list[str]:
    """Packaged config names such as `train/stage1-small`, optionally of one kind (`train`)."""
    root = _packaged_root()
    kinds = sorted(k.name for k in root.iterdir() if k.is_dir() and not k.name.startswith('_'))
    if kind is not None and kind not in kinds:
        near = closest(kind, kinds)
        hint = f" (did you mean '{near}'?)" if near else ''
        raise ValueError(f'Config kind must be one of {", ".join(kinds)}, not {kind!r}{hint}')
    names = []
    for k in [kind] if kind else kinds:
        for node in (root / k).iterdir():
            if node.is_file() and node.name.endswith(_SUFFIXES):
                names.append(f'{k}/{node.name.rsplit(".", 1)[0]}')
    return sorted(names)


def packaged_text(name: str) -> str:
    """The text of a packaged config (`train/stage1-small`), for listing and export."""
    node = _packaged_file(name)
    if node is None:
        raise FileNotFoundError(_missing_config_message(name))
    return node.read_text(encoding='utf-8')


def _missing_config_message(spec: str) -> str:
    """One line: the spec is neither a file nor a packaged name, and what the package offers."""
    name = _normalise(spec)
    kind = name.split('/', 1)[0] if '/' in name else None
    all_names = list_configs()
    kinds = sorted({n.split('/', 1)[0] for n in all_names})
    if kind is not None and kind not in kinds:
        kind = closest(kind, kinds)  # 'trian/stage1' still lists the train configs
    choices = list_configs(kind) if kind in kinds else all_names
    stem = name.rsplit('.', 1)[0] if name.endswith(_SUFFIXES) else name
    if kind is not None and '/' in stem:
        stem = f'{kind}/{stem.split("/", 1)[1]}'
    ranked = difflib.get_close_matches(stem, choices, n=len(choices), cutoff=0.0)
    near = closest(stem, choices)
    ordered = ([near] if near else []) + [c for c in ranked if c != near]
    what = f'packaged {kind} configs' if kind in kinds else 'packaged configs'
    return (
        f'Config {spec!r} must be an existing file or a packaged name; no such file, and the '
        f'{what} are: {", ".join(ordered)}'
    )


def _read_mapping(text: str, where: str, is_json: bool) -> dict:
    # JSON through json: YAML 1.1 would read a JSON number such as 1e-5 as a string
    cfg = (json.loads(text) if is_json else yaml.safe_load(text)) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f'Config {where} must hold a mapping, not {type(cfg).__name__}')
    return cfg


def load_config(spec: str | Path) -> dict:
    """Read a config from a file path or a packaged name (`train/stage1-small`).

    A top-level `base:` (one name or a list) is merged underneath. A file's base is looked up
    beside that file first, then as a packaged name; a packaged config's base is looked up beside
    it in the package, then as a packaged name, so exported copies and the package both resolve.
    """
    path = Path(spec)
    if path.is_file():
        cfg = _read_mapping(
            path.read_text(encoding='utf-8'), repr(str(path)), path.suffix.lower() == '.json'
        )
        _logger.debug('config %s: file %s', spec, path)
        return _merge_bases(cfg, str(path), lambda name: path.parent / name)
    if path.exists():
        raise IsADirectoryError(f'Config {str(spec)!r} must be a file, not a folder')
    node = _packaged_file(str(spec))
    if node is None:
        raise FileNotFoundError(_missing_config_message(str(spec)))
    name = _normalise(str(spec))
    kind = name.rsplit('/', 1)[0] if '/' in name else ''
    cfg = _read_mapping(
        node.read_text(encoding='utf-8'), f'{str(spec)!r} (packaged)', node.name.endswith('.json')
    )
    _logger.debug('config %s: packaged %s', spec, name)
    return _merge_bases(cfg, f'{name} (packaged)', lambda base: f'{kind}/{base}' if kind else base)


def _merge_bases(cfg: dict, where: str, beside: Callable[[str], Path | str]) -> dict:
    """Merge the configs named by `base:` under `cfg`; `beside` maps a base to its sibling."""
    base = cfg.pop('base', None)
    if not base:
        return cfg
    bases = [base] if isinstance(base, str) else list(base)
    merged: dict = {}
    for name in bases:
        if not isinstance(name, str):
            raise ValueError(
                f"Config {where}: 'base' must be a name or a list of names, not {name!r}"
            )
        near = beside(name)
        found = near.is_file() if isinstance(near, Path) else _packaged_file(near) is not None
        try:
            merged = merge(merged, load_config(near if found else name))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f'Config {where}: base {exc}') from None
    return merge(merged, cfg)


def export_configs(dest: str | Path, force: bool = False, kind: str | None = None) -> list[Path]:
    """Copy the packaged configs into `dest/<kind>/<name>` as editable files.

    Existing files are refused (all checked before anything is written) unless `force`; each copy
    is written atomically, so an interrupted export never leaves half a YAML file.
    """
    dest = Path(dest)
    plan: list[tuple[Traversable, Path]] = []
    for name in list_configs(kind):
        node = _packaged_file(name)
        if node is not None:
            plan.append((node, dest / name.split('/', 1)[0] / node.name))
    existing = [target for _, target in plan if target.exists()]
    if existing and not force:
        raise FileExistsError(
            f'{existing[0]} already exists ({len(existing)} of {len(plan)} configs do); '
            'pass --force to overwrite'
        )
    written = []
    for node, target in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(target, node.read_bytes())
        written.append(target)
    return written


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
