"""Nested settings mappings: the deep merge every layer of settings resolution uses.

Defaults < config file < flags < overrides all combine with `deep_merge`, in every package, so
"a section merges, a value replaces" means the same thing for training, labeling and benchmarks.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping


def deep_merge(base: Mapping, update: Mapping) -> dict:
    """`update` deep-merged into a copy of `base`: dicts merge, everything else replaces.

    Neither argument is modified, and the result shares no mutable value with them.
    """
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
