"""Defaults and checks for a labeling run; `ctclip label` and `label_reports(cfg)` share them.

Bad settings fail here, before any request is sent (and before a SLURM job spends its hours).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ctcommon.mapping import deep_merge
from ctcommon.settings import FailureBudget, from_mapping, to_mapping
from llm_labeling.backends import BACKENDS
from llm_labeling.backends.llm import MODES
from llm_labeling.io import FORMATS
from llm_labeling.prompts import PROMPT_STYLES


@dataclass
class InputCfg:
    format: str = 'auto'
    id_column: str | None = None
    text_columns: list[str] | str | None = None


@dataclass
class RetryCfg:
    max_retries: int = 4
    initial_delay: float = 1.0
    max_delay: float = 60.0


@dataclass
class CacheCfg:
    enabled: bool = True
    path: str | None = None  # None: <out_dir>/response_cache.sqlite


@dataclass
class PriceCfg:
    """USD per million tokens."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0


@dataclass
class LlamaCppCfg:
    model_path: str | None = None
    n_ctx: int = 4096
    n_threads: int | None = None
    chat_format: str = 'gemma'
    seed: int = 0


@dataclass
class LabelSettings:
    """Every setting of a labeling run; an unknown key at any level fails before any request."""

    reports: str | None = None  # CSV or JSONL
    out_dir: str | None = None
    input: InputCfg = field(default_factory=InputCfg)
    backend: str = 'rules'
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = 'OPENAI_API_KEY'  # the NAME of the variable; the key itself is never stored
    prompt: str = 'evidence'  # or 'li': Li et al.'s one line of 18 values
    mode: str | None = None  # instructor mode; None means 'tools'
    concurrency: int = 8
    timeout: float = 120.0  # seconds per request
    max_tokens: int = 2048
    temperature: float = 0.0
    max_reasks: int = 2  # instructor re-asks on invalid output, within one attempt
    retry: RetryCfg = field(default_factory=RetryCfg)
    cache: CacheCfg = field(default_factory=CacheCfg)
    price: PriceCfg = field(default_factory=PriceCfg)
    llamacpp: LlamaCppCfg = field(default_factory=LlamaCppCfg)
    failures: FailureBudget = field(default_factory=FailureBudget)
    progress: bool = True


DEFAULTS: dict[str, Any] = to_mapping(LabelSettings())


def _choice(cfg: dict, key: str, choices: tuple) -> None:
    if cfg[key] not in choices:
        raise ValueError(f'{key} must be one of {", ".join(map(str, choices))}, not {cfg[key]!r}')


def _positive(value: Any, name: str, minimum: float = 0, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
        what = 'an integer' if integer else 'a number'
        raise ValueError(f'{name} must be {what} >= {minimum}, not {value!r}')


def resolve_settings(cfg: dict) -> dict:
    """`cfg` merged over DEFAULTS and checked; raises ValueError naming the bad key.

    The keys go through the `LabelSettings` dataclasses, so a misspelt one at any level
    (`retry.max_retris`) raises `UnknownSettingError` naming its section and the closest name.
    """
    out = to_mapping(from_mapping(LabelSettings, deep_merge(DEFAULTS, cfg or {})))
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


def failure_budget_exceeded(settings: dict, failed: int, total: int) -> bool:
    """Whether `failed` of `total` reports is more than `failures.max_fraction` allows."""
    return FailureBudget(**settings['failures']).exceeded(failed, total)


def cost_usd(settings: dict, prompt_tokens: int, completion_tokens: int) -> float:
    price = settings['price']
    return (
        prompt_tokens * price['input_per_mtok'] + completion_tokens * price['output_per_mtok']
    ) / 1e6
