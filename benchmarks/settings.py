"""Benchmark settings: the defaults every `ctclip bench` task starts from, and their validation.

The packaged `bench/*` configs mirror these keys; a config is resolved (defaults < file < flags < dotted
overrides) and then turned into the frozen option objects of the scoring layer here, so a bad
value fails before any model is loaded.
"""

from __future__ import annotations

import copy
from typing import Any

from benchmarks import prompts
from benchmarks.bootstrap import BootstrapConfig
from benchmarks.retrieval import RetrievalOptions
from benchmarks.scoring import ScoringOptions
from ctcommon import settings
from ctcommon.mapping import deep_merge

DEFAULTS: dict[str, Any] = {
    'model': None,
    'data': None,  # CT-RATE root, or a cache (.h5)
    'cache': None,  # explicit cache when `data` is a CT-RATE root
    'labels': None,
    'reports': None,
    'split': 'valid',
    'mapping': 'ctclip16',
    # `bench score`: which benchmark the scores are for (ct-rate | rad-chestct), so the report
    # puts them next to the published numbers; the model runners set it themselves
    'benchmark': None,
    'out': None,
    'limit': None,  # score only the first N labelled volumes (smoke runs)
    'allow_missing': False,
    # ensemble: with several template pairs, average prompt embeddings or probabilities
    'zero_shot': {
        'templates': list(prompts.DEFAULT_TEMPLATES),
        'class_prompts': {},
        'ensemble': 'embedding',
    },
    'scoring': {'unit': 'volume', 'scan_aggregate': 'mean', 'uncertain': 'exclude'},
    'retrieval': {
        'enabled': True,
        'reference': False,  # reproduce CT-CLIP's scripts, quirks included
        'exclude': 'self',
        'negative_queries': 'skip',
        'cumulative_k': False,
        'ties': 'pessimistic',
        'report_match': 'volume',
        'unit': 'volume',
        'recall_ks': [5, 10, 50, 100],
        'map_ks': [1, 5, 10, 50],
        'chunk_size': 512,  # queries per similarity block (memory: chunk x N floats)
    },
    'bootstrap': {'n_draws': 1000, 'seed': 0, 'level': 0.95, 'unit': 'scan'},
    # crop_zyx: None = the cache recipe's evaluation (centre) crop
    'embed': {'batch_size': 4, 'chunk_size': 64, 'crop_zyx': None},
    'device': 'auto',  # auto (cuda when available), cpu, cuda, cuda:1
    'plots': True,
}
# Inputs of the file-scoring tasks (`bench score`, `bench retrieval`).
FILE_KEYS = ('scores', 'image_emb', 'text_emb', 'ids')


def require(cfg: dict, key: str, hint: str) -> Any:
    if cfg.get(key) in (None, ''):
        raise ValueError(f'{key} must be set ({hint})')
    return cfg[key]


def bootstrap_config(cfg: dict) -> BootstrapConfig:
    b = cfg.get('bootstrap') or {}
    return BootstrapConfig(
        int(b.get('n_draws', 1000)),
        int(b.get('seed', 0)),
        float(b.get('level', 0.95)),
        b.get('unit', 'scan'),
    )


def scoring_options(cfg: dict) -> ScoringOptions:
    s = cfg.get('scoring') or {}
    return ScoringOptions(
        s.get('unit', 'volume'),
        s.get('scan_aggregate', 'mean'),
        s.get('uncertain', 'exclude'),
        bool(cfg.get('allow_missing', False)),
    )


def retrieval_options(cfg: dict) -> RetrievalOptions:
    r = dict(cfg.get('retrieval') or {})
    fields = (
        'exclude',
        'negative_queries',
        'cumulative_k',
        'ties',
        'report_match',
        'recall_ks',
        'map_ks',
        'chunk_size',
    )
    given = {k: r[k] for k in fields if k in r}
    if r.get('reference'):
        # The reference preset wins over the corrected defaults, not over explicit choices.
        defaults = DEFAULTS['retrieval']
        explicit = {k: v for k, v in given.items() if k not in defaults or v != defaults[k]}
        return RetrievalOptions.reference(**explicit)
    return RetrievalOptions(**given)


def check_keys(cfg: dict) -> None:
    """Unknown settings are errors: a misspelt key would otherwise be silently ignored."""
    settings.check_keys(cfg, [*DEFAULTS, *FILE_KEYS])
    for section, defaults in DEFAULTS.items():
        value = cfg.get(section)
        if not isinstance(defaults, dict) or value is None:
            continue
        if not isinstance(value, dict):
            raise ValueError(f"bench setting '{section}' must be a section, not {value!r}")
        settings.check_keys(value, defaults, section)


def with_defaults(cfg: dict) -> dict:
    """`cfg` over DEFAULTS, after checking that every key is a known setting."""
    check_keys(cfg or {})
    return deep_merge(DEFAULTS, cfg or {})


def metrics_header(cfg: dict, title: str, protocol: str) -> dict:
    return {'title': title, 'protocol': protocol, 'options': copy.deepcopy(cfg), 'notes': []}
