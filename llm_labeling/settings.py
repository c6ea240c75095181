"""Defaults and checks for a labeling run; `ctclip label` and `label_reports(cfg)` share them.

Bad settings fail here, before any request is sent (and before a SLURM job spends its hours).
"""

from __future__ import annotations

import copy
from typing import Any

from llm_labeling.backends import BACKENDS
from llm_labeling.backends.llm import MODES
from llm_labeling.io import FORMATS
from llm_labeling.prompts import PROMPT_STYLES

DEFAULTS: dict[str, Any] = {
    'reports': None,  # CSV or JSONL
    'out_dir': None,
    'input': {'format': 'auto', 'id_column': None, 'text_columns': None},
    'backend': 'rules',
    'model': None,
    'base_url': None,
    'api_key_env': 'OPENAI_API_KEY',  # the NAME of the variable; the key itself is never stored
    'prompt': 'evidence',  # or 'li': Li et al.'s one line of 18 values
    'mode': None,  # instructor mode; None means 'tools'
    'concurrency': 8,
    'timeout': 120.0,  # seconds per request
    'max_tokens': 2048,
    'temperature': 0.0,
    'max_reasks': 2,  # instructor re-asks on invalid output, within one attempt
    'retry': {'max_retries': 4, 'initial_delay': 1.0, 'max_delay': 60.0},
    'cache': {'enabled': True, 'path': None},  # None: <out_dir>/response_cache.sqlite
    'price': {'input_per_mtok': 0.0, 'output_per_mtok': 0.0},  # USD per million tokens
    'llamacpp': {'model_path': None, 'n_ctx': 4096, 'n_threads': None, 'chat_format': 'gemma'},
    'progress': True,
}


def _merge(base: dict, update: dict) -> dict:
    """Deep merge (llm_labeling may not import ctclip, so not ctclip.config.merge)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _choice(cfg: dict, key: str, choices: tuple) -> None:
    if cfg[key] not in choices:
        raise ValueError(f'{key} must be one of {", ".join(map(str, choices))}, not {cfg[key]!r}')


def _positive(value: Any, name: str, minimum: float = 0, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
        what = 'an integer' if integer else 'a number'
        raise ValueError(f'{name} must be {what} >= {minimum}, not {value!r}')


def resolve_settings(cfg: dict) -> dict:
    """`cfg` merged over DEFAULTS and checked; raises ValueError naming the bad key."""
    out = _merge(DEFAULTS, cfg or {})
    unknown = sorted(set(out) - set(DEFAULTS))
    if unknown:
        raise ValueError(f'Unknown label setting(s) {unknown}; valid: {", ".join(DEFAULTS)}')
    for key in ('reports', 'out_dir'):
        if not out[key]:
            raise ValueError(f'{key} is required (--{key.replace("_", "-")})')
    _choice(out, 'backend', BACKENDS)
    _choice(out, 'prompt', PROMPT_STYLES)
    if out['mode'] is not None:
        _choice(out, 'mode', MODES)
    if out['input']['format'] not in FORMATS:
        raise ValueError(
            f'input.format must be one of {", ".join(FORMATS)}, not {out["input"]["format"]!r}'
        )
    cols = out['input']['text_columns']
    if isinstance(cols, str):
        out['input']['text_columns'] = [c.strip() for c in cols.split(',') if c.strip()]
    _positive(out['concurrency'], 'concurrency', 1, integer=True)
    _positive(out['max_reasks'], 'max_reasks', 0, integer=True)
    _positive(out['max_tokens'], 'max_tokens', 1, integer=True)
    _positive(out['timeout'], 'timeout', 0.001)
    _positive(out['retry']['max_retries'], 'retry.max_retries', 0, integer=True)
    for key in ('input_per_mtok', 'output_per_mtok'):
        _positive(out['price'][key], f'price.{key}')
    return out


def cost_usd(settings: dict, prompt_tokens: int, completion_tokens: int) -> float:
    price = settings['price']
    return (
        prompt_tokens * price['input_per_mtok'] + completion_tokens * price['output_per_mtok']
    ) / 1e6
